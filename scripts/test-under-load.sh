#!/usr/bin/env bash
# `make test-under-load`: `make test` RUNS times in a row (default 5) while
# `stress-ng --cpu N` (default: one worker per core) keeps every core busy;
# stops at the first failure. A test that passes only on an idle machine is
# a bug: this is how the suite is checked against that. Prints each run's
# time and the load average it ran at.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
cpus=${STRESS_CPUS:-$(nproc)}
if ! command -v stress-ng >/dev/null 2>&1; then
  echo "installing: stress-ng"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq stress-ng >/dev/null
fi
stress-ng --cpu "$cpus" --timeout 0 --quiet &
stress=$!
trap 'kill "$stress" 2>/dev/null || true' EXIT
logs=${TEST_UNDER_LOAD_LOGS:-$here/target/test-under-load}
mkdir -p "$logs"
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if make -C "$here" test PYTHON="${PYTHON:-python3}" > "$logs/run$i.log" 2>&1; then
    result=passed
  else
    result=FAILED
  fi
  took=$(( $(date +%s) - start ))
  echo "run $i of $runs: $result in $((took / 60)) min $((took % 60)) s (load average $(cut -d' ' -f1-3 /proc/loadavg)); log: $logs/run$i.log"
  if [ "$result" = FAILED ]; then
    grep -E "^test .* FAILED|panicked at|FAILED:|Error [0-9]+$" "$logs/run$i.log" | head -20 || true
    exit 1
  fi
done
echo "make test passed $runs runs in a row under stress-ng --cpu $cpus"
