#!/usr/bin/env bash
# Builds and runs the C test harness, the C++ API test and the header checks
# against a real Redis + Webdis started on free loopback ports
# (scripts/server.sh), and checks the shared library's SONAME and exports.
#
#   tests/c/run.sh              # build if needed, header checks, ASan runs, valgrind run
#   MS_SKIP_VALGRIND=1 tests/c/run.sh   # skip the valgrind run (said so in the output)
#
# valgrind missing fails the run at once (scripts/install-deps.sh installs
# it): the valgrind run is never skipped silently.
# Exits non-zero on any failure. Servers are always stopped (trap).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

CFLAGS_STRICT=(-std=c99 -Wall -Wextra -Werror -pedantic)
CXXFLAGS_STRICT=(-std=c++11 -Wall -Wextra -Werror -pedantic)
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
built="$target/release"

work=$(mktemp -d "${TMPDIR:-/tmp}/ms-ctest.XXXXXX")
server_dir="$work/server"
cleanup() {
  "$root/scripts/server.sh" stop "$server_dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }

if [ "${MS_SKIP_VALGRIND:-0}" != "1" ] && ! command -v valgrind >/dev/null 2>&1; then
  echo "tests/c: valgrind is not installed (scripts/install-deps.sh installs it; MS_SKIP_VALGRIND=1 skips that run)" >&2
  exit 1
fi
failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

step "cargo build --release"
cargo build --release --quiet
[ -f "$built/libmissionstream.so" ] || { echo "no $built/libmissionstream.so after cargo build" >&2; exit 1; }
# Programs linked with -lmissionstream need libmissionstream.so.0 (the
# SONAME) at run time: a private directory with that name for the one cargo
# built (make install makes the real links).
lib_dir="$work/lib"
mkdir -p "$lib_dir"
ln -s "$built/libmissionstream.so" "$lib_dir/libmissionstream.so"
ln -s "$built/libmissionstream.so" "$lib_dir/libmissionstream.so.0"

step "shared library: SONAME libmissionstream.so.0, only ms_* exported"
soname=$(readelf -d "$built/libmissionstream.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libmissionstream.so.0 ] && echo "ok SONAME $soname" || fail "SONAME is '$soname', not libmissionstream.so.0"
exported=$(nm -D --defined-only "$built/libmissionstream.so" | awk '{print $NF}')
others=$(echo "$exported" | grep -v '^ms_' || true)
[ -z "$others" ] && echo "ok $(echo "$exported" | wc -l) symbols, all ms_*" || fail "exported besides ms_*: $(echo "$others" | head -n 20 | tr '\n' ' ')"
# Every function of the header is exported, and nothing else.
declared=$(sed -n 's/^[a-z].*[ *]\(ms_[a-z_]*\)(.*/\1/p' include/missionstream.h | sort)
[ "$declared" = "$(echo "$exported" | sort)" ] && echo "ok exports = the header's functions" \
  || fail "exports differ from the header's functions: $(diff <(echo "$declared") <(echo "$exported" | sort) | tr '\n' ' ')"

step "header alone as C99 and C++11"
gcc "${CFLAGS_STRICT[@]}" -fsyntax-only -x c include/missionstream.h && echo "ok C99"
g++ "${CXXFLAGS_STRICT[@]}" -fsyntax-only -x c++ include/missionstream.h && echo "ok C++11"

step "C++ translation unit (tests/c/header_cpp.cpp)"
g++ "${CXXFLAGS_STRICT[@]}" -Iinclude tests/c/header_cpp.cpp -o "$work/header_cpp" \
    -L"$lib_dir" -lmissionstream
LD_LIBRARY_PATH="$lib_dir" "$work/header_cpp" || fail "header_cpp"

step "C++ API header (include/missionstream.hpp) alone as C++17 and C++20"
for std in c++17 c++20; do
  g++ "-std=$std" -Wall -Wextra -Werror -pedantic -fsyntax-only -Iinclude -x c++ include/missionstream.hpp && echo "ok $std"
done
# As C++14 it refuses with a clear message.
if g++ -std=c++14 -fsyntax-only -Iinclude -x c++ include/missionstream.hpp 2>"$work/cxx14.err"; then
  fail "missionstream.hpp compiled as C++14"
else
  grep -q "needs C++17" "$work/cxx14.err" && echo "ok C++14 refused" || fail "C++14 error: $(cat "$work/cxx14.err")"
fi

step "C++ API test (tests/c/cpp_api.cpp) with ASan + UBSan, as C++17 and C++20"
for std in c++17 c++20; do
  g++ "-std=$std" -Wall -Wextra -Werror -pedantic -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
      -Iinclude tests/c/cpp_api.cpp -o "$work/cpp_api_$std" -L"$lib_dir" -lmissionstream -lpthread
done

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

step "C++ API (ASan/UBSan)"
for std in c++17 c++20; do
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
     UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
     LD_LIBRARY_PATH="$lib_dir" timeout 120 "$work/cpp_api_$std"; then
    :
  else
    fail "C++ API test ($std) under ASan/UBSan (exit $?)"
  fi
done

step "harness (ASan/UBSan)"
if ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
   UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
   LD_LIBRARY_PATH="$lib_dir" timeout 240 "$work/harness_asan"; then
  :
else
  fail "harness under ASan/UBSan (exit $?)"
fi

if [ "${MS_SKIP_VALGRIND:-0}" = "1" ]; then
  step "harness under valgrind: SKIPPED (MS_SKIP_VALGRIND=1)"
else
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
