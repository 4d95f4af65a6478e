#!/usr/bin/env bash
# Runs the Rust tests that cross the C ABI (tests/ffi.rs) under
# AddressSanitizer: a callback reading freed user data, a double free, a
# read past a buffer handed across the boundary or memory leaked by a
# client fails the run at the faulty access, with its stack.
#
# AddressSanitizer needs a nightly Rust toolchain (-Zsanitizer=address).
# When rustup has none, this installs one (`rustup toolchain install
# nightly --profile minimal`). When none can be had (no rustup, no
# network), it says so loudly and exits 0: the same tests still run under
# valgrind's memcheck (scripts/valgrind-ffi.sh, also in `make test`), and
# valgrind missing is an error there.
#
#   scripts/asan-ffi.sh [TEST-FILTER...]
#
# The build goes to target/asan (its own target directory: every crate is
# instrumented, and the release build is left alone).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

toolchain=${MS_ASAN_TOOLCHAIN:-nightly}
unavailable() {
  echo "asan-ffi: ================================================================" >&2
  echo "asan-ffi: AddressSanitizer NOT RUN: $1" >&2
  echo "asan-ffi: the C-ABI tests run under valgrind's memcheck instead (make test-ffi-valgrind)" >&2
  echo "asan-ffi: ================================================================" >&2
  exit 0
}
command -v rustup >/dev/null 2>&1 || unavailable "no rustup to get a nightly Rust toolchain"
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "asan-ffi: installing the Rust toolchain $toolchain (minimal profile) for -Zsanitizer=address"
  timeout 600 rustup toolchain install "$toolchain" --profile minimal >/dev/null 2>&1 ||
    unavailable "rustup could not install the toolchain $toolchain"
fi

target=$(rustc -vV | sed -n 's/^host: //p')
# detect_leaks: a client the tests never free is a leak. Rust's own
# process-wide state (the test harness, lazily made statics) is
# reachable at exit and not reported. abort_on_error: a report fails the
# test binary at once. The tests' timeouts allow ASan's ~2x slowdown.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:halt_on_error=1}
RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" \
  cargo +"$toolchain" test --release --target "$target" --target-dir target/asan \
  --test ffi -- "$@"
echo "asan-ffi: tests/ffi.rs passed under AddressSanitizer ($(rustup run "$toolchain" rustc --version))"
