#!/usr/bin/env bash
# Builds and runs the C test harness and the header checks against a real
# Redis + Webdis started on free loopback ports (scripts/server.sh).
#
#   tests/c/run.sh              # build if needed, header checks, ASan run, valgrind run
#   MS_SKIP_VALGRIND=1 tests/c/run.sh   # skip the valgrind run
#
# Exits non-zero on any failure. Servers are always stopped (trap).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

CFLAGS_STRICT=(-std=c99 -Wall -Wextra -Werror -pedantic)
CXXFLAGS_STRICT=(-std=c++11 -Wall -Wextra -Werror -pedantic)
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
lib_dir="$target/release"

work=$(mktemp -d "${TMPDIR:-/tmp}/ms-ctest.XXXXXX")
server_dir="$work/server"
cleanup() {
  "$root/scripts/server.sh" stop "$server_dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }
failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

step "cargo build --release"
cargo build --release --quiet
[ -f "$lib_dir/libmissionstream.so" ] || { echo "no $lib_dir/libmissionstream.so after cargo build" >&2; exit 1; }

step "header alone as C99 and C++11"
gcc "${CFLAGS_STRICT[@]}" -fsyntax-only -x c include/missionstream.h && echo "ok C99"
g++ "${CXXFLAGS_STRICT[@]}" -fsyntax-only -x c++ include/missionstream.h && echo "ok C++11"

step "C++ translation unit (tests/c/header_cpp.cpp)"
g++ "${CXXFLAGS_STRICT[@]}" -Iinclude tests/c/header_cpp.cpp -o "$work/header_cpp" \
    -L"$lib_dir" -lmissionstream
LD_LIBRARY_PATH="$lib_dir" "$work/header_cpp" || fail "header_cpp"

step "harness with AddressSanitizer + UndefinedBehaviorSanitizer"
gcc "${CFLAGS_STRICT[@]}" -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
    -Iinclude tests/c/harness.c -o "$work/harness_asan" -L"$lib_dir" -lmissionstream -lpthread

step "servers"
"$root/scripts/server.sh" start "$server_dir"
# shellcheck disable=SC1091
. "$server_dir/env"   # exports MISSIONSTREAM_URL

# The library's diagnostics (retries, lost subscriptions) on stderr: quiet
# when all goes well, and what to look at when a step fails.
export MISSIONSTREAM_DEBUG=1

step "harness (ASan/UBSan)"
if ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
   UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
   LD_LIBRARY_PATH="$lib_dir" timeout 240 "$work/harness_asan"; then
  :
else
  fail "harness under ASan/UBSan (exit $?)"
fi

if [ "${MS_SKIP_VALGRIND:-0}" != "1" ] && command -v valgrind >/dev/null 2>&1; then
  step "harness under valgrind (quick mode: no 4/8 MiB states)"
  gcc "${CFLAGS_STRICT[@]}" -g -O1 -Iinclude tests/c/harness.c -o "$work/harness_plain" \
      -L"$lib_dir" -lmissionstream -lpthread
  if MS_HARNESS_QUICK=1 MS_HARNESS_TIMEOUT_MS=30000 MS_HARNESS_KDF_ITERATIONS=100000 \
     LD_LIBRARY_PATH="$lib_dir" timeout 240 \
     valgrind --quiet --error-exitcode=1 --track-origins=no --fair-sched=yes \
     "$work/harness_plain" > "$work/valgrind.out" 2>&1; then
    tail -n 1 "$work/valgrind.out"
  else
    rc=$?
    grep -v '^ok' "$work/valgrind.out" | tail -n 60
    grep -a '^FAIL' "$work/valgrind.out" || true
    fail "harness under valgrind (exit $rc)"
  fi
fi

echo
if [ "$failures" -ne 0 ]; then
  for log in webdis.log redis.log; do
    [ -f "$server_dir/$log" ] && { echo "--- last lines of $log"; tail -n 40 "$server_dir/$log"; }
  done
  echo "tests/c: $failures step(s) failed"
  exit 1
fi
echo "tests/c: all steps passed"
