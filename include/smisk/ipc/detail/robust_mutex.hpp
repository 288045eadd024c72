// smisk-ipc: robust process-shared mutexes for Berkeley DB (Linux/glibc, x86-64 and AArch64).
// SPDX-License-Identifier: MIT
//
// Berkeley DB 5.3 as Debian builds it ("POSIX/pthreads/library" mutexes) keeps its region
// mutexes as process-shared pthread mutexes that are not robust: when a process is killed while
// it holds one (say a lock-region mutex, held inside every lock_get), every other process that
// wants it waits forever in pthread_mutex_lock. A robust mutex fails instead (EOWNERDEAD), and
// Berkeley DB turns any failure of a mutex operation into a panic (DB_RUNRECOVERY), after which
// the environment can be recovered (DB_RECOVER).
//
// install() makes that happen without touching the rest of the process: it rewrites, in
// libdb's own GOT (the slots that its PLT calls go through; "plthook"), the entries of
//
//   pthread_mutexattr_setpshared  also sets PTHREAD_MUTEX_ROBUST and PTHREAD_MUTEX_ERRORCHECK
//                                 when asked for PTHREAD_PROCESS_SHARED, so every shared mutex
//                                 libdb initialises from now on is robust and error-checking;
//   pthread_mutex_lock/_trylock   on EOWNERDEAD (the owner died; we hold it now) does not make
//                                 the mutex consistent: unlocks it, which leaves it
//                                 ENOTRECOVERABLE, so that this caller and every later one fail
//                                 at once, and returns EOWNERDEAD (libdb panics);
//   pthread_mutex_destroy         returns 0 even when glibc refuses (EBUSY): libdb destroys a
//                                 mutex only to reinitialise it or throw its memory away, and
//                                 otherwise fails failchk with "BDB2027 unable to destroy mutex";
//   pthread_cond_destroy          returns 0 without waiting: glibc's waits until every thread
//                                 that blocked on the condition variable has left it, and one
//                                 that was killed while blocked never leaves (libdb's
//                                 __mutex_refresh, when failchk frees a dead locker's waiting
//                                 lock, would hang). libdb reinitialises the memory next;
//   pthread_cond_wait/_timedwait, pthread_rwlock_rdlock/_wrlock, and pthread_mutex_lock when it
//                                 has to wait: wait in slices of 100 ms and fail with
//                                 ENOTRECOVERABLE once the memory they wait in is known broken
//                                 (below), since a panicked environment wakes nobody: a thread
//                                 blocked on a logical lock (condition variable) or a page latch
//                                 (rwlock) whose holder died would stay blocked for ever;
//   munmap                        forgets the broken ranges libdb unmaps, and first drops from
//                                 the calling thread's robust list what it holds there;
//   __lock_detect                 (libdb's own deadlock detector, called through its PLT) runs
//                                 under a fault guard: see "the deadlock detector" in
//                                 robust_guard.hpp.
//
// "Broken" memory: the mapping (a region file, __db.00N) that holds a mutex found EOWNERDEAD or
// ENOTRECOVERABLE, or that libdb relocked while holding it (EDEADLK: after a failure its error
// paths return with mutexes held, its MUTEX_LOCK macro returns DB_RUNRECOVERY at once, and
// lock them again during the cleanup), plus whatever abort_waits_in(lo, hi) declares. The
// library records the address ranges of an environment's regions when it opens it (under the
// home's gate, for_each_region), and declares exactly those broken once it learns that the
// environment needs recovery (environment::abort_waits, through checkpoint_state::abort_waits:
// after an operation, a checkpoint or the watchdog's failchk got DB_RUNRECOVERY, or when the
// registry takes the environment out of service), since the panic may have come from another
// process; a newer environment of the same home, mapped later, is left alone. A wait also fails
// when the environment of the calling thread's library call is known dead (broken_check:
// broken in this process, or its panic flag set by another; robust_waits.hpp). A wait in broken
// memory fails at once (and one already blocked, within 100 ms); libdb then returns
// DB_RUNRECOVERY to the caller, which can leave the environment and recover it.
//
// Limits:
//  * Only mutexes initialised after install() are robust: call it before the first DB_ENV is
//    created (an environment's mutexes are initialised by the process that creates its regions),
//    and every process that shares an environment must have called it, because the creator's
//    attributes decide for everyone. A child of fork() inherits the patched GOT.
//  * Shared latches (pthread_rwlock_t, libdb's buffer-page latches) cannot be robust: a process
//    killed while holding one blocks writers of that page until something declares the
//    environment broken (failchk's "Thread died in Berkeley DB library", then abort_waits_in()).
//  * "Self-blocking" mutexes (logical locks, group-commit waits) are held as a flag, not as a
//    pthread mutex; a process that dies holding one is failchk's business, not this one's.
//  * Only libdb's calls are patched (not those of other libraries or of the program); a copy of
//    libdb loaded later (dlopen of another version) is not patched; DB_SYSTEM_MEM regions
//    (shmat/shmdt) are not tracked by for_each_region() or abort_waits(home).
//  * A process without the patch that meets EOWNERDEAD panics but keeps the mutex locked for
//    ever; the waits of patched processes end only once something marks the memory broken.
//  * Closing a broken DB_ENV unmaps its regions: only once no thread is inside it any more.
//  * The patch is per process and permanent.
//
// Use (what the library is expected to do):
//   1. install() in every process, before its first db_env_create() (e.g. first thing in the
//      environment's constructor; it is idempotent and cheap after the first call);
//   2. right after opening an environment, record its regions (for_each_region); set
//      broken_check, so that waits in an environment known dead fail;
//   3. when anything of the process gets DB_RUNRECOVERY from it (an operation, a checkpoint, the
//      watchdog's failchk), call abort_waits_in() on each recorded region and drop the calling
//      thread's holds there (forget_broken_holds);
//   4. calls then return DB_RUNRECOVERY (within ~100 ms for blocked ones); once no thread is
//      inside the handle, close it (or release it) and reopen, recovering the home
//      (bdb_recovery.hpp).
//
// API: install(), status(), owner_died_count(), for_each_region(), abort_waits_in(lo, hi), and
// abort_waits(home) (every mapping of the home's region files, older environments' and newer
// alike: for experiments; the library uses abort_waits_in); counters in event_counts.
#pragma once

#include <limits.h>
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "robust_broken.hpp"
#include "robust_got.hpp"
#include "robust_guard.hpp"
#include "robust_heap.hpp"
#include "robust_state.hpp"

namespace smisk::ipc::detail::robust {

// ---- the API ---------------------------------------------------------------------------------

/// Patches libdb's GOT, once per process (thread-safe, idempotent). Returns whether the
/// process-shared mutexes libdb initialises from now on are robust. Call it before the first
/// DB_ENV is created, in every process that uses the environment. Never throws; when anything
/// is not as expected it changes nothing and status() says why.
inline bool install() noexcept {
  static const bool installed = [] {
    bool ok = do_install(status_message, sizeof status_message);
    status_text.store(status_message, std::memory_order_release);
    installed_flag.store(ok, std::memory_order_release);
    return ok;
  }();
  return installed;
}

/// What install() did: "installed: ..." or "not installed: <why>".
inline const char* status() noexcept { return status_text.load(std::memory_order_acquire); }

/// How many times, in this process, a libdb mutex operation found that the mutex's owner had
/// died (EOWNERDEAD); each one panics the environment.
inline std::uint64_t owner_died_count() noexcept {
  return event_counts.owner_died.load(std::memory_order_relaxed);
}

/// Calls f(lo, hi) for each live mapping of the region files of the environment at `home`
/// ("__db.*", not deleted: the regions of an environment that was recovered since are deleted
/// files). For recording an environment's memory right after opening it.
template <class F>
inline void for_each_region(const char* home, F&& f) noexcept {
  char real[PATH_MAX + 8];
  if (!home || !::realpath(home, real)) return;
  std::size_t n = std::strlen(real);
  std::memcpy(real + n, "/__db.", 7);
  n += 6;
  for_each_mapping([&](std::uintptr_t lo, std::uintptr_t hi, const char* path) {
    if (std::strncmp(path, real, n) != 0) return;
    const std::size_t len = std::strlen(path);
    if (len >= 10 && std::strcmp(path + len - 10, " (deleted)") == 0) return;
    f(lo, hi);
  });
}

/// Declares broken the memory [lo, hi) (a region of an environment known broken, as recorded by
/// for_each_region): every wait that a thread of this process makes inside libdb on memory there
/// (mutex, logical lock, page latch) fails from now on, and one already blocked within 100 ms,
/// so that libdb returns DB_RUNRECOVERY. Call it while the broken environment is still mapped,
/// before closing it; libdb's munmap of a region clears the mark. Does nothing when install()
/// did not succeed (waits are then not sliced and cannot be ended).
inline void abort_waits_in(std::uintptr_t lo, std::uintptr_t hi) noexcept {
  if (installed_flag.load(std::memory_order_acquire)) mark_broken(lo, hi);
}

/// abort_waits_in() for every mapping of the region files of the environment at `home`
/// ("__db.*"), whichever environment they belong to. Not used by the library, which declares
/// only the recorded regions of the broken environment (a newer one of the same home may be
/// mapped already). Returns how many mappings it marked (0 also when install() did not
/// succeed).
inline int abort_waits(const char* home) noexcept {
  if (!installed_flag.load(std::memory_order_acquire)) return 0;
  char real[PATH_MAX + 8];
  if (!home || !::realpath(home, real)) return 0;
  std::size_t n = std::strlen(real);
  std::memcpy(real + n, "/__db.", 7);
  n += 6;
  int found = 0;
  for_each_mapping([&](std::uintptr_t lo, std::uintptr_t hi, const char* path) {
    if (std::strncmp(path, real, n) != 0) return;
    mark_broken(lo, hi);
    ++found;
  });
  return found;
}

/// Whether the fault handler is still the process's SIGSEGV handler (the application may have
/// installed its own after it; faults inside libdb then reach that one first).
inline bool fault_handler_current() noexcept {
  if (!fault_handler_installed.load(std::memory_order_acquire)) return false;
  struct sigaction now {};
  if (::sigaction(SIGSEGV, nullptr, &now) != 0 || (now.sa_flags & SA_SIGINFO) == 0) return false;
  return now.sa_sigaction == &::smisk_ipc_robust_on_fault || ours(address_of(now.sa_sigaction));
}

}  // namespace smisk::ipc::detail::robust
