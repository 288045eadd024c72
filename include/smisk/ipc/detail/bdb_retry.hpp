// smisk-ipc: which Berkeley DB failures are retried, and how long to wait between tries.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <cstdlib>

#include "bdb_stats.hpp"

namespace smisk::ipc::detail::bdb {

/// Exponential backoff for deadlock and lock-conflict retries.
class backoff {
 public:
  /// `conflict`: a lock was busy (DB_LOCK_NOTGRANTED), not a deadlock.
  void operator()(bool conflict = false) {
    (conflict ? stats().lock_conflicts : stats().deadlock_retries)
        .fetch_add(1, std::memory_order_relaxed);
    ++tries_;
    if (tries_ < 3) return;
    if (tries_ < 8) {
      ::sched_yield();
      return;
    }
    long ns = std::min(1000000L, 1000L << std::min(tries_ - 8, 10));
    ns = ns / 2 + static_cast<long>(::random() % (ns / 2 + 1));
    struct timespec ts = {0, ns};
    ::nanosleep(&ts, nullptr);
  }

 private:
  int tries_ = 0;
};

inline bool is_retryable(int rc) noexcept {
  return rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED;
}

}  // namespace smisk::ipc::detail::bdb
