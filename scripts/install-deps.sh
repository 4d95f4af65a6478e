#!/usr/bin/env bash
# Installs what building and testing missionstream needs, when it is missing:
# Debian/Ubuntu packages redis-server, webdis, curl, a C/C++ compiler,
# binutils (strip, nm, readelf: make install and its tests), valgrind (the
# C harness and the Rust tests of the C ABI run under it), pkg-config and
# cmake (the installed library's tests build examples/ with them), python3 (and python3-venv for the tests), and nginx + openssl (the TLS
# tests put nginx in front of Webdis, with certificates they make); with
# --python-tests also nodejs, npm (bindings/js) and chromium (the browser
# test of the live plan view).
#
#   scripts/install-deps.sh                  # to build and run the demo
#   scripts/install-deps.sh --python-tests   # also: rustfmt, clippy, and a virtual
#                                            # environment with pytest for the Python suite
#   scripts/install-deps.sh --peers          # also: the servers make bench-peers runs
#                                            # (mosquitto, nats-server)
#
# Both modes with servers to test also install the C client libraries of the
# peers (libmosquitto-dev, libnats-dev): make test compiles the measurement
# code of make bench-peers (examples/bench/peers.c) against them.
#
# The Python suite runs from its own virtual environment, $MS_TEST_VENV
# (default .run/test-venv), created from $PYTHON (default python3) and
# recreated when $PYTHON names another interpreter. Debian and Ubuntu refuse
# `pip install` into their own Python ("externally managed"); a virtual
# environment is where pip may install.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
venv=${MS_TEST_VENV:-$root/.run/test-venv}
case "$venv" in /*) ;; *) venv=$root/$venv ;; esac

apt_install() {
  echo "installing: $*"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v webdis >/dev/null 2>&1 || need+=(webdis)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v strip >/dev/null 2>&1 && command -v readelf >/dev/null 2>&1 || need+=(binutils)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Debian installs nginx in /usr/sbin, not on a normal user's PATH.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ "${1:-}" = "--python-tests" ] || [ "${1:-}" = "--peers" ]; then
  [ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
  [ -f /usr/include/nats/nats.h ] || need+=(libnats-dev)
fi
if [ "${1:-}" = "--peers" ]; then
  # Debian installs both in /usr/sbin, not on a normal user's PATH.
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  apt_install "${need[@]}"
fi
# Debian's packages start system services (Redis on 6379, Webdis on 7379,
# nginx on 80, Mosquitto on 1883) where systemd runs; the project never uses
# them, so they are left alone. The tests start their own nginx, and
# make bench-peers its own Mosquitto and NATS, on free loopback ports.

[ "${1:-}" = "--python-tests" ] || exit 0

# make test also runs the JavaScript package's tests (Node >= 20 and npm;
# Debian 12's own nodejs is 18, which runs them with its WebCrypto global
# switched on: see test-js in the Makefile) and the live plan view's test
# in a headless Chromium.
test_need=()
command -v node >/dev/null 2>&1 || test_need+=(nodejs)
command -v npm >/dev/null 2>&1 || test_need+=(npm)
command -v chromium >/dev/null 2>&1 || test_need+=(chromium)
if [ ${#test_need[@]} -gt 0 ]; then
  apt_install "${test_need[@]}"
fi

# make test also runs cargo fmt and cargo clippy.
for component in rustfmt clippy; do
  cmd=$([ "$component" = rustfmt ] && echo "cargo fmt --version" || echo "cargo clippy --version")
  if ! $cmd >/dev/null 2>&1; then
    rustup component add "$component" || { echo "install the Rust component $component (rustup component add $component)" >&2; exit 1; }
  fi
done

command -v "$python" >/dev/null 2>&1 || { echo "install-deps: PYTHON=$python is not an executable" >&2; exit 1; }
# The interpreter and version the environment must come from.
base=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version.split()[0])')
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.base" 2>/dev/null)" = "$base" ] \
   && "$venv/bin/python" -c 'import pytest' >/dev/null 2>&1; then
  exit 0
fi

# Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in python3-venv.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(dirname "${base%% *}")" = /usr/bin ] && command -v apt-get >/dev/null 2>&1; then
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    apt_install python3-venv "python$version-venv"
  else
    echo "install-deps: $python cannot create virtual environments (no ensurepip); use another PYTHON=..." >&2
    exit 1
  fi
fi

echo "creating $venv (Python $base) with pytest"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check 'pytest>=7'
echo "$base" > "$venv/.base"
