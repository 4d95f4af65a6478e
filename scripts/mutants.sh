#!/usr/bin/env bash
# Mutation testing (`make mutants`): applies each deliberate bug of
# tests/mutants/mutations.toml to a copy of the tree and runs the tests
# named for it; see scripts/mutants.py for the options. Not part of
# `make test` (each mutation rebuilds the crate and runs real servers).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
exec python3 "$here/scripts/mutants.py" "$@"
