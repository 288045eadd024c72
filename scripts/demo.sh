#!/usr/bin/env bash
# The demo: installs what is missing, builds the examples and runs
# shared_counter, whose forked workers share one dict. Works from any directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSMISK_IPC_BUILD_EXAMPLES=ON
cmake --build build --target smisk_ipc_examples -j"$(nproc 2>/dev/null || echo 2)"
exec build/examples/shared_counter "$@"
