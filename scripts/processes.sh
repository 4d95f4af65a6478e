# Process helpers shared by scripts/server.sh and scripts/cluster.sh
# (sourced, not run). They read the caller's $dir (its state folder) and
# $webdis (the Webdis command).

# The state and command name (`ps -o stat=,comm=`) of the process that pid
# file $1 names; fails when there is no such file or process.
process_of() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  ps -o stat=,comm= -p "$pid" 2>/dev/null
}

# True when pid file $1 names a live process (not a zombie) whose command is
# $2: the pid left behind by servers that are gone may belong to another
# program by now. (The kernel keeps the first 15 characters of a command name.)
running() {
  local stat comm
  read -r stat comm < <(process_of "$1") || return 1
  [ -n "$comm" ] && [[ "$stat" != Z* ]] && [[ "$2" == "$comm"* ]]
}

# True when pid file $1 names a live process (not a zombie), whatever its
# command: one launched moments ago with `cmd &` may still be the shell that
# forked it, not yet the program it is about to exec.
alive() {
  local stat
  read -r stat _ < <(process_of "$1") || return 1
  [ -n "$stat" ] && [[ "$stat" != Z* ]]
}

# The value of variable $1 in $dir/env (with or without `export`).
env_value() { sed -n "s/^\(export \)\{0,1\}$1=//p" "$dir/env" 2>/dev/null; }

# Stops the process of pid file $1 (command $2) with signal $3, SIGKILL if it
# has not gone after 5 s. SIGCONT first: a test may have frozen it (SIGSTOP).
# Callers use SIGKILL for Webdis (it keeps no state and 0.1.9 is slow to act
# on SIGTERM), SIGTERM for Redis so that it writes its append-only file.
stop_one() {
  local file=$1 name=$2 sig=$3 pid
  if running "$file" "$name"; then
    pid=$(cat "$file")
    kill -CONT "$pid" 2>/dev/null || true
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      running "$file" "$name" || break
      sleep 0.05
    done
    if running "$file" "$name"; then
      echo "$name (pid $pid) did not stop on SIG$sig: killing it" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

# The command name of the Webdis that `start` ran (MS_WEBDIS may differ now).
webdis_name() { cat "$dir/webdis.name" 2>/dev/null || basename "$webdis"; }
