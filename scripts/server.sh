#!/usr/bin/env bash
# Starts or stops a local Redis + Webdis pair on free loopback ports, with the
# deploy/ configuration and the functions library loaded.
#
#   scripts/server.sh start DIR   # writes DIR/env (MS_URL=..., REDIS_PORT=..., WEBDIS_PORT=...)
#   scripts/server.sh stop DIR
#
# Never uses the machine's 6379/7379: ports come from the kernel (bind to 0).
# MS_WEBDIS=/path/to/webdis runs another Webdis than the one on PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

case "$cmd" in
start)
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
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
  redis-cli -p "$rport" -x FUNCTION LOAD REPLACE < "$here/lua/missionstream.lua" >/dev/null
  "${MS_WEBDIS:-webdis}" "$dir/webdis.json" >/dev/null 2>&1 &
  echo $! > "$dir/webdis.pid"
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$wport/PING" 2>/dev/null && break
    sleep 0.05
  done
  curl -sf -o /dev/null "http://127.0.0.1:$wport/PING" || { echo "webdis did not start (see $dir/webdis.log)" >&2; exit 1; }
  printf 'MS_URL=http://127.0.0.1:%s\nREDIS_PORT=%s\nWEBDIS_PORT=%s\n' "$wport" "$rport" "$wport" > "$dir/env"
  echo "Redis on 127.0.0.1:$rport, Webdis on http://127.0.0.1:$wport (state in $dir)"
  ;;
stop)
  [ -d "$dir" ] || exit 0
  # Webdis keeps no state and 0.1.9 is slow to act on SIGTERM: SIGKILL it.
  # Redis gets SIGTERM, so that it writes its append-only file and exits.
  for f in webdis.pid redis.pid.launch; do
    if [ -f "$dir/$f" ]; then
      pid=$(cat "$dir/$f")
      if [ "$f" = webdis.pid ]; then kill -9 "$pid" 2>/dev/null || true; else kill "$pid" 2>/dev/null || true; fi
      for _ in $(seq 50); do
        # Gone, or a zombie waiting for a parent that may never reap it.
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ""|Z*) break ;; esac
        sleep 0.05
      done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$f"
    fi
  done
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
