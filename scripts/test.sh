#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# through ctest twice: a RelWithDebInfo build (build/), then an ASan+UBSan
# Debug build (build-asan/); then the threaded tests of one process under
# ThreadSanitizer (build-tsan/), and a Release (-O3) build of everything
# (build-release/, compiled only: every build type must build warning-free).
# Left out: the 60 s chaos runs (label chaos_long: `ctest --test-dir build -L
# chaos_long`) and the 1,000-recovery soak (label soak: `ctest --test-dir build -L soak`).
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

# build/: RelWithDebInfo, every test but the long runs (the normal suite has a 10 s chaos run per
# dict kind, the deadlock storms and a 300-recovery soak, label crash; each crash case runs
# alone, RUN_SERIAL, since they measure stalls). Nothing is run a second time: a test that checks
# data (a lost write, a wrong counter, a failed verify, a leaked descriptor) must pass at once.
if step "configure build" cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSMISK_IPC_BUILD_TESTS=ON -DSMISK_IPC_BUILD_EXAMPLES=ON -DSMISK_IPC_SANITIZE=OFF &&
  step "build build" cmake --build build -j"$jobs"; then
  step "ctest build" ctest --test-dir build --output-on-failure -j2 -LE 'chaos_long|crash|soak'
  # A hang there prints the stacks of the processes involved (gdb), so that it can be understood
  # from the log alone.
  step "ctest build (crash)" env SMISK_TEST_STACKS=1 ctest --test-dir build --output-on-failure \
    -L crash -LE 'chaos_long|soak'
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
  step "ctest build-asan" ctest --test-dir build-asan --output-on-failure -j2 \
    -LE 'chaos_long|crash|soak' -E 'fork_while_other_threads'
  # The crash tests under the sanitizers too (each alone). The recovery soak forks hundreds of
  # children from a process whose library threads allocate, which GCC 12's libasan cannot do
  # reliably (see above): it runs in the release build only.
  step "ctest build-asan (crash)" ctest --test-dir build-asan --output-on-failure -L crash \
    -LE 'chaos_long|soak' -E 'recovery_soak'
fi

# build-tsan/: the threaded tests of one process under ThreadSanitizer. Berkeley DB itself is not
# instrumented; the library's own threads, locks and atomics are. TSan cannot follow fork() from a
# multi-threaded process, so the tests that fork threaded processes run in the builds above only.
if step "configure build-tsan" cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSMISK_IPC_BUILD_TESTS=ON -DSMISK_IPC_BUILD_EXAMPLES=OFF -DSMISK_IPC_INSTALL=OFF \
  -DSMISK_IPC_TSAN=ON &&
  step "build build-tsan" cmake --build build-tsan -j"$jobs" --target threads_test \
    heap_arena_test; then
  step "threads under TSan" timeout 600 env TSAN_OPTIONS="halt_on_error=1" \
    build-tsan/tests/threads_test \
    --gtest_filter='threads.one_copied_handle_shared_by_many_threads:threads.threads_open_use_and_close_dicts_of_one_home_at_once:threads.a_busy_key_is_retried_16_times_then_waited_for'
  step "heap arenas under TSan" timeout 600 env TSAN_OPTIONS="halt_on_error=1" \
    build-tsan/tests/heap_arena_test
fi

# build-release/: Release (-O3), everything compiled (tests, examples), warning-free; not run
# again (the same code ran above).
if step "configure build-release" cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release \
  -DSMISK_IPC_BUILD_TESTS=ON -DSMISK_IPC_BUILD_EXAMPLES=ON -DSMISK_IPC_INSTALL=OFF; then
  step "build build-release" cmake --build build-release -j"$jobs"
fi

if ((${#failed[@]} == 0)); then
  echo "SUMMARY: PASSED (build/ RelWithDebInfo, build-asan/ ASan+UBSan, the threaded tests under TSan, build-release/ Release compiled)"
  exit 0
fi
echo "SUMMARY: FAILED: ${failed[*]}"
exit 1
