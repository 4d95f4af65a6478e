#!/usr/bin/env bash
# Starts or stops a local Redis + Webdis pair on free loopback ports, with the
# deploy/ configuration and the functions library loaded.
#
#   scripts/server.sh start DIR   # writes DIR/env; `. DIR/env` sets MISSIONSTREAM_URL
#   scripts/server.sh stop DIR
#
# DIR holds the configuration, logs, pid files and Redis's append-only file.
# One pair per DIR: `start` refuses while the pair of DIR is running (exit 1,
# "already running at URL"), and `stop` stops exactly the processes DIR's
# `start` launched. A `start` that fails half-way stops what it launched.
#
# DIR/env, for the shell (`. DIR/env`) and for scripts:
#   export MISSIONSTREAM_URL=http://127.0.0.1:PORT   (read by the command line and the examples)
#   REDIS_PORT=...  WEBDIS_PORT=...
#
# Never uses the machine's 6379/7379: ports come from the kernel (bind to 0).
# MS_WEBDIS=/path/to/webdis runs another Webdis than the one on PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
webdis=${MS_WEBDIS:-webdis}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# shellcheck source=scripts/processes.sh
. "$here/scripts/processes.sh"

stop_all() {
  stop_one "$dir/webdis.pid" "$(webdis_name)" KILL
  stop_one "$dir/redis.pid.launch" redis-server TERM
}

case "$cmd" in
start)
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if running "$dir/redis.pid.launch" redis-server || running "$dir/webdis.pid" "$(webdis_name)"; then
    url=$(env_value MISSIONSTREAM_URL)
    echo "missionstream server already running at ${url:-an unknown URL} (state in $dir); stop it first: scripts/server.sh stop $dir (make server-stop)" >&2
    exit 1
  fi
  rm -f "$dir/env" "$dir/redis.pid.launch" "$dir/webdis.pid"
  basename "$webdis" > "$dir/webdis.name"
  trap 'stop_all' ERR
  trap 'stop_all; exit 130' INT TERM
  rport=$(free_port); wport=$(free_port)
  while [ "$wport" = "$rport" ]; do wport=$(free_port); done
  sed -e "s/^port .*/port $rport/" -e "s#^dir .*#dir $dir#" -e "s/^bind .*/bind 127.0.0.1/" \
      "$here/deploy/redis.conf" > "$dir/redis.conf"
  echo "pidfile $dir/redis.pid" >> "$dir/redis.conf"
  echo "logfile $dir/redis.log" >> "$dir/redis.conf"
  python3 - "$here/deploy/webdis.json" "$dir/webdis.json" "$rport" "$wport" "$dir/webdis.log" <<'PY'
import json, sys
src, dst, rport, wport, log = sys.argv[1:]
c = json.load(open(src))
c.update(redis_port=int(rport), http_port=int(wport), http_host="127.0.0.1",
         redis_host="127.0.0.1", daemonize=False, logfile=log)
json.dump(c, open(dst, "w"), indent=2)
PY
  redis-server "$dir/redis.conf" >/dev/null 2>&1 &
  echo $! > "$dir/redis.pid.launch"
  for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis-cli -p "$rport" ping >/dev/null 2>&1 || { echo "redis-server did not start (see $dir/redis.log)" >&2; false; }
  redis-cli -p "$rport" -x FUNCTION LOAD REPLACE < "$here/lua/missionstream.lua" >/dev/null
  "$webdis" "$dir/webdis.json" >/dev/null 2>&1 &
  echo $! > "$dir/webdis.pid"
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$wport/PING" 2>/dev/null && break
    sleep 0.05
  done
  curl -sf -o /dev/null "http://127.0.0.1:$wport/PING" || { echo "webdis did not start (see $dir/webdis.log)" >&2; false; }
  trap - ERR INT TERM
  {
    echo "# missionstream server (scripts/server.sh); '. $dir/env' sets MISSIONSTREAM_URL"
    echo "export MISSIONSTREAM_URL=http://127.0.0.1:$wport"
    echo "REDIS_PORT=$rport"
    echo "WEBDIS_PORT=$wport"
  } > "$dir/env"
  echo "Redis on 127.0.0.1:$rport, Webdis on http://127.0.0.1:$wport (state in $dir)"
  ;;
stop)
  [ -d "$dir" ] || exit 0
  dir=$(cd "$dir" && pwd)
  stop_all
  rm -f "$dir/env"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
