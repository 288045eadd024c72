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
  std::uint64_t deadlock_retries = 0;     ///< operations retried after a deadlock
  std::uint64_t checkpoints = 0;          ///< checkpoints taken
  std::uint64_t environments_opened = 0;  ///< DB_ENV handles opened (after fork and recovery too)
  std::uint64_t stale_homes_cleaned = 0;  ///< temporary homes left by crashed processes, wiped
  std::uint64_t homes_removed = 0;        ///< temporary home directories removed by the last user
  /// Berkeley DB recoveries this process ran because something broke: a process died inside
  /// the library while others used the home, or while it created or recovered the environment.
  std::uint64_t recoveries = 0;
  std::uint64_t dead_process_checks = 0;     ///< failchk runs that found a dead process's damage
  std::uint64_t environments_abandoned = 0;  ///< broken environments left open (threads inside)
  std::uint64_t dead_mutex_owners = 0;       ///< libdb mutexes found held by a dead process
  std::uint64_t aborted_waits = 0;           ///< waits inside a broken environment made to fail
  std::uint64_t libdb_faults = 0;    ///< libdb calls (deadlock detector, failchk) that faulted on a
                                     ///< dead process's half-made structures; each a recovery
  std::uint64_t lock_conflicts = 0;  ///< read-modify-writes retried because the key's lock was
                                     ///< busy (they do not queue at first, see backend::modify)
  std::uint64_t writes_found_landed = 0;  ///< writes whose commit a break interrupted, found
                                          ///< applied after recovery (and so not redone)
  std::uint64_t writes_redone = 0;        ///< writes whose commit a break interrupted, found not
                                          ///< applied after recovery (and so redone)
  /// DB_RECOVER runs at the first open of a home no live process used (a new home, one closed
  /// cleanly, or one whose processes were all killed, whose log it then replays): routine, not
  /// a sign that anything broke.
  std::uint64_t first_open_recoveries = 0;
};

/// The counters of this process.
inline statistics stats() noexcept {
  const auto& s = detail::bdb::stats();
  const auto& r = detail::robust::event_counts;
  statistics out;
  out.deadlock_retries = s.deadlock_retries.load();
  out.checkpoints = s.checkpoints.load();
  out.environments_opened = s.environments_opened.load();
  out.stale_homes_cleaned = s.stale_homes_cleaned.load();
  out.homes_removed = s.homes_removed.load();
  out.recoveries = s.recoveries.load();
  out.first_open_recoveries = s.first_open_recoveries.load();
  out.dead_process_checks = s.failchk_errors.load();
  out.environments_abandoned = s.environments_abandoned.load();
  out.dead_mutex_owners = r.owner_died.load();
  out.aborted_waits = r.waits_failed.load();
  out.libdb_faults = r.libdb_faults.load();
  out.lock_conflicts = s.lock_conflicts.load();
  out.writes_found_landed = s.writes_found_landed.load();
  out.writes_redone = s.writes_redone.load();
  return out;
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
