# shellcheck shell=bash disable=SC2034 # the STACK_* variables are for the scripts that source this
# Runs the FastCGI example privately on this machine, the way production runs it: prefork
# workers started by spawn-fcgi on a unix socket, nginx in front of them on 127.0.0.1, and
# optionally a memcached on 127.0.0.1. Everything lives in one temporary directory (configs,
# logs, sockets, the Berkeley DB home, nginx's prefix and temp dirs): never the system nginx,
# never a port that is not free, never an address other than loopback. Everything is stopped by
# PID, and only after checking that the PID is still the program this file started.
#
# Sourced, not run (scripts/demo.sh, tests/fastcgi_e2e.sh):
#
#   source examples/fastcgi/local_stack.sh
#   stack_init                          # STACK_DIR; stack_stop runs on EXIT (and INT, TERM)
#   stack_start_memcached               # optional: STACK_MEMCACHED_PORT
#   stack_start_workers 4 APP [ARGS]    # spawn-fcgi -F 4: STACK_WORKERS (their pids)
#   stack_start_nginx [PORT]            # STACK_PORT (a free one if not given), STACK_URL
#   ...                                 # stack_curl "$STACK_URL/...", stack_request
#                                       # (never a bare `wait`: nginx is a child of this shell)
#   stack_stop                          # stops all by PID and removes STACK_DIR
#
# Tools: $NGINX, $SPAWN_FCGI, $MEMCACHED, $CURL (default: found in PATH, /usr/sbin, /usr/bin).
# STACK_KEEP=1 keeps STACK_DIR (logs) after stack_stop.

# The path of a tool, or nothing.
stack_find_tool() {
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
    return 0
  fi
  for dir in /usr/sbin /usr/local/sbin /sbin /usr/bin /usr/local/bin; do
    if [[ -x "$dir/$name" ]]; then
      echo "$dir/$name"
      return 0
    fi
  done
  return 1
}

stack_log() { echo "local_stack: $*" >&2; }

# Creates STACK_DIR and arranges for stack_stop to run however the calling shell ends: on EXIT
# (after INT or TERM too), and, if the shell is killed outright (SIGKILL, a ctest timeout), from
# a detached guard process that waits for the shell to disappear.
stack_init() {
  : "${NGINX:=$(stack_find_tool nginx || true)}"
  : "${SPAWN_FCGI:=$(stack_find_tool spawn-fcgi || true)}"
  : "${MEMCACHED:=$(stack_find_tool memcached || true)}"
  : "${CURL:=$(stack_find_tool curl || true)}"
  STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/smisk-fastcgi.XXXXXX")
  STACK_WORKERS=()
  STACK_APP=
  STACK_NGINX_PID=
  STACK_MEMCACHED_PID=
  STACK_PORT=
  STACK_URL=
  STACK_MEMCACHED_PORT=
  mkdir -p "$STACK_DIR/nginx"
  trap stack_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  stack_start_guard
}

# The detached guard: a grandchild of this shell (so not in its process tree) that waits until
# the shell is gone, then stops whatever the PID files in STACK_DIR still name.
stack_start_guard() {
  local owner=$$ dir=$STACK_DIR
  (
    (
      trap '' INT TERM HUP
      while kill -0 "$owner" 2>/dev/null && [[ -d "$dir" ]]; do sleep 1; done
      if [[ -d "$dir" && "${STACK_KEEP:-0}" != 1 ]]; then
        STACK_DIR=$dir STACK_QUIET=1 stack_stop_from_files
        rm -rf "$dir"
      fi
    ) </dev/null >/dev/null 2>&1 &
  )
}

# Whether PID is alive (a zombie is not) and runs the executable EXE.
stack_is_ours() {
  local pid=$1 exe=$2 actual
  [[ "$pid" =~ ^[0-9]+$ && -n "$exe" ]] || return 1
  actual=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  actual=${actual% (deleted)}
  [[ "$actual" == "$(readlink -f "$exe")" ]]
}

# The direct children of PID.
stack_children_of() {
  local pid=$1
  if [[ -r "/proc/$pid/task/$pid/children" ]]; then
    tr ' ' '\n' <"/proc/$pid/task/$pid/children" | grep -E '^[0-9]+$' || true
  else
    ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' || true
  fi
}

# stack_stop_pids SIGNAL EXE PID...: sends SIGNAL to each PID that is still EXE, waits up to
# 5 s for them to go, then SIGKILLs what is left (and, for an nginx master, its workers).
stack_stop_pids() {
  local signal=$1 exe=$2 pid i
  shift 2
  local pids=()
  for pid in "$@"; do
    stack_is_ours "$pid" "$exe" && pids+=("$pid")
  done
  ((${#pids[@]})) || return 0
  kill "-$signal" "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    local alive=()
    for pid in "${pids[@]}"; do
      stack_is_ours "$pid" "$exe" && alive+=("$pid")
    done
    ((${#alive[@]})) || return 0
    pids=("${alive[@]}")
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    [[ "${STACK_QUIET:-0}" == 1 ]] || stack_log "pid $pid did not stop on SIG$signal; SIGKILL"
    local child
    for child in $(stack_children_of "$pid"); do
      stack_is_ours "$child" "$exe" && { kill -KILL "$child" 2>/dev/null || true; }
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# Stops what the PID files in STACK_DIR name (nginx first, then the workers, then memcached).
stack_stop_from_files() {
  local exe pids
  if [[ -s "$STACK_DIR/nginx/nginx.pid" && -s "$STACK_DIR/nginx.exe" ]]; then
    stack_stop_pids TERM "$(<"$STACK_DIR/nginx.exe")" "$(<"$STACK_DIR/nginx/nginx.pid")"
  fi
  if [[ -s "$STACK_DIR/workers.pid" && -s "$STACK_DIR/app.exe" ]]; then
    mapfile -t pids < <(grep -oE '[0-9]+' "$STACK_DIR/workers.pid")
    stack_stop_pids TERM "$(<"$STACK_DIR/app.exe")" "${pids[@]}"
  fi
  if [[ -s "$STACK_DIR/memcached.pid" && -s "$STACK_DIR/memcached.exe" ]]; then
    stack_stop_pids TERM "$(<"$STACK_DIR/memcached.exe")" "$(<"$STACK_DIR/memcached.pid")"
  fi
}

# Stops everything this shell started, by PID, and removes STACK_DIR (unless STACK_KEEP=1).
# Safe to call more than once.
stack_stop() {
  [[ -n "${STACK_DIR:-}" && -d "$STACK_DIR" ]] || return 0
  stack_stop_from_files
  # Reap nginx, our own child.
  if [[ -n "$STACK_NGINX_PID" ]]; then wait "$STACK_NGINX_PID" 2>/dev/null || true; fi
  if [[ "${STACK_KEEP:-0}" == 1 ]]; then
    stack_log "kept $STACK_DIR"
  else
    rm -rf "$STACK_DIR"
  fi
  STACK_DIR=
}

# Runs memcached on 127.0.0.1 and a port the kernel picks: STACK_MEMCACHED_PORT.
stack_start_memcached() {
  if [[ -z "$MEMCACHED" ]]; then
    stack_log "no memcached (Debian: apt-get install memcached)"
    return 1
  fi
  readlink -f "$MEMCACHED" >"$STACK_DIR/memcached.exe"
  local user_args=() i port=
  ((EUID == 0)) && user_args=(-u "$(id -un)") # memcached refuses to run as root without -u
  MEMCACHED_PORT_FILENAME="$STACK_DIR/memcached.ports" "$MEMCACHED" -l 127.0.0.1 -p -1 -U 0 \
    -t 2 -m 64 "${user_args[@]}" -d -P "$STACK_DIR/memcached.pid" </dev/null \
    >>"$STACK_DIR/memcached.log" 2>&1 || {
    stack_log "memcached did not start: $(cat "$STACK_DIR/memcached.log")"
    return 1
  }
  for ((i = 0; i < 100; i++)); do
    if [[ -s "$STACK_DIR/memcached.ports" && -s "$STACK_DIR/memcached.pid" ]]; then
      port=$(sed -n 's/^TCP INET: \([0-9][0-9]*\)$/\1/p' "$STACK_DIR/memcached.ports" | head -n 1)
      [[ -n "$port" ]] && break
    fi
    sleep 0.05
  done
  if [[ -z "$port" ]]; then
    stack_log "memcached did not report its port"
    return 1
  fi
  STACK_MEMCACHED_PID=$(<"$STACK_DIR/memcached.pid")
  STACK_MEMCACHED_PORT=$port
}

# stack_start_workers COUNT APP [ARGS...]: spawn-fcgi forks COUNT workers of APP on the unix
# socket STACK_DIR/app.sock; their pids are in STACK_WORKERS (and STACK_DIR/workers.pid).
# spawn-fcgi's messages go to STACK_DIR/workers.log; it sends the workers' own stderr to
# /dev/null (fastcgi_example --log FILE appends its messages to a file).
stack_start_workers() {
  local count=$1
  shift
  if [[ -z "$SPAWN_FCGI" ]]; then
    stack_log "no spawn-fcgi (Debian: apt-get install spawn-fcgi)"
    return 1
  fi
  STACK_APP=$(readlink -f "$1")
  echo "$STACK_APP" >"$STACK_DIR/app.exe"
  if ! "$SPAWN_FCGI" -s "$STACK_DIR/app.sock" -M 0600 -F "$count" -P "$STACK_DIR/workers.pid" \
    -- "$@" </dev/null >>"$STACK_DIR/workers.log" 2>&1; then
    stack_log "spawn-fcgi failed:"
    cat "$STACK_DIR/workers.log" >&2
    return 1
  fi
  mapfile -t STACK_WORKERS < <(grep -oE '[0-9]+' "$STACK_DIR/workers.pid")
  if ((${#STACK_WORKERS[@]} != count)); then
    stack_log "spawn-fcgi started ${#STACK_WORKERS[@]} workers, not $count:"
    cat "$STACK_DIR/workers.log" >&2
    return 1
  fi
}

# A port for nginx: one that nothing listens on now, below the ephemeral range (nginx is
# retried on another if it loses a race for it).
stack_pick_port() {
  local port i hex
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 12000))
    printf -v hex ':%04X$' "$port"
    if ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '{print $2}' | grep -qi -- "$hex"; then
      echo "$port"
      return 0
    fi
  done
  echo "$port"
}

# Writes STACK_DIR/nginx/nginx.conf for nginx on 127.0.0.1:PORT in front of STACK_DIR/app.sock.
stack_write_nginx_conf() {
  local port=$1 dir=$STACK_DIR/nginx user_line=
  # A master running as root starts its workers as "nobody", who could not reach the socket.
  ((EUID == 0)) && user_line="user root;"
  cat >"$dir/nginx.conf" <<EOF
# The FastCGI example of smisk-ipc behind nginx (written by local_stack.sh).
${user_line}
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
  worker_connections 512;
}

http {
  log_format upstream '\$request_uri \$status upstream=\$upstream_status rt=\$request_time';
  access_log $dir/access.log upstream;
  client_body_temp_path $dir/client_body;
  fastcgi_temp_path $dir/fastcgi;
  proxy_temp_path $dir/proxy;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;

  # The same socket twice: when a worker dies with a request (SIGKILL, a crash), nginx passes
  # that request to the socket again, where another worker takes it. max_fails=0: never mark it
  # down.
  upstream smisk_fastcgi_example {
    server unix:$STACK_DIR/app.sock max_fails=0;
    server unix:$STACK_DIR/app.sock max_fails=0;
  }

  server {
    listen 127.0.0.1:$port;
    server_name localhost;

    location / {
      fastcgi_pass smisk_fastcgi_example;
      fastcgi_next_upstream error timeout;
      fastcgi_connect_timeout 2s;
      fastcgi_read_timeout 30s;
      fastcgi_param QUERY_STRING \$query_string;
      fastcgi_param REQUEST_METHOD \$request_method;
      fastcgi_param CONTENT_TYPE \$content_type;
      fastcgi_param CONTENT_LENGTH \$content_length;
      fastcgi_param SCRIPT_NAME \$fastcgi_script_name;
      fastcgi_param REQUEST_URI \$request_uri;
      fastcgi_param DOCUMENT_URI \$document_uri;
      fastcgi_param SERVER_PROTOCOL \$server_protocol;
      fastcgi_param REQUEST_SCHEME \$scheme;
      fastcgi_param GATEWAY_INTERFACE CGI/1.1;
      fastcgi_param SERVER_SOFTWARE nginx/\$nginx_version;
      fastcgi_param REMOTE_ADDR \$remote_addr;
      fastcgi_param REMOTE_PORT \$remote_port;
      fastcgi_param SERVER_ADDR \$server_addr;
      fastcgi_param SERVER_PORT \$server_port;
      fastcgi_param SERVER_NAME \$server_name;
    }
  }
}
EOF
}

# Whether something accepts TCP connections on 127.0.0.1:PORT.
stack_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# stack_start_nginx [PORT]: nginx (master and one worker) with the private config, on
# 127.0.0.1:PORT, or on a free port (retried on another if it was taken meanwhile). Sets
# STACK_PORT and STACK_URL.
stack_start_nginx() {
  local wanted=${1:-} attempt i port
  if [[ -z "$NGINX" ]]; then
    stack_log "no nginx (Debian: apt-get install nginx-light)"
    return 1
  fi
  readlink -f "$NGINX" >"$STACK_DIR/nginx.exe"
  for ((attempt = 0; attempt < 10; attempt++)); do
    port=${wanted:-$(stack_pick_port)}
    stack_write_nginx_conf "$port"
    : >"$STACK_DIR/nginx/error.log"
    "$NGINX" -p "$STACK_DIR/nginx/" -c "$STACK_DIR/nginx/nginx.conf" -e "$STACK_DIR/nginx/error.log" \
      </dev/null >>"$STACK_DIR/nginx/stdout.log" 2>&1 &
    STACK_NGINX_PID=$!
    for ((i = 0; i < 100; i++)); do
      if ! kill -0 "$STACK_NGINX_PID" 2>/dev/null; then
        break
      fi
      if [[ -s "$STACK_DIR/nginx/nginx.pid" ]] && stack_port_open "$port"; then
        STACK_PORT=$port
        STACK_URL="http://127.0.0.1:$port"
        return 0
      fi
      sleep 0.05
    done
    if kill -0 "$STACK_NGINX_PID" 2>/dev/null; then # up but not listening: give up on it
      stack_stop_pids TERM "$(<"$STACK_DIR/nginx.exe")" "$STACK_NGINX_PID"
    fi
    wait "$STACK_NGINX_PID" 2>/dev/null || true
    STACK_NGINX_PID=
    rm -f "$STACK_DIR/nginx/nginx.pid"
    if [[ -n "$wanted" ]] || ! grep -q "Address already in use" "$STACK_DIR/nginx/error.log"; then
      break
    fi
  done
  stack_log "nginx did not start:"
  cat "$STACK_DIR/nginx/error.log" "$STACK_DIR/nginx/stdout.log" >&2
  return 1
}

# curl for the stack: never through a proxy, never hanging.
stack_curl() {
  "$CURL" --noproxy '*' --silent --show-error --max-time "${STACK_CURL_MAX_TIME:-5}" "$@"
}

# stack_request INDEX PATH FILE: GETs STACK_URL/PATH and appends one tab-separated line to FILE:
# INDEX, PATH, the status, the seconds it took, X-Served-By, X-Cache and the body (newlines and
# tabs made spaces). Never longer than STACK_CURL_MAX_TIME (5 s).
stack_request() {
  local index=$1 path=$2 file=$3 out meta body
  out=$(stack_curl -w $'\n@@meta@@%{http_code}\t%{time_total}\t%header{x-served-by}\t%header{x-cache}' \
    "$STACK_URL$path" 2>&1) || true
  if [[ "$out" == *@@meta@@* ]]; then
    meta=${out##*@@meta@@}
    body=${out%@@meta@@*}
  else
    meta=$'000\t-\t-\t-'
    body=$out
  fi
  body=${body%$'\n'}
  body=${body%$'\n'}
  body=${body//$'\n'/ }
  body=${body//$'\t'/ }
  printf '%s\t%s\t%s\t%s\n' "$index" "$path" "$meta" "$body" >>"$file"
}
