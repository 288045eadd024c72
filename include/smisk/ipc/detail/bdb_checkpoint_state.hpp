// smisk-ipc: what an environment shares with its library threads (checkpoint, watchdog).
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "bdb_home_files.hpp"
#include "bdb_liveness.hpp"
#include "posix.hpp"
#include "robust_mutex.hpp"

namespace smisk::ipc::detail::bdb {

/// What an environment shares with its library threads (the watchdog, the thread of the last
/// checkpoint at close). The checkpoint thread co-owns it, so that an environment abandoned while
/// that thread is stuck (see environment::shutdown) leaves it valid.
struct checkpoint_state {
  std::mutex mutex;
  std::condition_variable cv;
  bool stopping = false;  // the environment is being closed: end the thread
  bool final = false;     // with stopping: one last checkpoint (persistent homes)
  bool inside = false;    // the thread is inside DB_ENV->txn_checkpoint
  bool exited = false;
  /// A broken environment was left to the stuck thread: it releases it when it gets out.
  bool release_on_exit = false;
  std::atomic<bool> broken{false};     // the environment's broken flag
  std::atomic<bool> dead_seen{false};  // failchk met a dead process's thread (is_alive said so)
  /// The address ranges of the environment's regions in this process, recorded at open.
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> regions;
  /// The environment's primary region file (__db.001, REGENV first), opened with it: still this
  /// environment's after another process retired it and made a new one under the same name.
  unique_fd regenv;
  /// libdb's heap memory of the environment (see robust_heap.hpp).
  robust::heap_arena heap;

  /// Whether a process panicked the environment (it is dead for every process): REGENV's panic
  /// flag. Read from the file, not the mapping, which another thread may be unmapping.
  [[nodiscard]] bool panicked() const noexcept {
    return regenv_word(regenv.get(), regenv_panic_offset) != 0;
  }

  /// Closes the descriptors libdb opened for a broken environment, unmaps its regions and frees
  /// libdb's heap memory of it (see environment::release_broken); no thread of this process may
  /// be inside it, and its handles are never touched again.
  void release(DB_ENV* env) noexcept {
    robust::close_descriptors_of(env);
    for (const auto& range : regions)
      (void)robust::unmap_region(reinterpret_cast<void*>(range.first), range.second - range.first);
    regions.clear();
    heap.release();
  }

  /// Marks the environment broken, declares its regions broken in this process (waits there
  /// fail) and drops what the calling thread holds there from its robust list (see
  /// robust_mutex.hpp).
  void abort_waits() noexcept {
    broken.store(true, std::memory_order_seq_cst);
    for (const auto& r : regions) robust::abort_waits_in(r.first, r.second);
    robust::forget_broken_holds();
  }
};

/// The state of one of the library's environments (its app_private), or null.
inline checkpoint_state* state_of(DB_ENV* env) noexcept {
  return env ? static_cast<checkpoint_state*>(env->app_private) : nullptr;
}

/// For robust_heap.hpp: the arena of one of the library's environments.
inline robust::heap_arena* arena_of_environment(DB_ENV* env) noexcept {
  checkpoint_state* state = state_of(env);
  return state ? &state->heap : nullptr;
}

inline void note_dead_thread(DB_ENV* env) noexcept {
  if (checkpoint_state* state = state_of(env))
    state->dead_seen.store(true, std::memory_order_relaxed);
}

/// For the robust waits and robust_guard.hpp's __os_yield hook: whether the environment is known
/// dead, broken in this process or panicked by another.
inline bool environment_known_broken(DB_ENV* env) noexcept {
  const checkpoint_state* state = state_of(env);
  return state && (state->broken.load(std::memory_order_relaxed) || state->panicked());
}

}  // namespace smisk::ipc::detail::bdb
