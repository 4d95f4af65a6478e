#!/usr/bin/env bash
# missionstream demo: starts a local Redis + Webdis (scripts/server.sh, free
# loopback ports, deploy/ configuration), runs examples/demo.py (a leader
# streaming a changing mission plan, a follower printing what it receives),
# and always shuts the servers down again. The live plan view is served
# beside them (scripts/view.sh): the demo prints its URL.
#
# Assumes the library is built (cargo build --release; `make demo` does it).
# MISSIONSTREAM_LIB may name another build of it; PYTHON (default python3)
# the interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

python=${PYTHON:-python3}
target=${CARGO_TARGET_DIR:-target}
if [ -z "${MISSIONSTREAM_LIB:-}" ] && [ ! -f "$target/release/libmissionstream.so" ] && [ ! -f "$target/debug/libmissionstream.so" ]; then
  echo "demo: libmissionstream is not built: run 'cargo build --release' (or 'make demo')" >&2
  exit 1
fi
for tool in redis-server redis-cli webdis curl python3 "$python"; do
  command -v "$tool" >/dev/null || { echo "demo: $tool is not installed (run 'make demo', which installs it)" >&2; exit 1; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/missionstream-demo.XXXXXX")
cleanup() {
  "$here/scripts/view.sh" stop "$dir" || true
  "$here/scripts/server.sh" stop "$dir" || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$here/scripts/server.sh" start "$dir"
# shellcheck disable=SC1091
. "$dir/env"

# The live plan view (deploy/nginx-view.conf, plain HTTP on loopback) in
# front of the same Webdis: demo.py prints the URL where its survey plan
# can be watched in a browser.
view=()
if "$here/scripts/view.sh" start "$dir" "$WEBDIS_PORT"; then
  # shellcheck disable=SC1091
  . "$dir/view.env"
  view=(--view-url "$VIEW_URL")
else
  echo "demo: the live plan view could not start (nginx); going on without it" >&2
fi

PYTHONPATH="$here/bindings/python${PYTHONPATH:+:$PYTHONPATH}" "$python" "$here/examples/demo.py" --url "$MISSIONSTREAM_URL" "${view[@]}" "$@"
