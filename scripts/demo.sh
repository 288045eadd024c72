#!/usr/bin/env bash
# The demo: smisk.ipc's FastCGI example, in C++ (examples/fastcgi), for real. Installs what is
# missing (Debian), builds the example, starts 4 prefork workers with spawn-fcgi behind a private
# nginx on 127.0.0.1 (a free port; config, logs and the dict's home in a temporary directory),
# sends requests with curl and prints who built each answer and who served it. Then it stops
# everything by PID and removes the temporary directory. Works from any directory.
#
#   bash scripts/demo.sh               # Berkeley DB backend
#   bash scripts/demo.sh --memcached   # memcached backend, on a memcached of its own (loopback)
#   bash scripts/demo.sh --serve       # then keep serving (URL printed) until Ctrl-C
#   options: --port N (nginx's port, default a free one), --workers N (default 4)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

serve=0
backend=bsddb
port=
workers=4
while (($#)); do
  case "$1" in
  --serve) serve=1 ;;
  --memcached) backend=memcached ;;
  --port)
    port=${2:?--port needs a value}
    shift
    ;;
  --workers)
    workers=${2:?--workers needs a value}
    shift
    ;;
  -h | --help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "demo: unknown option $1 (try --help)" >&2
    exit 2
    ;;
  esac
  shift
done

bash scripts/install-deps.sh
# Configure once (again only if the build tree lacks the examples); the build is a no-op when up
# to date. SMISK_IPC_BUILD_DIR: another build tree than build/.
build=${SMISK_IPC_BUILD_DIR:-build}
if ! grep -qs '^SMISK_IPC_BUILD_EXAMPLES:BOOL=ON' "$build/CMakeCache.txt"; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSMISK_IPC_BUILD_EXAMPLES=ON
fi
cmake --build "$build" --target fastcgi_example -j"$(nproc 2>/dev/null || echo 2)"
app=$(cd "$build" && pwd)/examples/fastcgi/fastcgi_example

# shellcheck source-path=SCRIPTDIR source=../examples/fastcgi/local_stack.sh
source examples/fastcgi/local_stack.sh
stack_init # from here on, everything started is stopped by PID when this script ends

if [[ "$backend" == memcached ]]; then
  stack_start_memcached
  app_args=(--memcached "127.0.0.1:$STACK_MEMCACHED_PORT" --name "smisk-fastcgi-demo-$$")
  backend_text="memcached (pid $STACK_MEMCACHED_PID, 127.0.0.1:$STACK_MEMCACHED_PORT)"
else
  app_args=(--home "$STACK_DIR/ipc")
  backend_text="Berkeley DB (home $STACK_DIR/ipc)"
fi
stack_start_workers "$workers" "$app" "${app_args[@]}" --log "$STACK_DIR/workers.log"
stack_start_nginx "$port"

echo
echo "$workers FastCGI workers (pids ${STACK_WORKERS[*]}) behind nginx on $STACK_URL"
echo "backend: $backend_text"

# 5 paths x 8 requests, 4 clients at a time.
paths=(/ /hello /about /smisk/ipc /news)
rounds=8
clients=4
results=$STACK_DIR/demo
mkdir -p "$results"
client() {
  local c=$1 i
  for ((i = c; i < ${#paths[@]} * rounds; i += clients)); do
    stack_request "$i" "${paths[i % ${#paths[@]}]}" "$results/client.$c"
  done
}
client_pids=()
for ((c = 0; c < clients; c++)); do
  client "$c" &
  client_pids+=($!)
done
for pid in "${client_pids[@]}"; do wait "$pid"; done

declare -A hits=()
while IFS=$'\t' read -r kind path count _; do
  [[ "$kind" == path ]] && hits[$path]=$count
done < <(stack_curl "$STACK_URL/stats?tsv")

echo
echo "$((${#paths[@]} * rounds)) requests (curl, $clients at a time):"
echo
printf '  %-11s %-10s %-7s %s\n' path "built by" hits "served by (pid x responses)"
failed=0
for path in "${paths[@]}"; do
  rows=$(awk -F'\t' -v p="$path" '$2 == p' "$results"/client.*)
  bodies=$(cut -f7 <<<"$rows" | sort -u)
  builder=$(sed -n 's/^Hello! This was built by process #\([0-9]*\)$/#\1/p' <<<"$bodies")
  if [[ $(wc -l <<<"$bodies") != 1 || -z "$builder" ]] || cut -f3 <<<"$rows" | grep -qv '^200$'; then
    builder="(!)"
    failed=1
  fi
  served=$(cut -f5 <<<"$rows" | sort | uniq -c | awk '{printf "%s#%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
  printf '  %-11s %-10s %-7s %s\n' "$path" "$builder" "${hits[$path]:-?}" "$served"
done
echo
if ((failed)); then
  echo "Some responses were not the one shared answer: see $results"
  STACK_KEEP=1 # read by stack_stop on exit: keep the logs
  export STACK_KEEP
  exit 1
fi
echo "Each answer was built once, by the process named in it, stored in the shared dict, and"
echo "then served by every worker from there. The counters are shared the same way: GET /stats"
echo
stack_curl "$STACK_URL/stats" | sed 's/^/  | /; s/ $//'

if ((serve)); then
  echo
  echo "Serving until Ctrl-C (nginx on 127.0.0.1 only):"
  echo "  $STACK_URL/            any path: its answer, built once by one worker"
  echo "  $STACK_URL/stats       the shared counters (which worker served how many requests)"
  echo "  curl -i $STACK_URL/hello   shows X-Served-By and X-Cache"
  wait "$STACK_NGINX_PID" || true
  echo "nginx exited"
fi
