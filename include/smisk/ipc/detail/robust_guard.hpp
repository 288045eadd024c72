// smisk-ipc: the fault guard: libdb calls that fault or wait for ever on a dead environment return
// DB_RUNRECOVERY. SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <db.h>
#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cstdint>

#include "robust_broken.hpp"
#include "robust_state.hpp"

namespace smisk::ipc::detail::robust {

// ---- the deadlock detector -------------------------------------------------------------------
//
// libdb's deadlock detector (__lock_detect, run by a thread whose lock request conflicts) walks
// every locker's list of locks holding the lock region's mutex, but not the mutexes of the lock
// partitions. A process killed while it was linking or unlinking a lock there leaves those
// lists half made, and the detector then follows a stale index or pointer out of its arrays:
// the process running it dies of SIGSEGV (about once per thousand kills inside the lock manager
// in the chaos test). The detector's calls go through libdb's PLT, so the same GOT patch wraps
// them: a fault inside the detector (and only there: a thread-local flag says so) jumps back to
// the wrapper, which panics the environment (DB_PANIC_ENVIRONMENT: every process recovers) and
// returns DB_RUNRECOVERY (the library then declares the environment's memory broken in this
// process and drops the detector's mutexes from the thread's robust list). Any other SIGSEGV or
// SIGBUS goes to the handler that was installed before, or gets the default action.

inline thread_local sigjmp_buf* detect_escape = nullptr;
/// Set while a thread takes a checkpoint (a writer's, or the last one at close): libdb's
/// whole-second polling sleeps (see smisk_ipc_robust_os_yield) become 10 ms there. A checkpoint
/// meets pages that writers have latched for a moment, and a second per encounter made checkpoints,
/// and a close waiting for one, a second late.
inline thread_local bool quick_yields = false;
/// With quick_yields: counts the sleeps, so that the watchdog can tell a checkpoint that waits
/// (for a latched page) from one that writes pages (see environment::watch).
inline thread_local std::atomic<std::uint64_t>* quick_yield_count = nullptr;
/// Why the last escape to a guard happened: a fault, or a wait that could never end.
enum class escape_reason { fault, endless_wait };
inline thread_local escape_reason last_escape = escape_reason::fault;
inline struct sigaction previous_segv {};
inline struct sigaction previous_bus {};

}  // namespace smisk::ipc::detail::robust

extern "C" inline void smisk_ipc_robust_on_fault(int sig, siginfo_t* info, void* context) noexcept {
  namespace r = smisk::ipc::detail::robust;
  if (sigjmp_buf* escape = r::detect_escape) {
    r::detect_escape = nullptr;
    r::last_escape = r::escape_reason::fault;
    ::siglongjmp(*escape, 1);
  }
  const struct sigaction& before = sig == SIGBUS ? r::previous_bus : r::previous_segv;
  if ((before.sa_flags & SA_SIGINFO) != 0 && before.sa_sigaction) {
    before.sa_sigaction(sig, info, context);
    return;
  }
  if ((before.sa_flags & SA_SIGINFO) == 0 && before.sa_handler != SIG_DFL &&
      before.sa_handler != SIG_IGN) {
    before.sa_handler(sig);
    return;
  }
  // Default action: restore it and return; the faulting instruction faults again.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  (void)::sigaction(sig, &dfl, nullptr);
}

/// libdb polls in some places instead of waiting on a mutex: a checkpoint or a DB->close
/// flushing pages loops, sleeping a second at a time, until a page latched by another process is
/// free, and never looks at the panic flag, so a latch of a dead process keeps it there for ever.
/// Every such loop sleeps in __os_yield (through libdb's PLT): inside a guarded call, once the
/// library knows the environment broken, the sleep ends the call instead (DB_RUNRECOVERY).
extern "C" inline void smisk_ipc_robust_os_yield(ENV* env, u_long secs, u_long usecs) noexcept {
  namespace r = smisk::ipc::detail::robust;
  auto endless = [env] {
    r::broken_check_fn check = r::broken_check.load(std::memory_order_acquire);
    DB_ENV* dbenv = env ? *reinterpret_cast<DB_ENV**>(env) : nullptr;
    return r::detect_escape && check && dbenv && check(dbenv);
  };
  if (r::quick_yields && secs >= 1) {
    secs = 0;
    usecs = 10000;
  }
  if (r::quick_yields && r::quick_yield_count)
    r::quick_yield_count->fetch_add(1, std::memory_order_relaxed);
  if (!endless()) r::real_os_yield.load(std::memory_order_acquire)(env, secs, usecs);
  if (endless()) {
    sigjmp_buf* escape = r::detect_escape;
    r::detect_escape = nullptr;
    r::last_escape = r::escape_reason::endless_wait;
    ::siglongjmp(*escape, 1);
  }
}

namespace smisk::ipc::detail::robust {

inline std::atomic<bool> fault_handler_installed{false};

/// Runs f() (a libdb call on `dbenv`, such as failchk, that walks structures a dead process may
/// have left half made) so that a fault inside it panics the environment and returns
/// DB_RUNRECOVERY, as for the deadlock detector.
template <class F>
inline int call_guarded(DB_ENV* dbenv, F&& f) noexcept {
  library_call inside(dbenv);
  if (!fault_handler_installed.load(std::memory_order_acquire)) return f();
  sigjmp_buf escape;
  sigjmp_buf* const outer = detect_escape;
  if (sigsetjmp(escape, 0) != 0) {
    sigset_t faults;
    ::sigemptyset(&faults);
    ::sigaddset(&faults, SIGSEGV);
    ::sigaddset(&faults, SIGBUS);
    (void)::pthread_sigmask(SIG_UNBLOCK, &faults, nullptr);
    detect_escape = outer;
    count(last_escape == escape_reason::fault ? event_counts.libdb_faults
                                              : event_counts.waits_failed);
    (void)dbenv->set_flags(dbenv, DB_PANIC_ENVIRONMENT, 1);
    return DB_RUNRECOVERY;
  }
  detect_escape = &escape;
  int rc = f();
  detect_escape = outer;
  return rc;
}

/// Installs the fault handler that smisk_ipc_robust_lock_detect relies on (once).
inline bool install_fault_handler() noexcept {
  if (fault_handler_installed.load(std::memory_order_acquire)) return true;
  struct sigaction sa {};
  sa.sa_sigaction = &::smisk_ipc_robust_on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  ::sigemptyset(&sa.sa_mask);
  const bool ok = ::sigaction(SIGSEGV, &sa, &previous_segv) == 0 &&
                  ::sigaction(SIGBUS, &sa, &previous_bus) == 0;
  fault_handler_installed.store(ok, std::memory_order_release);
  return ok;
}

}  // namespace smisk::ipc::detail::robust

extern "C" inline int smisk_ipc_robust_lock_detect(ENV* env, u_int32_t atype,
                                                   int* rejectp) noexcept {
  namespace r = smisk::ipc::detail::robust;
  r::lock_detect_fn real = r::real_lock_detect.load(std::memory_order_acquire);
  // DB_ENV is the first member of libdb's ENV (dbinc/db_int.h: struct __env { DB_ENV *dbenv;).
  DB_ENV* dbenv = env ? *reinterpret_cast<DB_ENV**>(env) : nullptr;
  if (!dbenv || !r::current_env) return real(env, atype, rejectp);
  return r::call_guarded(dbenv, [&] { return real(env, atype, rejectp); });
}
