#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# through ctest twice: a RelWithDebInfo build (build/), then an ASan+UBSan
# Debug build (build-asan/); then the threaded tests of one process under
# ThreadSanitizer (build-tsan/). Only the 60 s chaos runs (label chaos_long) are
# left out: `ctest --test-dir build -L chaos_long` runs them.
# Exits non-zero if any step fails. Works from any directory.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

jobs=$(nproc 2>/dev/null || echo 2)
failed=()

step() {
  local name=$1
  shift
  echo "==> $name: $*"
  if ! "$@"; then
    echo "==> FAILED: $name"
    failed+=("$name")
    return 1
  fi
}

step "install-deps" bash scripts/install-deps.sh || {
  echo "SUMMARY: FAILED (could not install the dependencies)"
  exit 1
}

# build/: RelWithDebInfo, every test but the 60 s chaos runs (`ctest -L chaos_long` runs them;
# the normal suite has a 10 s chaos run per dict kind and the deadlock storms, label crash; each
# crash case runs alone, RUN_SERIAL, since they measure stalls).
if step "configure build" cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSMISK_IPC_BUILD_TESTS=ON -DSMISK_IPC_BUILD_EXAMPLES=ON -DSMISK_IPC_SANITIZE=OFF &&
  step "build build" cmake --build build -j"$jobs"; then
  step "ctest build" ctest --test-dir build --output-on-failure -j2 -LE 'chaos_long|crash'
  # The crash tests, each alone. A case that fails is run once more: their stall bound (2 s) is
  # wall-clock time on a shared 2-core machine, where the worst stall measured is 0.64 s; a
  # regression fails both runs.
  step "ctest build (crash)" ctest --test-dir build --output-on-failure -L crash -LE chaos_long \
    --repeat until-pass:2
fi

# build-asan/: Debug with AddressSanitizer and UndefinedBehaviorSanitizer.
if step "configure build-asan" cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug \
  -DSMISK_IPC_BUILD_TESTS=ON -DSMISK_IPC_BUILD_EXAMPLES=ON -DSMISK_IPC_SANITIZE=ON &&
  step "build build-asan" cmake --build build-asan -j"$jobs"; then
  # libdb leaks what it allocated for an environment closed after a crash recovery.
  export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp"
  # LeakSanitizer's exit-time check (stop-the-world) sometimes hangs in a forked child of a
  # multi-threaded test process ("Running thread ... was not suspended"): the fork tests then
  # time out after 60 s. Leak checking is off here; ASan's memory errors and UBSan stay on.
  export ASAN_OPTIONS="detect_leaks=0"
  # GCC 12's libasan does not lock its allocator around fork(): a child forked while another
  # thread of the parent is inside malloc hangs at its first allocation. The library keeps its own
  # threads out of the way (see detail/posix.hpp), but threads_test's fork_while_other_threads
  # forks while the test's own threads allocate, so it can only run in the release build.
  step "ctest build-asan" ctest --test-dir build-asan --output-on-failure -j2 -LE 'chaos_long|crash' \
    -E 'fork_while_other_threads'
  # The crash tests under the sanitizers too (each alone; a failure is retried once, as above).
  step "ctest build-asan (crash)" ctest --test-dir build-asan --output-on-failure -L crash \
    -LE chaos_long --repeat until-pass:2
fi

# build-tsan/: the threaded tests of one process under ThreadSanitizer. Berkeley DB itself is not
# instrumented; the library's own threads, locks and atomics are. TSan cannot follow fork() from a
# multi-threaded process, so the tests that fork threaded processes run in the builds above only.
if step "configure build-tsan" cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSMISK_IPC_BUILD_TESTS=ON -DSMISK_IPC_BUILD_EXAMPLES=OFF -DSMISK_IPC_INSTALL=OFF \
  -DSMISK_IPC_TSAN=ON &&
  step "build build-tsan" cmake --build build-tsan -j"$jobs" --target threads_test; then
  step "threads under TSan" timeout 600 env TSAN_OPTIONS="halt_on_error=1" \
    build-tsan/tests/threads_test \
    --gtest_filter='threads.one_copied_handle_shared_by_many_threads:threads.threads_open_use_and_close_dicts_of_one_home_at_once:threads.a_busy_key_is_retried_16_times_then_waited_for'
fi

if ((${#failed[@]} == 0)); then
  echo "SUMMARY: PASSED (build/ RelWithDebInfo, build-asan/ ASan+UBSan and the threaded tests under TSan)"
  exit 0
fi
echo "SUMMARY: FAILED: ${failed[*]}"
exit 1
