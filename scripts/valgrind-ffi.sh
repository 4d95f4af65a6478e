#!/usr/bin/env bash
# Runs the Rust tests that cross the C ABI (tests/ffi.rs) under valgrind's
# memcheck: a callback reading freed user data, a double free or a read
# past a buffer handed across the boundary fails the run. (AddressSanitizer
# needs a nightly Rust toolchain; valgrind works on the release build as it
# is, with its debug info.)
#
#   scripts/valgrind-ffi.sh              # every test of tests/ffi.rs, once
#   scripts/valgrind-ffi.sh --stress     # the callback, disconnect and free
#                                        # paths, MS_FFI_ROUNDS (default 20)
#                                        # rounds, MS_FFI_RUNS (default 3)
#                                        # runs of the binary
#
# The stress mode is memcheck in a loop, not helgrind or drd: those do not
# model Rust's futex-based Mutex nor the atomics of Arc and the channels
# (one round of the stress test gives helgrind over 500 "possible data
# race" contexts, all in std's Arc::drop_slow, Mutex and thread
# bookkeeping), and suppressing them all would hide real races too.
# Races in the library are for its own tests (tests/stress.rs, the soak).
#
# valgrind missing is an error, never a silent skip
# (scripts/install-deps.sh installs it). Extra arguments after the mode go
# to the test binary (a test name filter, e.g.).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind-ffi: valgrind is not installed (scripts/install-deps.sh installs the Debian package valgrind)" >&2
  exit 1
fi

mode=once
if [ "${1:-}" = --stress ]; then
  mode=stress
  shift
fi

# The test binary cargo builds for tests/ffi.rs (its name carries a hash).
bin=$(cargo test --release --test ffi --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ffi" and m.get("executable"):
        print(m["executable"])
')
[ -n "$bin" ] && [ -x "$bin" ] || { echo "valgrind-ffi: no test binary for tests/ffi.rs (cargo test --release --test ffi --no-run)" >&2; exit 1; }

# memcheck. --error-exitcode: any error found fails the run (the tests'
# own verdict comes through the exit code as well): invalid reads, writes
# and frees, uses of uninitialised values, and memory definitely lost (a
# client never freed). Memory "possibly lost" or "still reachable" is not
# an error: the test harness and the library keep process-wide state
# (lazily made statics, threads still ending at exit). --fair-sched: the
# library's threads wait on each other; valgrind runs one thread at a
# time, and fair scheduling keeps each making progress. No suppressions
# are needed.
# One test thread: the tests' timeouts are sized for valgrind's slowness
# of one test at a time.
vg=(valgrind --tool=memcheck --error-exitcode=97 --leak-check=full
    --errors-for-leak-kinds=definite --show-leak-kinds=definite --fair-sched=yes
    --track-origins=no --num-callers=30 --quiet)
run() {
  echo "valgrind-ffi: ${vg[*]} $bin $*"
  MISSIONSTREAM_DEBUG=${MISSIONSTREAM_DEBUG:-1} "${vg[@]}" "$bin" --test-threads=1 "$@"
}

if [ "$mode" = once ]; then
  run "$@"
  echo "valgrind-ffi: tests/ffi.rs passed under memcheck"
  exit 0
fi

runs=${MS_FFI_RUNS:-3}
export MS_FFI_ROUNDS=${MS_FFI_ROUNDS:-20}
filter=("$@")
[ ${#filter[@]} -gt 0 ] || filter=(callbacks_end_with_their_client_or_replacement_on_every_path)
for i in $(seq 1 "$runs"); do
  echo "valgrind-ffi: stress run $i of $runs ($MS_FFI_ROUNDS rounds)"
  run "${filter[@]}"
done
echo "valgrind-ffi: $runs stress runs of $MS_FFI_ROUNDS rounds passed under memcheck"
