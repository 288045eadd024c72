// smisk-ipc: the descriptors libdb opens for the library's environments, so that a broken one's can
// be closed. SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <db.h>
#include <unistd.h>

#include <atomic>

#include "robust_state.hpp"

namespace smisk::ipc::detail::robust {

// ---- descriptors --------------------------------------------------------------------------------
//
// A broken environment cannot be closed through libdb (see environment::release_broken), so the
// descriptors libdb opened for it (region files, logs, databases: about five) would stay open
// for ever, a few more at every recovery. libdb's open() and close() go through the patched GOT:
// descriptors opened inside a library call are recorded with their DB_ENV, and
// close_descriptors_of() closes what a broken environment still holds. Lock-free (a table
// indexed by descriptor); descriptors past the table are not tracked.

inline constexpr int tracked_fds = 16384;
inline std::atomic<DB_ENV*> fd_owner[tracked_fds];

inline void note_open(int fd) noexcept {
  if (fd >= 0 && fd < tracked_fds && current_env)
    fd_owner[fd].store(current_env, std::memory_order_relaxed);
}
inline void note_close(int fd) noexcept {
  if (fd >= 0 && fd < tracked_fds) fd_owner[fd].store(nullptr, std::memory_order_relaxed);
}
/// Closes every descriptor libdb opened for `env` and has not closed. @returns how many.
inline int close_descriptors_of(DB_ENV* env) noexcept {
  int closed = 0;
  for (int fd = 0; fd < tracked_fds; ++fd) {
    DB_ENV* owner = env;
    if (fd_owner[fd].load(std::memory_order_relaxed) == env &&
        fd_owner[fd].compare_exchange_strong(owner, nullptr)) {
      ::close(fd);
      ++closed;
    }
  }
  return closed;
}

}  // namespace smisk::ipc::detail::robust
