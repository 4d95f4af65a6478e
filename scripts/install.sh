#!/usr/bin/env bash
# make install / make uninstall: the C library, its headers, a pkg-config
# file and a CMake package under $DESTDIR$PREFIX.
#
#   scripts/install.sh install     # PREFIX (default /usr/local), DESTDIR, LIBDIR, INCLUDEDIR
#   scripts/install.sh uninstall   # removes exactly what install installs
#   scripts/install.sh files       # lists those paths
#
# Installed (version from Cargo.toml, e.g. 0.1.0; SONAME libmissionstream.so.0):
#   $LIBDIR/libmissionstream.so.0.1.0, libmissionstream.so.0 -> it, libmissionstream.so -> .so.0
#   $LIBDIR/libmissionstream.a
#   $INCLUDEDIR/missionstream.h, $INCLUDEDIR/missionstream.hpp
#   $LIBDIR/pkgconfig/missionstream.pc
#   $LIBDIR/cmake/missionstream/missionstreamConfig.cmake, missionstreamConfigVersion.cmake
# LIBDIR defaults to $PREFIX/lib, INCLUDEDIR to $PREFIX/include; both must
# be under PREFIX (the CMake package finds them relative to itself).
#
# The libraries are installed without debug information. Everything is
# built and prepared first, write access is checked before anything is
# written, and each file is copied beside its destination under a temporary
# name, then renamed into place: a failed install leaves nothing behind.
#
# With cargo on PATH the library is built (cargo build --release) and the
# committed header must equal the generated one. Without it (e.g. under
# sudo, where cargo is often not on PATH) the library built by an earlier
# `make` is installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
action=${1:-}
die() { echo "make $action: $*" >&2; exit 1; }
case "$action" in install|uninstall|files) ;; *) echo "usage: $0 install|uninstall|files" >&2; exit 2 ;; esac

prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
prefix=${prefix%/}; [ -n "$prefix" ] || prefix=/
case "$prefix" in /*) ;; *) die "PREFIX must be an absolute path, not '$prefix'" ;; esac
case "$destdir" in ''|/*) ;; *) destdir=$PWD/$destdir ;; esac
destdir=${destdir%/}
libdir=${LIBDIR:-$prefix/lib}
includedir=${INCLUDEDIR:-$prefix/include}
under_prefix() {  # prints the path relative to PREFIX, or fails
  local p=${1%/}
  [ "$prefix" = / ] && { [ "${p#/}" != "$p" ] && echo "${p#/}"; return; }
  case "$p" in "$prefix"/*) echo "${p#"$prefix"/}" ;; *) return 1 ;; esac
}
libdir_rel=$(under_prefix "$libdir") || die "LIBDIR=$libdir is not under PREFIX=$prefix"
includedir_rel=$(under_prefix "$includedir") || die "INCLUDEDIR=$includedir is not under PREFIX=$prefix"

version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
major=${version%%.*}
cmakedir=$libdir/cmake/missionstream

files=(
  "$libdir/libmissionstream.so.$version"
  "$libdir/libmissionstream.so.$major"
  "$libdir/libmissionstream.so"
  "$libdir/libmissionstream.a"
  "$includedir/missionstream.h"
  "$includedir/missionstream.hpp"
  "$libdir/pkgconfig/missionstream.pc"
  "$cmakedir/missionstreamConfig.cmake"
  "$cmakedir/missionstreamConfigVersion.cmake"
)

if [ "$action" = files ]; then
  printf '%s\n' "${files[@]/#/$destdir}"
  exit 0
fi

# The nearest existing directory of a path that may not exist yet.
existing_parent() {
  local d=$1
  while [ ! -e "$d" ]; do d=$(dirname "$d"); done
  echo "$d"
}
# Fails, naming the directory, unless every file's directory can be written.
check_writable() {
  local f d
  for f in "$@"; do
    d=$(existing_parent "$(dirname "$f")")
    [ -d "$d" ] || die "$d is not a directory: cannot install $(basename "$f") under it; nothing was ${action}ed"
    if [ ! -w "$d" ] || [ ! -x "$d" ]; then
      die "no write access to $d: nothing was ${action}ed. Run it as a user who may write there (e.g. sudo make $action), or choose another PREFIX=... or DESTDIR=..."
    fi
  done
}

if [ "$action" = uninstall ]; then
  targets=("${files[@]/#/$destdir}")
  present=()
  for f in "${targets[@]}"; do
    if [ -e "$f" ] || [ -L "$f" ]; then present+=("$f"); fi
  done
  [ ${#present[@]} -gt 0 ] || { echo "make uninstall: nothing of missionstream is installed under $destdir$prefix"; exit 0; }
  check_writable "${present[@]}"
  for f in "${present[@]}"; do rm -f -- "$f" && echo "removed $f"; done
  rmdir -- "$destdir$cmakedir" 2>/dev/null || true
  exit 0
fi

# --- install: build and stage everything first.
command -v strip >/dev/null 2>&1 || die "strip (binutils) is needed to install the libraries without debug information"
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
header=include/missionstream.h
if command -v cargo >/dev/null 2>&1; then
  generated=$(scripts/generated-header.sh) || die "cargo build --release failed"
  cmp -s "$generated" "$header" || die "$header is stale (it differs from the generated $generated): run make header and commit it"
else
  echo "make install: cargo is not on PATH; installing the library built by the last 'make' in $target/release" >&2
fi
for f in "$target/release/libmissionstream.so" "$target/release/libmissionstream.a"; do
  [ -f "$f" ] || die "$f does not exist: run make (cargo build --release) first"
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/ms-install.XXXXXX")
tmp_files=()
cleanup() {
  local f
  for f in "${tmp_files[@]}"; do rm -f -- "$f"; done
  rm -rf -- "$stage"
}
trap cleanup EXIT

s=$stage/files
mkdir -p "$s"
strip --strip-unneeded -o "$s/libmissionstream.so.$version" "$target/release/libmissionstream.so"
chmod 755 "$s/libmissionstream.so.$version"
strip --strip-debug -o "$s/libmissionstream.a" "$target/release/libmissionstream.a"
chmod 644 "$s/libmissionstream.a"
ln -s "libmissionstream.so.$version" "$s/libmissionstream.so.$major"
ln -s "libmissionstream.so.$major" "$s/libmissionstream.so"
cp "$header" include/missionstream.hpp "$s/"
# Libraries a static link needs besides libmissionstream.a (what
# `rustc --print native-static-libs` names for a Linux staticlib).
static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
# From the CMake package's directory up to PREFIX.
cmake_to_prefix=$(echo "$libdir_rel/cmake/missionstream" | sed 's|[^/][^/]*|..|g')
sizeof_void_p=$(getconf LONG_BIT 2>/dev/null || echo 64); sizeof_void_p=$((sizeof_void_p / 8))
subst() {
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@INCLUDEDIR@|$includedir|g" \
      -e "s|@LIBDIR_REL@|$libdir_rel|g" -e "s|@INCLUDEDIR_REL@|$includedir_rel|g" \
      -e "s|@CMAKE_TO_PREFIX@|$cmake_to_prefix|g" -e "s|@VERSION@|$version|g" -e "s|@MAJOR@|$major|g" \
      -e "s|@STATIC_LIBS@|$static_libs|g" -e "s|@SIZEOF_VOID_P@|$sizeof_void_p|g" "$1"
}
subst packaging/missionstream.pc.in > "$s/missionstream.pc"
subst packaging/missionstreamConfig.cmake.in > "$s/missionstreamConfig.cmake"
subst packaging/missionstreamConfigVersion.cmake.in > "$s/missionstreamConfigVersion.cmake"
chmod 644 "$s"/*.h "$s"/*.hpp "$s"/*.pc "$s"/*.cmake
if grep -q '@[A-Z_]*@' "$s"/*.pc "$s"/*.cmake; then die "packaging/: a placeholder was left unreplaced"; fi

targets=("${files[@]/#/$destdir}")
check_writable "${targets[@]}"

# --- copy each file beside its destination under a temporary name, then
# rename all into place. Directories made here are removed again if the
# copy fails.
made_dirs=()
undo() {
  local i f
  for f in "${tmp_files[@]}"; do rm -f -- "$f"; done
  for ((i = ${#made_dirs[@]} - 1; i >= 0; i--)); do rmdir -- "${made_dirs[i]}" 2>/dev/null || true; done
  echo "make install: failed; nothing was installed under $destdir$prefix" >&2
}
set -o errtrace
trap undo ERR
make_dir() {
  local d=$1 missing=()
  while [ ! -e "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
  for d in "${missing[@]}"; do mkdir -- "$d"; made_dirs+=("$d"); done
}
for f in "${targets[@]}"; do
  make_dir "$(dirname "$f")"
  t="$(dirname "$f")/.ms-install-$$-$(basename "$f")"
  tmp_files+=("$t")
  cp -P -- "$s/$(basename "$f")" "$t"
done
trap - ERR
set +o errtrace
for i in "${!targets[@]}"; do
  mv -f -T -- "${tmp_files[i]}" "${targets[i]}"
  echo "installed ${targets[i]}"
done
tmp_files=()
