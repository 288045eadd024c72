// smisk-ipc: what the Berkeley DB backend did in this process (stats()) and what it does to the
// process (runtime_status()).
// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <string>

#include "detail/bdb_registry.hpp"

namespace smisk::ipc::bsddb {

/// What the library did in this process (all dicts together).
struct statistics {
  std::uint64_t deadlock_retries;        ///< operations retried after a deadlock
  std::uint64_t checkpoints;             ///< checkpoints taken
  std::uint64_t environments_opened;     ///< DB_ENV handles opened (after fork and recovery too)
  std::uint64_t stale_homes_cleaned;     ///< temporary homes left by crashed processes, wiped
  std::uint64_t homes_removed;           ///< temporary home directories removed by the last user
  std::uint64_t recoveries;              ///< Berkeley DB recoveries this process ran (DB_RECOVER)
  std::uint64_t dead_process_checks;     ///< failchk runs that found a dead process's damage
  std::uint64_t environments_abandoned;  ///< broken environments left open (threads stuck inside)
  std::uint64_t dead_mutex_owners;       ///< libdb mutexes found held by a dead process
  std::uint64_t aborted_waits;           ///< waits inside a broken environment made to fail
  std::uint64_t libdb_faults;  ///< libdb calls (deadlock detector, failchk) that faulted on a dead
                               ///< process's half-made structures; each became a recovery
  std::uint64_t lock_conflicts;  ///< read-modify-writes retried because the key's lock was busy
                                 ///< (they do not queue at first, see backend::modify)
  std::uint64_t writes_found_landed;  ///< writes whose commit a break interrupted, found applied
                                      ///< after recovery (and so not redone)
  std::uint64_t writes_redone;        ///< writes whose commit a break interrupted, found not
                                      ///< applied after recovery (and so redone)
};

/// The counters of this process.
inline statistics stats() noexcept {
  auto& s = detail::bdb::stats();
  auto& r = detail::robust::event_counts;
  return {s.deadlock_retries.load(),    s.checkpoints.load(),
          s.environments_opened.load(), s.stale_homes_cleaned.load(),
          s.homes_removed.load(),       s.recoveries.load(),
          s.failchk_errors.load(),      s.environments_abandoned.load(),
          r.owner_died.load(),          r.waits_failed.load(),
          r.libdb_faults.load(),        s.lock_conflicts.load(),
          s.writes_found_landed.load(), s.writes_redone.load()};
}

/// What the library does to this process to survive processes killed inside Berkeley DB (see
/// the README's "Process-wide effects").
struct process_status {
  /// libdb's GOT is patched: the process-shared mutexes libdb creates for the library's
  /// environments are robust, and waits inside them end once the environment is known broken.
  bool robust_mutexes = false;
  /// The fault guard's SIGSEGV/SIGBUS handler is installed and is still the process's handler.
  /// Faults outside the library's own libdb calls go on to the handler installed before it.
  bool fault_guard = false;
  /// libdb's allocation functions (db_env_set_func_malloc/realloc/free) are the library's: what
  /// libdb allocates for the library's environments comes from one arena per environment, freed
  /// whole when a broken one is left; everything else goes to malloc/realloc/free as before.
  bool heap_arenas = false;
  /// What was done, or why not.
  std::string detail;
  [[nodiscard]] bool crash_safe() const noexcept { return robust_mutexes && fault_guard; }
};

/// Sets up (once, if no dict did yet) and reports the process-wide crash-safety machinery.
inline process_status runtime_status() {
  process_status st;
  st.robust_mutexes = detail::robust::install();
  st.fault_guard = detail::robust::fault_handler_current();
  st.detail = std::string("robust mutexes: ") + detail::robust::status() + "; fault guard: ";
  if (st.fault_guard)
    st.detail +=
        "active (SIGSEGV/SIGBUS handler; faults outside the library's libdb calls go to the "
        "handler installed before it, or get the default action)";
  else if (detail::robust::fault_handler_installed.load())
    st.detail +=
        "installed, but another SIGSEGV handler was installed after it: a fault inside libdb "
        "reaches that handler instead of becoming a recovery";
  else
    st.detail += "not installed";
  st.heap_arenas = detail::robust::install_heap();
  st.detail += st.heap_arenas
                   ? "; libdb's heap: one arena per environment of the library (allocations "
                     "outside the library's libdb calls go to malloc)"
                   : "; libdb's heap: malloc (no address space could be reserved for arenas: a "
                     "broken environment's handles, 15-25 kB, stay allocated)";
  return st;
}

}  // namespace smisk::ipc::bsddb
