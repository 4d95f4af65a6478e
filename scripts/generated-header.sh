#!/usr/bin/env bash
# Builds the library (cargo build --release) and prints the path of the
# header build.rs generated into its OUT_DIR. `make header` copies it to
# include/missionstream.h; `make check-header` and `make install` compare.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(cargo build --release --message-format=json-render-diagnostics \
      | grep '"reason":"build-script-executed"' \
      | sed -n 's|.*"out_dir":"\([^"]*/build/missionstream-[0-9a-f]*/out\)".*|\1|p' | tail -n 1)
[ -n "$out" ] || { echo "generated-header: cargo reported no OUT_DIR of missionstream's build script" >&2; exit 1; }
[ -f "$out/missionstream.h" ] || { echo "generated-header: build.rs did not generate $out/missionstream.h (see the cargo warning above)" >&2; exit 1; }
echo "$out/missionstream.h"
