#!/usr/bin/env bash
# Starts or stops a replicated missionstream topology on free loopback
# ports: 3 Redis nodes (1 primary + 2 replicas, append-only file on, the
# functions library loaded on the primary and replicated), 3 Sentinels
# (quorum 2) and one Webdis per Redis node, with the deploy/ configuration.
#
#   scripts/cluster.sh start DIR          # writes DIR/env; `. DIR/env` sets MS_URLS
#   scripts/cluster.sh stop DIR
#   scripts/cluster.sh restart-node DIR N # restarts Redis node N (1-3), e.g. a killed primary
#
# DIR holds each process's configuration, log, pid file and each Redis's
# append-only file (DIR/node1..3, DIR/sentinel1..3). One topology per DIR:
# `start` refuses while any process of DIR's topology runs (exit 1, "already
# running"), and `stop` stops exactly the processes DIR's `start` (and
# `restart-node`) launched, frozen ones included. A `start` that fails
# half-way stops what it launched. `start` returns once both replicas are in
# sync (functions included) and every Sentinel knows both replicas and the
# two other Sentinels.
#
# DIR/env, for the shell (`. DIR/env`) and for scripts and tests:
#   export MS_URLS=http://127.0.0.1:W1,http://127.0.0.1:W2,http://127.0.0.1:W3
#                                     (one Webdis per node, the primary's first)
#   export MISSIONSTREAM_URL=...      (the same list: the command line and the examples read it)
#   PRIMARY_REDIS_PORT=...            (the primary at start; after a failover ask a Sentinel:
#                                      SENTINEL get-master-addr-by-name missionstream)
#   SENTINEL_PORTS=S1,S2,S3  SENTINEL_MASTER=missionstream
#   NODE1_REDIS_PORT=...  NODE1_WEBDIS_PORT=...  (NODE2_..., NODE3_...)
#
# Settings (environment of `start`):
#   MS_SENTINEL_DOWN_AFTER_MS        Sentinel down-after-milliseconds (default 1000: fast, for tests;
#                                    deploy/sentinel.conf has the production value)
#   MS_SENTINEL_FAILOVER_TIMEOUT_MS  Sentinel failover-timeout (default 5000)
#   MS_MIN_REPLICAS=1                min-replicas-to-write 1 on every node, with
#   MS_MIN_REPLICAS_MAX_LAG          min-replicas-max-lag (default 1 s)
#   MS_WEBDIS=/path/to/webdis        another Webdis than the one on PATH
#   MS_CHANNEL_ON_REPLICAS=1         load the functions library with CHANNEL_ON_REPLICAS = true
#                                    (replicas carry channel messages, followers subscribe on
#                                    them; default: the library as it is, messages on the primary only)
#
# Never uses the machine's 6379/7379/26379: ports come from the kernel (bind to 0).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; dir=${2:-}
usage() { echo "usage: $0 start|stop DIR, or $0 restart-node DIR N" >&2; exit 2; }
[ -n "$cmd" ] && [ -n "$dir" ] || usage
webdis=${MS_WEBDIS:-webdis}
master=missionstream
nodes="1 2 3"
sentinels="1 2 3"

# N distinct free loopback ports, from the kernel (all bound at once, so no
# two are the same), never 6379/7379/26379.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held, ports = [], []
while len(ports) < int(sys.argv[1]):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    p = s.getsockname()[1]
    if p not in (6379, 7379, 26379):
        ports.append(p)
print(" ".join(map(str, ports)))
for s in held:
    s.close()
PY
}

# shellcheck source=scripts/processes.sh
. "$here/scripts/processes.sh"

# Webdis first (SIGKILL: it keeps no state), then the Sentinels (so that
# stopping the primary starts no failover), then Redis (SIGTERM: it writes
# its append-only file and exits).
stop_all() {
  local i
  for i in $nodes; do stop_one "$dir/node$i/webdis.pid" "$(webdis_name)" KILL; done
  for i in $sentinels; do stop_one "$dir/sentinel$i/sentinel.pid.launch" redis-server TERM; done
  for i in $nodes; do stop_one "$dir/node$i/redis.pid.launch" redis-server TERM; done
}

any_running() {
  local i
  for i in $nodes; do
    running "$dir/node$i/redis.pid.launch" redis-server && return 0
    running "$dir/node$i/webdis.pid" "$(webdis_name)" && return 0
  done
  for i in $sentinels; do running "$dir/sentinel$i/sentinel.pid.launch" redis-server && return 0; done
  return 1
}

# Waits up to $1 seconds for the command "$2..." to succeed; gives up at
# once when it exits 99 (what it waits for cannot happen any more).
wait_for() {
  local secs=$1 rc; shift
  local end=$((SECONDS + secs))
  while true; do
    if "$@" >/dev/null 2>&1; then return 0; else rc=$?; fi
    [ "$rc" != 99 ] && [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

# Starts Redis node $1 from its configuration (written by `start`, rewritten
# by Sentinel on a failover) and waits until it answers.
start_redis() {
  local n=$1 port
  port=$(sed -n 's/^port //p' "$dir/node$n/redis.conf")
  redis-server "$dir/node$n/redis.conf" >/dev/null 2>&1 &
  echo $! > "$dir/node$n/redis.pid.launch"
  wait_for 10 redis-cli -p "$port" ping || { echo "redis-server of node $n did not start (see $dir/node$n/redis.log)" >&2; return 1; }
}

# The functions library to load: lua/missionstream.lua, its
# CHANNEL_ON_REPLICAS line set to true with MS_CHANNEL_ON_REPLICAS=1.
library() {
  if [ "${MS_CHANNEL_ON_REPLICAS:-0}" = 1 ]; then
    sed 's/^local CHANNEL_ON_REPLICAS = .*/local CHANNEL_ON_REPLICAS = true/' "$here/lua/missionstream.lua"
  else
    cat "$here/lua/missionstream.lua"
  fi
}

# Loads the functions library on the Redis of port $1.
load_functions() {
  [ "$(library | redis-cli -p "$1" -x FUNCTION LOAD REPLACE 2>&1)" = missionstream ]
}

# Replication is complete: the primary (port $1) has 2 online replicas, each
# replica ($2, $3) has its link up and the functions library.

in_sync() {
  local info p
  info=$(redis-cli -p "$1" info replication) || return 1
  [ "$(grep -c 'state=online' <<<"$info")" = 2 ] || return 1
  for p in "$2" "$3"; do
    redis-cli -p "$p" info replication | grep -q '^master_link_status:up' || return 1
    redis-cli -p "$p" function list libraryname "$master" | grep -q "$master" || return 1
  done
}

# Webdis of node $1 answers PING on port $2; 99 when the process is gone.
webdis_up() {
  if ! running "$dir/node$1/webdis.pid" "$(webdis_name)"; then
    # Not Webdis yet, on a busy machine, while the forked shell has not
    # exec'd it: wait. Gone, it will not answer (99: give up at once).
    alive "$dir/node$1/webdis.pid" && return 1
    return 99
  fi
  curl -sf -o /dev/null "http://127.0.0.1:$2/PING"
}

# Sentinel on port $1 knows the primary, both replicas and the 2 other
# Sentinels, and sees its quorum and majority.
sentinel_ready() {
  local info
  info=$(redis-cli -p "$1" sentinel master "$master" | paste - -) || return 1
  grep -q '^num-slaves	2' <<<"$info" || return 1
  grep -q '^num-other-sentinels	2' <<<"$info" || return 1
  grep -q '^flags	master$' <<<"$info" || return 1
  redis-cli -p "$1" sentinel ckquorum "$master" | grep -q '^OK'
}

case "$cmd" in
start)
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if any_running; then
    urls=$(env_value MS_URLS)
    echo "missionstream cluster already running at ${urls:-unknown URLs} (state in $dir); stop it first: scripts/cluster.sh stop $dir" >&2
    exit 1
  fi
  rm -f "$dir/env"
  basename "$webdis" > "$dir/webdis.name"
  trap 'stop_all' ERR
  trap 'stop_all; exit 130' INT TERM
  read -r r1 r2 r3 w1 w2 w3 s1 s2 s3 < <(free_ports 9)
  rports=("$r1" "$r2" "$r3"); wports=("$w1" "$w2" "$w3"); sports=("$s1" "$s2" "$s3")
  down_after=${MS_SENTINEL_DOWN_AFTER_MS:-1000}
  failover_timeout=${MS_SENTINEL_FAILOVER_TIMEOUT_MS:-5000}
  for i in $nodes; do
    d=$dir/node$i; mkdir -p "$d"
    rm -f "$d/redis.pid.launch" "$d/webdis.pid"
    {
      sed -e "s/^port .*/port ${rports[i-1]}/" -e "s#^dir .*#dir $d#" -e "s/^bind .*/bind 127.0.0.1/" \
          "$here/deploy/redis.conf"
      echo
      cat "$here/deploy/redis-replica.conf"
      echo
      echo "# scripts/cluster.sh, node $i"
      echo "pidfile $d/redis.pid"
      echo "logfile $d/redis.log"
      # A full resynchronisation starts once both replicas asked for it,
      # not after the 5 s a primary otherwise waits for more of them.
      echo "repl-diskless-sync-max-replicas 2"
      [ "$i" = 1 ] || echo "replicaof 127.0.0.1 $r1"
      if [ "${MS_MIN_REPLICAS:-0}" != 0 ]; then
        echo "min-replicas-to-write $MS_MIN_REPLICAS"
        echo "min-replicas-max-lag ${MS_MIN_REPLICAS_MAX_LAG:-1}"
      fi
    } > "$d/redis.conf"
    python3 - "$here/deploy/webdis.json" "$d/webdis.json" "${rports[i-1]}" "${wports[i-1]}" "$d/webdis.log" <<'PY'
import json, sys
src, dst, rport, wport, log = sys.argv[1:]
c = json.load(open(src))
c.update(redis_port=int(rport), http_port=int(wport), http_host="127.0.0.1",
         redis_host="127.0.0.1", daemonize=False, logfile=log)
json.dump(c, open(dst, "w"), indent=2)
PY
  done
  for i in $sentinels; do
    d=$dir/sentinel$i; mkdir -p "$d"
    rm -f "$d/sentinel.pid.launch"
    sed -e "s/^port .*/port ${sports[i-1]}/" -e "s#^dir .*#dir $d#" -e "s/^bind .*/bind 127.0.0.1/" \
        -e "s/^sentinel monitor $master .*/sentinel monitor $master 127.0.0.1 $r1 2/" \
        -e "s/^sentinel down-after-milliseconds $master .*/sentinel down-after-milliseconds $master $down_after/" \
        -e "s/^sentinel failover-timeout $master .*/sentinel failover-timeout $master $failover_timeout/" \
        "$here/deploy/sentinel.conf" > "$d/sentinel.conf"
    echo "logfile $d/sentinel.log" >> "$d/sentinel.conf"
  done

  for i in $nodes; do start_redis "$i"; done
  # With min-replicas-to-write, the primary refuses the load (a write)
  # until a replica is connected: try again until it takes it.
  wait_for 30 load_functions "$r1" || { echo "the primary did not load lua/missionstream.lua (see $dir/node1/redis.log)" >&2; false; }
  wait_for 30 in_sync "$r1" "$r2" "$r3" || { echo "the replicas did not get in sync (see $dir/node*/redis.log)" >&2; false; }
  for i in $sentinels; do
    redis-server "$dir/sentinel$i/sentinel.conf" --sentinel >/dev/null 2>&1 &
    echo $! > "$dir/sentinel$i/sentinel.pid.launch"
  done
  for i in $nodes; do
    "$webdis" "$dir/node$i/webdis.json" >/dev/null 2>&1 &
    echo $! > "$dir/node$i/webdis.pid"
  done
  for i in $nodes; do
    wait_for 10 webdis_up "$i" "${wports[i-1]}" \
      || { echo "webdis of node $i did not start (see $dir/node$i/webdis.log): PING answered" \
                "$(curl -s -m 2 -w ' HTTP %{http_code}' "http://127.0.0.1:${wports[i-1]}/PING" 2>&1 || true)" >&2; false; }
  done
  for p in "${sports[@]}"; do
    wait_for 30 sentinel_ready "$p" || { echo "Sentinel on port $p does not know the whole group (see $dir/sentinel*/sentinel.log)" >&2; false; }
  done
  trap - ERR INT TERM
  urls="http://127.0.0.1:$w1,http://127.0.0.1:$w2,http://127.0.0.1:$w3"
  {
    echo "# missionstream cluster (scripts/cluster.sh); '. $dir/env' sets MS_URLS and MISSIONSTREAM_URL"
    echo "export MS_URLS=$urls"
    echo "export MISSIONSTREAM_URL=$urls"
    echo "PRIMARY_REDIS_PORT=$r1"
    echo "SENTINEL_PORTS=$s1,$s2,$s3"
    echo "SENTINEL_MASTER=$master"
    for i in $nodes; do
      echo "NODE${i}_REDIS_PORT=${rports[i-1]}"
      echo "NODE${i}_WEBDIS_PORT=${wports[i-1]}"
    done
  } > "$dir/env"
  echo "Redis primary on 127.0.0.1:$r1, replicas on $r2 and $r3; Sentinels on $s1, $s2, $s3"
  echo "Webdis (one per node, the primary's first): $urls (state in $dir)"
  ;;
stop)
  [ -d "$dir" ] || exit 0
  dir=$(cd "$dir" && pwd)
  stop_all
  rm -f "$dir/env"
  ;;
restart-node)
  n=${3:-}
  [[ "$n" =~ ^[123]$ ]] || usage
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/env" ] || { echo "no cluster running in $dir" >&2; exit 1; }
  stop_one "$dir/node$n/redis.pid.launch" redis-server TERM
  start_redis "$n"
  ;;
*) usage ;;
esac
