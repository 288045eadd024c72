#!/usr/bin/env bash
# End-to-end tests of the FastCGI example (examples/fastcgi): 4 prefork workers started by
# spawn-fcgi, behind a private nginx on 127.0.0.1, driven by curl (examples/fastcgi/local_stack.sh
# runs them, in a temporary directory, and stops them by PID however this script ends).
#
#   fastcgi_e2e.sh load|kill bsddb|memcached <fastcgi_example>
#
# load: 200 requests over 20 paths, 4 clients at a time. Every response is 200 and says
#   "Hello! This was built by process #PID"; each path gets the same body in every response,
#   built once (exactly one X-Cache: miss per path, from the process the body names); at least 2
#   worker pids served requests, all of them spawn-fcgi's workers; /stats counts exactly 10 hits
#   per path, 200 in all, and as many requests per worker as the responses say.
# kill: the same load, and when a third of it has been answered, a worker is SIGKILLed, one in
#   the middle of a request if one is seen (else the latest to answer). Every request still gets
#   a correct 200 (nginx passes the request of the dead worker to another one), none takes 2 s or
#   more (curl's time_total; --max-time caps each at 5 s), the other workers live on, 20 more
#   requests (one per path) are all answered by them with the bodies seen before, and the
#   counters are within [requests, requests + 1] (the killed worker may have counted the
#   request it died with before nginx passed it on).
# Both: stopping the workers (SIGTERM) ends them all, and the last one out removes the temporary
#   Berkeley DB home.
#
# Tools: NGINX, SPAWN_FCGI, CURL (environment; ctest passes them), else looked up. A missing tool
# skips the test (exit 77). memcached: SMISK_IPC_MEMCACHED_PORT_FILE names the port file of the
# ctest fixture's server.
set -uo pipefail

scenario=${1:-}
backend=${2:-}
app=${3:-}
if [[ ! "$scenario" =~ ^(load|kill)$ || ! "$backend" =~ ^(bsddb|memcached)$ || -z "$app" ]]; then
  echo "usage: $0 load|kill bsddb|memcached <fastcgi_example>" >&2
  exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../examples/fastcgi/local_stack.sh
source "$here/../examples/fastcgi/local_stack.sh"

skip() {
  echo "SKIP: $*"
  exit 77
}
[[ -n "${NGINX:-}" ]] || NGINX=$(stack_find_tool nginx) || skip "no nginx (Debian: nginx-light)"
[[ -n "${SPAWN_FCGI:-}" ]] || SPAWN_FCGI=$(stack_find_tool spawn-fcgi) || skip "no spawn-fcgi"
[[ -n "${CURL:-}" ]] || CURL=$(stack_find_tool curl) || skip "no curl"
for tool in "$NGINX" "$SPAWN_FCGI" "$CURL"; do
  [[ -x "$tool" ]] || skip "$tool is not an executable"
done
if [[ ! -x "$app" ]]; then
  echo "FAIL: $app is not an executable (build the fastcgi_example target)"
  exit 1
fi

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

requests=200
paths=20
clients=4
workers=4
max_seconds=2.0
start_time=$(date +%s.%N)

client_pids=()
stack_init
# The load's clients (subshells of this script) go too, however the script ends.
trap 'kill "${client_pids[@]}" 2>/dev/null; stack_stop' EXIT
echo "stack directory: $STACK_DIR"

app_args=(--name "fastcgi-e2e-$scenario-$$-$RANDOM" --log "$STACK_DIR/workers.log")
if [[ "$backend" == bsddb ]]; then
  app_args+=(--home "$STACK_DIR/ipc")
else
  port_file=${SMISK_IPC_MEMCACHED_PORT_FILE:-}
  if [[ -z "$port_file" || ! -s "$port_file" ]]; then
    echo "FAIL: no memcached: SMISK_IPC_MEMCACHED_PORT_FILE (${port_file:-unset}) names no port file"
    exit 1
  fi
  app_args+=(--memcached "127.0.0.1:$(<"$port_file")")
fi

show_logs() {
  local f
  for f in workers.log nginx/error.log; do
    echo "---- $f"
    tail -n 40 "$STACK_DIR/$f" 2>/dev/null
  done
  echo "---- nginx/access.log (requests passed to more than one worker)"
  grep -E 'upstream=[^ ]*,' "$STACK_DIR/nginx/access.log" 2>/dev/null | tail -n 20
}

stack_start_workers "$workers" "$app" "${app_args[@]}" || {
  show_logs
  echo "FAIL: could not start the workers"
  exit 1
}
stack_start_nginx "" || {
  show_logs
  echo "FAIL: could not start nginx"
  exit 1
}
echo "workers: ${STACK_WORKERS[*]}; nginx (pid $STACK_NGINX_PID) on $STACK_URL; backend $backend"

results=$STACK_DIR/results
mkdir -p "$results"

# A client: requests index c, c + clients, ... of the load, path /page/(index % paths).
client() {
  local c=$1 i
  for ((i = c; i < requests; i += clients)); do
    stack_request "$i" "/page/$((i % paths))" "$results/client.$c"
  done
}

for ((c = 0; c < clients; c++)); do
  client "$c" &
  client_pids+=($!)
done

victim=
if [[ "$scenario" == kill ]]; then
  # When a third of the load is answered, SIGKILL a worker, preferably one in the middle of a
  # request: its main thread neither waits in accept() for the next request nor in libfcgi's
  # lingering close after the last response (/proc/PID/wchan; "0" while on a CPU). Else (none
  # seen busy for a while) the worker that served the latest response.
  for ((i = 0; i < 600; i++)); do
    done_count=$(cat "$results"/client.* 2>/dev/null | wc -l)
    ((done_count >= requests / 3)) && break
    sleep 0.01
  done
  candidates=()
  for pid in "${STACK_WORKERS[@]}"; do
    stack_is_ours "$pid" "$STACK_APP" && candidates+=("$pid")
  done
  how="busy with a request"
  for ((i = 0; i < 20000 && ${#candidates[@]} > 0; i++)); do
    for pid in "${candidates[@]}"; do
      wchan=
      read -r wchan <"/proc/$pid/wchan" 2>/dev/null # no newline: read "fails" and sets it
      case "$wchan" in
      "" | __skb_wait_for_more_packets | poll_schedule_timeout*) ;;
      *)
        kill -KILL "$pid" # at once: a request takes well under a millisecond
        victim=$pid
        break 2
        ;;
      esac
    done
  done
  if [[ -z "$victim" ]]; then
    how="the latest to answer"
    wchan=
    latest=$(cat "$results"/client.* | awk -F'\t' '$3 == 200 {pid = $5} END {print pid}')
    if stack_is_ours "$latest" "$STACK_APP"; then
      kill -KILL "$latest"
      victim=$latest
    fi
  fi
  if [[ -z "$victim" ]]; then
    fail "no live worker to kill"
  else
    echo "SIGKILLed worker $victim ($how, wchan ${wchan:-?}) after $done_count of $requests responses"
  fi
fi
for pid in "${client_pids[@]}"; do wait "$pid"; done
load_seconds=$(awk -v a="$start_time" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')

cat "$results"/client.* | sort -n >"$results/load.tsv"
expected_total=$requests

if [[ -n "$victim" ]]; then
  # The survivors answer every path, with the body it had.
  for ((p = 0; p < paths; p++)); do
    stack_request "$((requests + p))" "/page/$p" "$results/after.tsv"
  done
  expected_total=$((requests + paths))
  survivors=0
  for pid in "${STACK_WORKERS[@]}"; do
    [[ "$pid" == "$victim" ]] && continue
    stack_is_ours "$pid" "$STACK_APP" && survivors=$((survivors + 1))
  done
  ((survivors == workers - 1)) || fail "$survivors of the $((workers - 1)) surviving workers are alive"
  if awk -F'\t' -v v="$victim" '$5 == v' "$results/after.tsv" | grep -q .; then
    fail "the killed worker $victim served a request after its death"
  fi
fi
cat "$results/load.tsv" "$results/after.tsv" 2>/dev/null >"$results/all.tsv"

# ---- every response
declare -A body_of=() misses_of=() served_count=() served_paths=()
declare -A is_worker=()
for pid in "${STACK_WORKERS[@]}"; do is_worker[$pid]=1; done
count=0
slow=0
bad=0
max_time=0
while IFS=$'\t' read -r index path code seconds served cache body; do
  count=$((count + 1))
  if [[ "$code" != 200 ]] || [[ ! "$body" =~ ^Hello!\ This\ was\ built\ by\ process\ \#([0-9]+)$ ]]; then
    ((bad < 5)) && fail "request $index $path: status $code, body '$body'"
    bad=$((bad + 1))
    continue
  fi
  builder=${BASH_REMATCH[1]}
  if [[ -z "${body_of[$path]:-}" ]]; then
    body_of[$path]=$body
  elif [[ "${body_of[$path]}" != "$body" ]]; then
    fail "request $index $path: body '$body', another response had '${body_of[$path]}'"
  fi
  [[ -n "${is_worker[$builder]:-}" ]] || fail "$path was built by $builder, not a worker"
  if [[ -z "${is_worker[$served]:-}" ]]; then
    fail "request $index $path: X-Served-By '$served' is not a worker (${STACK_WORKERS[*]})"
  fi
  served_count[$served]=$((${served_count[$served]:-0} + 1))
  served_paths[$path]="${served_paths[$path]:-} $served"
  if [[ "$cache" == miss ]]; then
    misses_of[$path]=$((${misses_of[$path]:-0} + 1))
    [[ "$served" == "$builder" ]] || fail "$path: a miss served by $served but built by $builder"
  fi
  if awk -v t="$seconds" -v m="$max_seconds" 'BEGIN {exit !(t >= m)}'; then
    fail "request $index $path took $seconds s (limit $max_seconds s)"
    slow=$((slow + 1))
  fi
  max_time=$(awk -v t="$seconds" -v m="$max_time" 'BEGIN {print (t > m ? t : m)}')
done <"$results/all.tsv"

((count == expected_total)) || fail "$count responses recorded, $expected_total requests made"
((bad == 0)) || fail "$bad responses were not a correct 200"
((${#body_of[@]} == paths)) || fail "${#body_of[@]} paths answered, not $paths"
((${#served_count[@]} >= 2)) || fail "only ${#served_count[@]} worker(s) served requests"
for path in "${!body_of[@]}"; do
  misses=${misses_of[$path]:-0}
  if [[ "$scenario" == load ]]; then
    ((misses == 1)) || fail "$path: $misses responses built the answer (X-Cache: miss), not 1"
  else
    ((misses <= 1)) || fail "$path: $misses responses built the answer (X-Cache: miss)"
  fi
done

# ---- the shared counters
stats=$(stack_curl "$STACK_URL/stats?tsv") || fail "GET /stats?tsv failed"
declare -A hits_of=() worker_requests=()
while IFS=$'\t' read -r kind a b c; do
  case "$kind" in
  path)
    hits_of[$a]=$b
    [[ "${body_of[$a]:-}" == *"#$c" ]] || fail "/stats says $a was built by $c; bodies: '${body_of[$a]:-}'"
    ;;
  worker) worker_requests[$a]=$b ;;
  esac
done <<<"$stats"
total=0
for path in "${!hits_of[@]}"; do total=$((total + hits_of[$path])); done
worker_total=0
for pid in "${!worker_requests[@]}"; do worker_total=$((worker_total + worker_requests[$pid])); done
((${#hits_of[@]} == paths)) || fail "/stats lists ${#hits_of[@]} paths, not $paths"
if [[ "$scenario" == load ]]; then
  ((total == requests)) || fail "the hit counters add up to $total, not $requests"
  for path in "${!body_of[@]}"; do
    ((${hits_of[$path]:-0} == requests / paths)) ||
      fail "$path: ${hits_of[$path]:-0} hits counted, $((requests / paths)) requests made"
  done
  for pid in "${!served_count[@]}"; do
    ((${worker_requests[$pid]:-0} == ${served_count[$pid]})) ||
      fail "worker $pid: /stats counts ${worker_requests[$pid]:-0} requests, it served ${served_count[$pid]}"
  done
  ((worker_total == requests)) || fail "the per-worker counters add up to $worker_total, not $requests"
else
  ((total >= expected_total && total <= expected_total + 1)) ||
    fail "the hit counters add up to $total, expected $expected_total (or one more)"
fi

# ---- the table
echo
printf '%-10s  %-9s  %-6s  %s\n' path "built by" hits "served by (pid x responses)"
for ((p = 0; p < paths; p++)); do
  path=/page/$p
  served_by=$(tr ' ' '\n' <<<"${served_paths[$path]:-}" | grep . | sort | uniq -c |
    awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
  printf '%-10s  %-9s  %-6s  %s\n' "$path" "#${body_of[$path]##*#}" "${hits_of[$path]:-?}" "$served_by"
done
echo "responses: $count, hits counted: $total, workers that served: ${#served_count[@]}," \
  "slowest: ${max_time} s, load: ${load_seconds} s"
retried=$(grep -cE 'upstream=[^ ]*,' "$STACK_DIR/nginx/access.log" 2>/dev/null || true)
[[ -n "$victim" ]] && echo "requests nginx passed on to another worker after the kill: ${retried:-0}"

# ---- stopping: every worker ends on SIGTERM, the last one out removes the temporary home
stack_stop_from_files 2>"$STACK_DIR/stop.log"
cat "$STACK_DIR/stop.log"
# A process is gone once /proc has no status for it or it is a zombie (Z) or dead (X) waiting to
# be reaped by whoever inherited it. The SIGKILLed worker may take a moment to finish dying, so
# each process gets up to 2 s; the state is shown if one is still there.
process_state() { sed -n 's/^State:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null; }
for pid in "${STACK_WORKERS[@]}" "$STACK_NGINX_PID"; do
  state=$(process_state "$pid")
  for ((i = 0; i < 20; i++)); do
    [[ -z "$state" || "$state" == Z* || "$state" == X* ]] && break
    sleep 0.1
    state=$(process_state "$pid")
  done
  if [[ -n "$state" && "$state" != Z* && "$state" != X* ]]; then
    fail "process $pid is still running after the stop (state $state)"
  fi
done
if grep -q "did not stop" "$STACK_DIR/stop.log"; then
  fail "a process needed SIGKILL to stop"
fi
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$STACK_DIR/workers.log"; then
  fail "a sanitizer reported an error in a worker (workers.log)"
fi
if [[ "$backend" == bsddb && -e "$STACK_DIR/ipc" ]]; then
  fail "the temporary Berkeley DB home is still there after every worker stopped: $(find "$STACK_DIR/ipc" -mindepth 1 -printf '%f ')"
fi

elapsed=$(awk -v a="$start_time" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
if ((failures > 0)); then
  show_logs
  echo "FAILED: fastcgi $scenario $backend: $failures failure(s), ${elapsed} s"
  exit 1
fi
echo "PASSED: fastcgi $scenario $backend (${elapsed} s)"
exit 0
