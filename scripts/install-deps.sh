#!/usr/bin/env bash
# Installs what building and testing missionstream needs, when it is missing:
# Debian packages redis-server, webdis, curl, a C/C++ compiler, and nginx +
# openssl (the TLS tests put nginx in front of Webdis, with certificates
# they make); pytest.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v webdis >/dev/null 2>&1 || need+=(webdis)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Debian installs nginx in /usr/sbin, not on a normal user's PATH.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's packages start system services (Redis on 6379, Webdis on 7379,
# nginx on 80) where systemd runs; the project never uses them, so they are
# left alone. The tests start their own nginx on free loopback ports.
if [ "${1:-}" = "--python-tests" ]; then
  # make test also runs cargo fmt and cargo clippy.
  for component in rustfmt clippy; do
    cmd=$([ "$component" = rustfmt ] && echo "cargo fmt --version" || echo "cargo clippy --version")
    if ! $cmd >/dev/null 2>&1; then
      rustup component add "$component" || { echo "install the Rust component $component (rustup component add $component)" >&2; exit 1; }
    fi
  done
  python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest
fi
exit 0
