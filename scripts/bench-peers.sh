#!/usr/bin/env bash
# make bench-peers: missionstream beside the systems a user would pick
# instead, measured by the same C code (examples/bench/peers.c):
# Mosquitto 2 (retained messages, QoS 1, persistence on) and NATS JetStream
# KV (watch; put acknowledged after storage), all from Debian's packages
# (scripts/install-deps.sh --peers installs what is missing), each started
# here on free loopback ports and stopped at the end.
#
#   scripts/bench-peers.sh                 # 5 rounds (about 3 minutes)
#   MS_PEERS_ROUNDS=3 scripts/bench-peers.sh
#   scripts/bench-peers.sh --build-only OUT   # only compile the measurement code to OUT
#
# Every server's files (configuration, logs, persistence) live in a
# temporary folder removed at the end; the machine's own services (Redis on
# 6379, Mosquitto on 1883, NATS on 4222) are never used.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
built="$target/release"

build() { # OUT LIBDIR
  # shellcheck disable=SC2046
  gcc -std=c11 -O2 -g -Wall -Wextra -Werror -Iinclude examples/bench/peers.c -o "$1" \
      -L"$2" -lmissionstream $(pkg-config --cflags --libs libmosquitto libnats) -lpthread -lm
}

work=$(mktemp -d "${TMPDIR:-/tmp}/ms-peers.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  "$root/scripts/server.sh" stop "$work/server" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Programs linked with -lmissionstream need libmissionstream.so.0 (the
# SONAME) at run time: a private directory with that name for the one cargo
# built.
lib_dir="$work/lib"
mkdir -p "$lib_dir"
ln -s "$built/libmissionstream.so" "$lib_dir/libmissionstream.so"
ln -s "$built/libmissionstream.so" "$lib_dir/libmissionstream.so.0"

if [ "${1:-}" = "--build-only" ]; then
  out=${2:?usage: $0 --build-only OUT}
  [ -f "$built/libmissionstream.so" ] || { echo "no $built/libmissionstream.so: run cargo build --release" >&2; exit 1; }
  build "$out" "$lib_dir"
  echo "built $out (examples/bench/peers.c)"
  exit 0
fi

"$root/scripts/install-deps.sh" --peers
cargo build --release --quiet
build "$work/peers" "$lib_dir"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() { # PORT NAME LOG
  for _ in $(seq 200); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$1" \
      2>/dev/null && return 0
    sleep 0.05
  done
  echo "$2 did not start on 127.0.0.1:$1; its log:" >&2
  tail -n 30 "$3" >&2 || true
  exit 1
}

# missionstream: Redis (deploy/redis.conf: AOF, fsync every second) + Webdis.
"$root/scripts/server.sh" start "$work/server" >/dev/null
# shellcheck disable=SC1091
. "$work/server/env"

# Mosquitto 2: persistence on (its in-memory store is written to
# mosquitto.db at autosave_interval, 1800 s by default, and at shutdown);
# retained messages and QoS 1 are the clients' choice. Debian's mosquitto
# is in /usr/sbin, which a normal user's PATH lacks.
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
mport=$(free_port)
mkdir -p "$work/mosquitto"
{
  echo "listener $mport 127.0.0.1"
  echo "allow_anonymous true"
  echo "persistence true"
  echo "persistence_location $work/mosquitto/"
  echo "log_dest file $work/mosquitto.log"
  # Run as root, Mosquitto would switch to the user mosquitto, who cannot
  # write to this folder.
  if [ "$(id -u)" = 0 ]; then echo "user root"; fi
} > "$work/mosquitto.conf"
"$mosquitto" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)
wait_port "$mport" mosquitto "$work/mosquitto.log"

# NATS with JetStream on disk (a put is acknowledged once written to the
# stream's file; fsync is the server's periodic one). States up to 8 MiB,
# as missionstream takes.
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
nport=$(free_port)
cat > "$work/nats.conf" <<EOF
listen: 127.0.0.1:$nport
max_payload: 8MB
jetstream {
  store_dir: "$work/nats"
}
EOF
"$nats" -c "$work/nats.conf" -l "$work/nats.log" >/dev/null 2>&1 &
pids+=($!)
wait_port "$nport" nats-server "$work/nats.log"

echo "machine: nproc $(nproc), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "servers: redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') + webdis at $MISSIONSTREAM_URL;" \
     "$("$mosquitto" -h 2>/dev/null | head -n 1) on $mport; nats-server $("$nats" --version | sed 's/.*: //') on $nport"
# Every wait inside has its own bound; this one is for the whole run.
LD_LIBRARY_PATH="$lib_dir" timeout 1200 "$work/peers" --ms "$MISSIONSTREAM_URL" --mqtt "$mport" \
  --nats "nats://127.0.0.1:$nport" --rounds "${MS_PEERS_ROUNDS:-5}"
