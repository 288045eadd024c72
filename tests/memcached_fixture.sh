#!/usr/bin/env bash
# The memcached server of the memcached backend tests: a ctest fixture.
#
#   memcached_fixture.sh start <state dir> <memcached executable>
#   memcached_fixture.sh stop <state dir>
#
# start runs memcached as a daemon on loopback, on a port the kernel picks
# (memcached's "-p -1" with MEMCACHED_PORT_FILENAME, the way memcached's own
# test suite does it, so no other process can take the port in between), and
# writes the port to <state dir>/port, which the tests read (their
# SMISK_IPC_MEMCACHED_PORT_FILE). stop ends that daemon by the PID in
# <state dir>/memcached.pid, and only if that PID is still this fixture's
# memcached. A daemon left by an earlier run that was interrupted is stopped
# the same way before a new one starts.
set -euo pipefail

command=${1:-}
dir=${2:-}
if [[ -z "$command" || -z "$dir" ]]; then
  echo "usage: $0 start <state dir> <memcached> | stop <state dir>" >&2
  exit 2
fi
pidfile=$dir/memcached.pid
portfile=$dir/port

# Stops the daemon named in the PID file, if it is still ours.
stop_daemon() {
  [[ -f "$pidfile" ]] || return 0
  local pid
  pid=$(<"$pidfile")
  rm -f "$pidfile" "$portfile"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  # Only a memcached started with this very PID file (a reused PID is left alone).
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-P $pidfile"; then
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || {
      echo "memcached_fixture: stopped memcached (pid $pid)"
      return 0
    }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  echo "memcached_fixture: killed memcached (pid $pid), it did not stop on SIGTERM"
}

case "$command" in
start)
  memcached=${3:-memcached}
  mkdir -p "$dir"
  stop_daemon
  rm -f "$dir/ports"
  user_args=()
  if ((EUID == 0)); then
    user_args=(-u "$(id -un)")  # memcached refuses to run as root without -u
  fi
  MEMCACHED_PORT_FILENAME="$dir/ports" "$memcached" -l 127.0.0.1 -p -1 -U 0 -t 2 -m 64 \
    "${user_args[@]}" -d -P "$pidfile"
  port=
  for _ in $(seq 1 100); do
    if [[ -s "$dir/ports" ]]; then
      port=$(sed -n 's/^TCP INET: \([0-9][0-9]*\)$/\1/p' "$dir/ports" | head -n 1)
      [[ -n "$port" && -s "$pidfile" ]] && break
    fi
    sleep 0.05
  done
  if [[ -z "$port" ]]; then
    echo "memcached_fixture: memcached did not report its port in $dir/ports" >&2
    stop_daemon
    exit 1
  fi
  echo "$port" >"$portfile"
  echo "memcached_fixture: memcached (pid $(<"$pidfile")) listens on 127.0.0.1:$port"
  ;;
stop)
  stop_daemon
  ;;
*)
  echo "memcached_fixture: unknown command $command" >&2
  exit 2
  ;;
esac
