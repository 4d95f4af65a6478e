#!/usr/bin/env bash
# Runs the callback, disconnect and free paths of the C ABI (tests/ffi.rs)
# under ThreadSanitizer, many times: a callback touching its user data
# while another thread frees it, a client freed while its dispatcher
# thread still reads it, or any other unsynchronised access between the
# caller's threads and the library's fails the run, with both stacks.
#
# ThreadSanitizer needs a nightly Rust toolchain (-Zsanitizer=thread) and
# the standard library rebuilt with it (-Zbuild-std, from the rustup
# component rust-src): an uninstrumented std hides the synchronisation of
# its Mutex, Condvar, channels and thread joins from TSan, which then
# reports races that are none. When rustup has no nightly, or its nightly
# has no rust-src, this installs them (`rustup toolchain install nightly
# --profile minimal`, `rustup component add rust-src`). When they cannot
# be had (no rustup, no network), it says so loudly and exits 1, unless
# MS_TSAN_SKIP_UNAVAILABLE=1 (then it exits 0 after saying so).
#
#   scripts/tsan-ffi.sh [TEST-FILTER...]
#
# TSAN_RUNS (default 20) runs of the test binary, each with the tests the
# filters name (default: the callback / disconnect / free tests below) and
# MS_FFI_ROUNDS (default 1) rounds of the round-based one. Each run's
# verdict is printed, then the total; any race, or any failed run, fails.
#
# The build goes to target/tsan (its own target directory: every crate and
# std are instrumented; the release build is left alone). The first build
# compiles std and every dependency: several minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

toolchain=${MS_TSAN_TOOLCHAIN:-nightly}
target=x86_64-unknown-linux-gnu
unavailable() {
  echo "tsan-ffi: ================================================================" >&2
  echo "tsan-ffi: ThreadSanitizer NOT RUN: $1" >&2
  echo "tsan-ffi: (needs rustup, a nightly toolchain and its rust-src component)" >&2
  echo "tsan-ffi: ================================================================" >&2
  if [ "${MS_TSAN_SKIP_UNAVAILABLE:-0}" = 1 ]; then
    echo "tsan-ffi: MS_TSAN_SKIP_UNAVAILABLE=1: skipped" >&2
    exit 0
  fi
  exit 1
}
[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || unavailable "this runs on x86_64 Linux only ($target)"
command -v rustup >/dev/null 2>&1 || unavailable "no rustup to get a nightly Rust toolchain"
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "tsan-ffi: installing the Rust toolchain $toolchain (minimal profile) for -Zsanitizer=thread"
  timeout 600 rustup toolchain install "$toolchain" --profile minimal >/dev/null 2>&1 ||
    unavailable "rustup could not install the toolchain $toolchain"
fi
sysroot=$(rustup run "$toolchain" rustc --print sysroot)
if [ ! -e "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ]; then
  echo "tsan-ffi: installing the component rust-src of $toolchain for -Zbuild-std"
  timeout 600 rustup component add rust-src --toolchain "$toolchain" >/dev/null 2>&1 ||
    unavailable "rustup could not add the component rust-src to $toolchain"
fi

runs=${TSAN_RUNS:-20}
export MS_FFI_ROUNDS=${MS_FFI_ROUNDS:-1}
filter=("$@")
[ ${#filter[@]} -gt 0 ] || filter=(
  callbacks_end_with_their_client_or_replacement_on_every_path
  callbacks_running_while_ended_from_another_thread
  a_failing_test_ends_its_callbacks_before_their_data
)

# halt_on_error: the first report ends the process with exitcode 66, so a
# race fails its run whatever the tests say. report_signal_unsafe=0: the
# test harness's own signal handling is not the library's. Suppressions,
# each with its reason, are in scripts/tsan-suppressions.txt.
supp="$root/scripts/tsan-suppressions.txt"
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:second_deadlock_stack=1:history_size=4:suppressions=$supp}

flags="-Zsanitizer=thread -Cdebuginfo=1"
echo "tsan-ffi: building tests/ffi.rs with $flags -Zbuild-std ($(rustup run "$toolchain" rustc --version))"
bin=$(RUSTFLAGS="$flags" RUSTDOCFLAGS="$flags" \
  nice -n 10 cargo +"$toolchain" test --release -Zbuild-std --target "$target" \
  --target-dir target/tsan --test ffi --no-run --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ffi" and m.get("executable"):
        print(m["executable"])
')
[ -n "$bin" ] && [ -x "$bin" ] || { echo "tsan-ffi: no test binary for tests/ffi.rs" >&2; exit 1; }

start=$(date +%s)
passed=0
failed=0
for i in $(seq 1 "$runs"); do
  t0=$(date +%s)
  log="target/tsan/run-$i.log"
  # One test at a time: the tests' timeouts allow TSan's slowdown of one.
  if MISSIONSTREAM_DEBUG=${MISSIONSTREAM_DEBUG:-1} "$bin" --test-threads=1 "${filter[@]}" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "tsan-ffi: run $i of $runs: passed ($(($(date +%s) - t0)) s)"
  else
    rc=$?
    failed=$((failed + 1))
    if grep -q "WARNING: ThreadSanitizer" "$log"; then
      why="ThreadSanitizer report"
    else
      why="test failure"
    fi
    echo "tsan-ffi: run $i of $runs: FAILED, exit $rc, $why ($(($(date +%s) - t0)) s); log: $log" >&2
    grep -A60 -m1 "WARNING: ThreadSanitizer\|panicked at" "$log" >&2 || tail -40 "$log" >&2
  fi
done
total=$(($(date +%s) - start))
tests="${filter[*]}"
[ -n "${tests// /}" ] || tests="every test of tests/ffi.rs"
echo "tsan-ffi: $passed of $runs runs passed, $failed failed, in $total s (tests: $tests; MS_FFI_ROUNDS=$MS_FFI_ROUNDS)"
[ "$failed" -eq 0 ]
