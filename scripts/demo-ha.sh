#!/usr/bin/env bash
# missionstream high-availability demo: starts the replicated topology of
# scripts/cluster.sh (3 Redis nodes, 1 primary + 2 replicas, 3 Sentinels, one
# Webdis per node; free loopback ports), runs examples/demo.py on it with
# every node's Webdis as the URL list, kills the primary's Redis (SIGKILL, a
# crash) while the leader streams, and shows Sentinel promoting a replica
# while the follower goes on and ends on the leader's last revision.
# Always shuts the topology down again.
#
#   scripts/demo-ha.sh [demo.py options]      (make demo-ha)
#
# MS_DEMO_KILL_AFTER   seconds of streaming before the kill (default 3), counted
#                      from the follower's first moving revision
# MS_DEMO_SECONDS      how long the leader streams (default 10)
# MS_DEMO_HEARTBEAT    the leader's heartbeat interval in seconds (default 0.5).
#                      Sentinel closes the subscriptions of every node it
#                      reconfigures, and Webdis keeps the follower's stream
#                      open but silent: the follower takes it for lost after
#                      two heartbeat intervals without a message, then a
#                      probe's wait (one interval), and subscribes again. With
#                      the library's default of 5 s that is ~15 s, longer
#                      than the demo streams after the kill.
# MISSIONSTREAM_LIB may name another build of the library; PYTHON (default
# python3) the interpreter. The MS_SENTINEL_* and MS_MIN_REPLICAS settings
# of scripts/cluster.sh apply.
#
# Assumes the library is built (cargo build --release; `make demo-ha` does it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

python=${PYTHON:-python3}
kill_after=${MS_DEMO_KILL_AFTER:-3}
seconds=${MS_DEMO_SECONDS:-10}
heartbeat=${MS_DEMO_HEARTBEAT:-0.5}
target=${CARGO_TARGET_DIR:-target}
if [ -z "${MISSIONSTREAM_LIB:-}" ] && [ ! -f "$target/release/libmissionstream.so" ] && [ ! -f "$target/debug/libmissionstream.so" ]; then
  echo "demo-ha: libmissionstream is not built: run 'cargo build --release' (or 'make demo-ha')" >&2
  exit 1
fi
for tool in redis-server redis-cli webdis curl python3 "$python"; do
  command -v "$tool" >/dev/null || { echo "demo-ha: $tool is not installed (run 'make demo-ha', which installs it)" >&2; exit 1; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/missionstream-demo-ha.XXXXXX")
demo_pid=
cleanup() {
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
  fi
  "$here/scripts/cluster.sh" stop "$dir" || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$here/scripts/cluster.sh" start "$dir"
# shellcheck disable=SC1091
. "$dir/env"
sentinel=${SENTINEL_PORTS%%,*}

# The node (1-3) Sentinel names as primary, or "" when it does not answer.
primary_node() {
  local port i
  port=$(redis-cli -p "$sentinel" SENTINEL get-master-addr-by-name "$SENTINEL_MASTER" 2>/dev/null | sed -n 2p)
  for i in 1 2 3; do
    p=NODE${i}_REDIS_PORT
    [ "${!p}" = "$port" ] && { echo "$i"; return; }
  done
}

now_ms() { date +%s%3N; }

PYTHONUNBUFFERED=1 PYTHONPATH="$here/bindings/python${PYTHONPATH:+:$PYTHONPATH}" \
  "$python" "$here/examples/demo.py" --url "$MS_URLS" --seconds "$seconds" --heartbeat "$heartbeat" "$@" \
  > >(tee "$dir/demo.out") 2>&1 &
demo_pid=$!

# The kill comes after kill_after seconds of streaming: counted from the
# follower's first moving revision, not from the demo's start (on a busy
# machine starting Python and the clients can take longer than that, and a
# kill before the follower has joined shows no failover of a stream).
for _ in $(seq 1200); do
  grep -q 'delay=' "$dir/demo.out" 2>/dev/null && break
  kill -0 "$demo_pid" 2>/dev/null || break
  sleep 0.05
done
sleep "$kill_after"
if kill -0 "$demo_pid" 2>/dev/null; then
  old=$(primary_node)
  pid=$(cat "$dir/node$old/redis.pid.launch")
  echo "demo-ha:  *** killing the primary: Redis of node $old (pid $pid, SIGKILL) ***"
  kill -9 "$pid"
  killed=$(now_ms)
  new=$old
  for _ in $(seq 600); do
    new=$(primary_node)
    [ -n "$new" ] && [ "$new" != "$old" ] && break
    sleep 0.05
  done
  if [ -n "$new" ] && [ "$new" != "$old" ]; then
    echo "demo-ha:  *** Sentinel promoted node $new, $(( $(now_ms) - killed )) ms after the kill ***"
  else
    echo "demo-ha:  Sentinel promoted no replica within 30 s" >&2
  fi
fi

status=0
wait "$demo_pid" || status=$?
demo_pid=
if [ "$status" = 0 ]; then
  echo "demo-ha:  the follower went on through the failover, showed the leader's last revision and saw the stream end; the survey's follower rebuilt its last plan byte for byte"
else
  echo "demo-ha:  FAILED: the demo exited with status $status; its message above says what was expected and what happened." >&2
fi
exit "$status"
