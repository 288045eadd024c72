// smisk-ipc: what the Berkeley DB backend did in this process (its counters).
// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <cstdint>

namespace smisk::ipc::detail::bdb {

/// Counters of what the library did, per process.
struct statistics {
  std::atomic<std::uint64_t> deadlock_retries{0};
  std::atomic<std::uint64_t> checkpoints{0};
  std::atomic<std::uint64_t> environments_opened{0};
  std::atomic<std::uint64_t> stale_homes_cleaned{0};
  std::atomic<std::uint64_t> homes_removed{0};
  std::atomic<std::uint64_t> failchk_errors{0};
  std::atomic<std::uint64_t> recoveries{0};
  std::atomic<std::uint64_t> first_open_recoveries{0};
  std::atomic<std::uint64_t> environments_abandoned{0};
  std::atomic<std::uint64_t> lock_conflicts{0};
  std::atomic<std::uint64_t> writes_found_landed{0};
  std::atomic<std::uint64_t> writes_redone{0};
};
inline statistics& stats() {
  static statistics s;
  return s;
}

}  // namespace smisk::ipc::detail::bdb
