#!/usr/bin/env bash
# Runs the benchmarks: installs what is missing (Debian), configures a Release build in
# build-bench/, builds bench/compare, starts a memcached of its own on 127.0.0.1 (a port the
# kernel picks), runs compare (one table: ops/s and ratios) and stops that memcached by its PID.
# Extra arguments go to compare (e.g. --rounds 3, --details, --ops 300 for a smoke run).
# Set SMISK_BENCH_COUNTER=1 to run bench/counter_experiment too. Works from any directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh

# The peers the benchmark compares with; scripts/install-deps.sh does not list them, since only
# the benchmark needs them.
extra=(liblmdb-dev libboost-dev)
missing=()
for package in "${extra[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$package")
done
if ((${#missing[@]} > 0)); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: install by hand: ${missing[*]}" >&2
    exit 1
  fi
  sudo=()
  if ((EUID != 0)); then sudo=(sudo); fi
  echo "bench: installing ${missing[*]}"
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Release at -O2 (CMake's Release default is -O3), as a distribution would build an application.
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DSMISK_IPC_BUILD_BENCH=ON -DSMISK_IPC_BUILD_TESTS=OFF -DSMISK_IPC_BUILD_EXAMPLES=OFF \
  -DSMISK_IPC_INSTALL=OFF >/dev/null
cmake --build build-bench -j"$(nproc 2>/dev/null || echo 2)" --target compare counter_experiment

# A memcached of our own, on loopback only, stopped by its PID (tests/memcached_fixture.sh).
state=$(mktemp -d "${TMPDIR:-/tmp}/smisk-ipc-bench-memcached.XXXXXX")
stop_memcached() {
  bash tests/memcached_fixture.sh stop "$state" >/dev/null || true
  rm -rf "$state"
}
trap stop_memcached EXIT
memcached_bin=$(command -v memcached || echo /usr/bin/memcached)
bash tests/memcached_fixture.sh start "$state" "$memcached_bin" >/dev/null
port=$(<"$state/port")
pid=$(<"$state/memcached.pid")

echo "bench: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d)"
status=0
build-bench/bench/compare --memcached "127.0.0.1:$port" --memcached-pid "$pid" "$@" || status=$?
if [[ "${SMISK_BENCH_COUNTER:-0}" == 1 ]]; then
  build-bench/bench/counter_experiment || status=$?
fi
exit "$status"
