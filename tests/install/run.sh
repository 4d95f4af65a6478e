#!/usr/bin/env bash
# The library as installed: `make install` into a temporary DESTDIR, then
# examples/c built with pkg-config and examples/cpp with CMake's
# find_package against that tree alone, both run against a real Redis +
# Webdis; a static link of examples/c; CMake's version check; README's C++
# program built with README's CMakeLists.txt and run; README's pkg-config
# lines run verbatim against an install in a custom prefix, the programs
# they build run without LD_LIBRARY_PATH; `make uninstall`; and an install
# without write access, which must say so and leave nothing behind.
#
#   tests/install/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/ms-install-test.XXXXXX")
chmod 755 "$work"
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
ok() { echo "ok $*"; }

prefix=/usr/local
dest=$work/dest
tree=$dest$prefix
version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' Cargo.toml | head -n 1)

step "make install DESTDIR=$dest PREFIX=$prefix"
make --no-print-directory install DESTDIR="$dest" PREFIX="$prefix" > "$work/install.out"
tail -n 3 "$work/install.out"
expected=$(DESTDIR="$dest" PREFIX="$prefix" scripts/install.sh files | sort)
got=$(cd / && find "$dest" \( -type f -o -type l \) | sort)
[ "$got" = "$expected" ] && ok "exactly the $(echo "$expected" | wc -l) files" \
  || fail "installed files differ: $(diff <(echo "$expected") <(echo "$got") | tr '\n' ' ')"
[ "$(readlink "$tree/lib/libmissionstream.so")" = libmissionstream.so.0 ] \
  && [ "$(readlink "$tree/lib/libmissionstream.so.0")" = "libmissionstream.so.$version" ] \
  && ok "symlinks .so -> .so.0 -> .so.$version" || fail "symlinks: $(ls -l "$tree/lib")"
lib=$tree/lib/libmissionstream.so.$version
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libmissionstream.so.0 ] && ok "SONAME $soname" || fail "SONAME '$soname'"
others=$(nm -D --defined-only "$lib" | awk '{print $NF}' | grep -v '^ms_' || true)
[ -z "$others" ] && ok "only ms_* exported" || fail "exported besides ms_*: $(echo "$others" | head | tr '\n' ' ')"
for f in "$lib" "$tree/lib/libmissionstream.a"; do
  n=$(readelf -S -W "$f" 2>/dev/null | grep -c '\.debug_' || true)
  [ "$n" = 0 ] && ok "no debug information in $(basename "$f") ($(du -h "$f" | cut -f1))" \
    || fail "$f has $n .debug_* sections"
done
cmp -s include/missionstream.h "$tree/include/missionstream.h" && cmp -s include/missionstream.hpp "$tree/include/missionstream.hpp" \
  && ok "headers" || fail "installed headers differ from include/"

# pkg-config and CMake see this tree only: no system directory, no path
# into the build directory.
export PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR="$tree/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$dest"
cp -r examples/c "$work/c"
cp -r examples/cpp "$work/cpp"

step "examples/c with pkg-config"
flags=$(pkg-config --cflags --libs missionstream)
echo "pkg-config --cflags --libs missionstream: $flags"
[ "$(pkg-config --modversion missionstream)" = "$version" ] && ok "modversion $version" || fail "pkg-config --modversion"
case "$flags" in *"$target"*|*"$root"*) fail "pkg-config flags point into the checkout: $flags" ;; esac
make --no-print-directory -C "$work/c" mission mission-static
ldd_out=$(LD_LIBRARY_PATH="$tree/lib" ldd "$work/c/mission")
echo "$ldd_out" | grep -q "libmissionstream.so.0 => $tree/lib/libmissionstream.so.0" \
  && ok "mission loads $tree/lib/libmissionstream.so.0" || fail "ldd mission: $ldd_out"
if grep -q libmissionstream <<<"$(ldd "$work/c/mission-static")"; then
  fail "mission-static depends on libmissionstream.so"
else
  ok "mission-static carries the library (libmissionstream.a)"
fi

step "examples/cpp with CMake find_package(missionstream 0.1 REQUIRED)"
cmake -S "$work/cpp" -B "$work/cpp/build" -DCMAKE_PREFIX_PATH="$tree" \
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF \
      -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror -pedantic" > "$work/cmake.out" || { cat "$work/cmake.out"; fail "cmake configure"; }
cmake --build "$work/cpp/build" > "$work/cmake-build.out" 2>&1 || { cat "$work/cmake-build.out"; fail "cmake build"; }
found=$(sed -n 's/^missionstream_DIR:PATH=//p' "$work/cpp/build/CMakeCache.txt")
[ "$found" = "$tree/lib/cmake/missionstream" ] && ok "missionstream_DIR $found" || fail "missionstream_DIR is '$found'"
if grep -rqs -e "$target" -e "$root/include" "$work/cpp/build/CMakeFiles/mission_cpp.dir"; then
  fail "the CMake build refers to the checkout"
fi

step "README's C++ quick start against the installed headers"
awk '/^```cpp$/{on=1; next} /^```$/{on=0} on' README.md > "$work/readme.cpp"
[ -s "$work/readme.cpp" ] || fail "no cpp block in README.md"
for std in c++17 c++20; do
  # shellcheck disable=SC2046
  g++ "-std=$std" -Wall -Wextra -Werror -pedantic $(pkg-config --cflags missionstream) "$work/readme.cpp" \
      -o "$work/readme_cpp" $(pkg-config --libs missionstream) && ok "README C++ builds as $std" || fail "README C++ as $std"
done

step "CMake refuses an incompatible version"
for want in 1.0 0.2 "0.2...<1"; do
  mkdir -p "$work/v/$want"
  cat > "$work/v/$want/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.19)
project(want LANGUAGES C)
find_package(missionstream $want REQUIRED)
CMAKE
  if cmake -S "$work/v/$want" -B "$work/v/$want/build" -DCMAKE_PREFIX_PATH="$tree" > "$work/v/$want.out" 2>&1; then
    fail "find_package(missionstream $want) accepted $version"
  elif grep -q "compatible with requested version" "$work/v/$want.out"; then
    ok "find_package(missionstream $want): CMake's version error"
  else
    fail "find_package(missionstream $want): $(tail -n 20 "$work/v/$want.out")"
  fi
done
mkdir -p "$work/v/range"
printf 'cmake_minimum_required(VERSION 3.19)\nproject(want LANGUAGES C)\nfind_package(missionstream 0.1...<1 REQUIRED)\n' > "$work/v/range/CMakeLists.txt"
cmake -S "$work/v/range" -B "$work/v/range/build" -DCMAKE_PREFIX_PATH="$tree" > "$work/v/range.out" 2>&1 \
  && ok "find_package(missionstream 0.1...<1) finds $version" || fail "range 0.1...<1: $(tail -n 20 "$work/v/range.out")"

step "servers"
scripts/server.sh start "$server_dir"
# shellcheck disable=SC1091
. "$server_dir/env"

step "run the installed examples"
run() {  # name, command...
  local name=$1; shift
  if out=$(timeout 60 "$@" 2>&1); then
    if echo "$out" | grep -q '#1: {"waypoints"' && echo "$out" | grep -q ' ended$'; then
      ok "$name"; echo "$out" | sed 's/^/    /'
    else
      fail "$name printed: $out"
    fi
  else
    fail "$name (exit $?): $out"
  fi
}
run "examples/c (shared)" env LD_LIBRARY_PATH="$tree/lib" "$work/c/mission"
run "examples/c (static)" "$work/c/mission-static"
run "examples/cpp (CMake)" "$work/cpp/build/mission_cpp"

step "README's C++ program with README's CMakeLists.txt, run"
mkdir -p "$work/readme-cmake"
cp "$work/readme.cpp" "$work/readme-cmake/app.cpp"
awk '/^```cmake$/{on=1; next} /^```$/{if (on) exit} on' README.md > "$work/readme-cmake/CMakeLists.txt"
grep -q '^add_executable(app app.cpp)$' "$work/readme-cmake/CMakeLists.txt" \
  || fail "README's cmake block is not the CMakeLists.txt of app.cpp: $(cat "$work/readme-cmake/CMakeLists.txt")"
if cmake -S "$work/readme-cmake" -B "$work/readme-cmake/build" -DCMAKE_PREFIX_PATH="$tree" \
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF \
      -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror -pedantic" > "$work/readme-cmake.out" 2>&1 \
   && cmake --build "$work/readme-cmake/build" >> "$work/readme-cmake.out" 2>&1; then
  ok "README's CMakeLists.txt builds README's C++ program"
  # It reads MISSIONSTREAM_URL (set by the server's env above), like every example.
  if out=$(timeout 60 "$work/readme-cmake/build/app" 2>&1) && echo "$out" | grep -q '^sortie-1: 1 follower(s)$'; then
    ok "README's C++ program runs against \$MISSIONSTREAM_URL"; echo "$out" | sed 's/^/    /'
  else
    fail "README's C++ program printed: $out"
  fi
  if out=$(env -u MISSIONSTREAM_URL timeout 60 "$work/readme-cmake/build/app" 2>&1); then
    fail "README's C++ program ran without MISSIONSTREAM_URL: $out"
  else
    echo "$out" | grep -q MISSIONSTREAM_URL && ok "without MISSIONSTREAM_URL it says so" || fail "without the URL: $out"
  fi
else
  cat "$work/readme-cmake.out"
  fail "README's CMakeLists.txt"
fi

step "README's pkg-config lines, verbatim, from a custom prefix"
# A real install (no DESTDIR) into a prefix neither pkg-config nor the
# dynamic loader searches; README's block is run as it is written, in a
# shell without this script's pkg-config settings; the program it builds
# runs without LD_LIBRARY_PATH.
custom=$work/custom-prefix
make --no-print-directory install PREFIX="$custom" > "$work/install-custom.out"
mkdir -p "$work/pc"
cp examples/c/mission.c "$work/pc/app.c"
awk '/^\*\*pkg-config\*\*/{seen=1} seen && /^```sh$/{on=1; next} on && /^```$/{exit} on' README.md > "$work/pc/build.sh"
grep -q 'pkg-config --cflags --libs missionstream' "$work/pc/build.sh" || fail "no pkg-config block in README.md"
if (cd "$work/pc" && env -u PKG_CONFIG_PATH -u PKG_CONFIG_LIBDIR -u PKG_CONFIG_SYSROOT_DIR -u LD_LIBRARY_PATH \
      PREFIX="$custom" bash -euo pipefail build.sh) > "$work/pc.out" 2>&1; then
  ok "README's pkg-config lines build app and app-static"
  for app in app app-static; do
    if out=$(cd "$work/pc" && env -u LD_LIBRARY_PATH timeout 60 "./$app" 2>&1) \
       && echo "$out" | grep -q '#1: {"waypoints"' && echo "$out" | grep -q ' ended$'; then
      ok "$app runs from the custom prefix without LD_LIBRARY_PATH"
    else
      fail "$app: $out"
    fi
  done
  # ldd's output whole first: `ldd | grep -q` under pipefail fails when
  # grep stops reading before ldd is done writing (SIGPIPE).
  linked=$(ldd "$work/pc/app")
  grep -q "libmissionstream.so.0 => $custom/lib/libmissionstream.so.0" <<<"$linked" \
    && ok "app finds $custom/lib/libmissionstream.so.0 by its rpath" || fail "ldd app: $linked"
else
  cat "$work/pc.out"
  fail "README's pkg-config lines"
fi
make --no-print-directory uninstall PREFIX="$custom" > /dev/null

step "make uninstall"
make --no-print-directory uninstall DESTDIR="$dest" PREFIX="$prefix" > "$work/uninstall.out"
left=$(find "$dest" \( -type f -o -type l \))
[ -z "$left" ] && ok "nothing left ($(grep -c '^removed' "$work/uninstall.out") files removed)" || fail "left after uninstall: $left"

step "install without write access"
ro=$work/ro
mkdir -p "$ro/usr/local/include" "$ro/usr/local/lib"
if [ "$(id -u)" = 0 ]; then
  # root writes anywhere: run the install as nobody, with include/ theirs and lib/ not.
  chown 65534 "$ro/usr/local/include"
  as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/ PATH=/usr/local/bin:/usr/bin:/bin)
  # nobody may not enter the checkout (a clone in a `mktemp -d` folder is
  # root's alone): it runs a readable copy of what install.sh reads.
  from=$work/tree
  mkdir -p "$from/scripts" "$from/include" "$from/target/release"
  cp -r Cargo.toml packaging "$from/"
  cp scripts/install.sh "$from/scripts/"
  cp include/missionstream.h include/missionstream.hpp "$from/include/"
  cp "$target/release/libmissionstream.so" "$target/release/libmissionstream.a" "$from/target/release/"
  chmod -R a+rX "$from"
  from_target=$from/target
else
  chmod 555 "$ro/usr/local/lib"
  as_user=(env)
  from=.
  from_target=$target
fi
chmod -R a+rX "$work/c" 2>/dev/null || true
if out=$("${as_user[@]}" CARGO_TARGET_DIR="$from_target" DESTDIR="$ro" PREFIX=/usr/local "$from/scripts/install.sh" install 2>&1); then
  fail "install into a read-only lib/ succeeded: $out"
elif echo "$out" | grep -q "no write access to $ro/usr/local/lib"; then
  ok "refused: $(echo "$out" | grep 'no write access')"
else
  fail "install without write access said: $out"
fi
left=$(find "$ro" -mindepth 1 -not -path "$ro/usr" -not -path "$ro/usr/local" -not -path "$ro/usr/local/include" -not -path "$ro/usr/local/lib")
[ -z "$left" ] && ok "nothing half-installed" || fail "left behind: $left"

echo
if [ "$failures" -ne 0 ]; then
  echo "tests/install: $failures check(s) failed"
  exit 1
fi
echo "tests/install: all checks passed"
