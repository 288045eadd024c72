// smisk-ipc: the robust replacements of libdb's pthread mutex, condition and rwlock calls.
// SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <pthread.h>
#include <time.h>

#include <cerrno>

#include "robust_broken.hpp"
#include "robust_state.hpp"

namespace smisk::ipc::detail::robust {

/// A mutex operation failed with `rc` (the mutex is not held unless rc is EOWNERDEAD).
inline int lock_failed(pthread_mutex_t* m, int rc) noexcept {
  if (rc == EOWNERDEAD) {
    // The owner died and we hold the mutex, inconsistent. Leave it so: unlocking an
    // inconsistent robust mutex makes it ENOTRECOVERABLE, for us and every later locker.
    count(event_counts.owner_died);
    (void)::pthread_mutex_unlock(m);
  } else if (rc == ENOTRECOVERABLE) {
    count(event_counts.not_recoverable);
  } else if (rc == EDEADLK) {
    count(event_counts.self_deadlocks);
  } else {
    return rc;
  }
  mark_mapping_broken(m);
  return rc;
}

inline timespec slice_deadline() noexcept {
  timespec t{};
  ::clock_gettime(CLOCK_REALTIME, &t);  // the clock of libdb's condition variables
  t.tv_nsec += wait_slice_ns;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_nsec -= 1000000000L;
    ++t.tv_sec;
  }
  return t;
}

inline bool before(const timespec& a, const timespec& b) noexcept {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

inline int wait_failed() noexcept {
  count(event_counts.waits_failed);
  return ENOTRECOVERABLE;
}

/// Whether the environment of the calling thread's library call is known dead: broken in this
/// process, or panicked by another (the one that recovered the home retired it, see
/// retire_regions). Looked at once per wait slice: a latch held by a process that died in an
/// environment the others have already left is never released, and nothing else would end the
/// wait (seen: a worker waiting 14 s, until killed, on a page latch of a retired environment).
inline bool environment_dead() noexcept {
  broken_check_fn check = broken_check.load(std::memory_order_acquire);
  return check && current_env && check(current_env);
}

inline int mutex_lock(pthread_mutex_t* m) noexcept {
  int rc = real_trylock.load(std::memory_order_acquire)(m);
  if (rc == 0) return 0;
  if (rc != EBUSY) return lock_failed(m, rc);
  mutex_timed_fn timed = real_timedlock.load(std::memory_order_acquire);
  for (;;) {
    if (is_broken(m) || environment_dead()) return wait_failed();
    timespec t = slice_deadline();
    rc = timed(m, &t);
    if (rc == 0) return 0;
    if (rc != ETIMEDOUT) return lock_failed(m, rc);
  }
}

inline int mutex_trylock(pthread_mutex_t* m) noexcept {
  int rc = real_trylock.load(std::memory_order_acquire)(m);
  return (rc == 0 || rc == EBUSY) ? rc : lock_failed(m, rc);
}

/// pthread_cond_timedwait in slices; `until` null: for ever (pthread_cond_wait). Returns with
/// the mutex held, as pthread_cond_wait does, except on ENOTRECOVERABLE from glibc.
inline int cond_wait(pthread_cond_t* c, pthread_mutex_t* m, const timespec* until) noexcept {
  cond_timedwait_fn wait = real_cond_timedwait.load(std::memory_order_acquire);
  for (;;) {
    // An error with the mutex held: libdb unlocks it and panics.
    if (is_broken(c) || environment_dead()) return wait_failed();
    timespec t = slice_deadline();
    bool last = until && !before(t, *until);
    int rc = wait(c, m, last ? until : &t);
    if (rc == ETIMEDOUT && !last) continue;  // for libdb, a spurious wake-up
    if (rc == EOWNERDEAD || rc == ENOTRECOVERABLE) {
      // EOWNERDEAD: held, inconsistent; libdb unlocks it (so ENOTRECOVERABLE) and panics.
      count(rc == EOWNERDEAD ? event_counts.owner_died : event_counts.not_recoverable);
      mark_mapping_broken(m);
    }
    return rc;
  }
}

inline int rwlock_lock(pthread_rwlock_t* l, rwlock_fn try_fn, rwlock_timed_fn timed_fn) noexcept {
  int rc = try_fn(l);
  if (rc != EBUSY) return rc;
  for (;;) {
    if (is_broken(l) || environment_dead()) return wait_failed();
    timespec t = slice_deadline();
    rc = timed_fn(l, &t);
    if (rc != ETIMEDOUT) return rc;
  }
}

}  // namespace smisk::ipc::detail::robust

// The replacements written into libdb's GOT: C linkage (libdb is C) under names of our own,
// inline so that every translation unit that includes this header shares one definition.

extern "C" inline int smisk_ipc_robust_mutexattr_setpshared(pthread_mutexattr_t* attr,
                                                            int pshared) noexcept {
  namespace r = smisk::ipc::detail::robust;
  int rc = r::real_setpshared.load(std::memory_order_acquire)(attr, pshared);
  if (rc == 0 && pshared == PTHREAD_PROCESS_SHARED && r::current_env &&
      ::pthread_mutexattr_setrobust(attr, PTHREAD_MUTEX_ROBUST) == 0) {
    (void)::pthread_mutexattr_settype(attr, PTHREAD_MUTEX_ERRORCHECK);
    r::count(r::event_counts.robust_inits);
  }
  return rc;
}

// Outside the library's own libdb calls (current_env null) each of them is the function it
// replaces, untouched.

extern "C" inline int smisk_ipc_robust_mutex_lock(pthread_mutex_t* m) noexcept {
  if (!smisk::ipc::detail::robust::current_env) return ::pthread_mutex_lock(m);
  return smisk::ipc::detail::robust::mutex_lock(m);
}

extern "C" inline int smisk_ipc_robust_mutex_trylock(pthread_mutex_t* m) noexcept {
  namespace r = smisk::ipc::detail::robust;
  if (!r::current_env) return r::real_trylock.load(std::memory_order_acquire)(m);
  return r::mutex_trylock(m);
}

extern "C" inline int smisk_ipc_robust_mutex_destroy(pthread_mutex_t* m) noexcept {
  namespace r = smisk::ipc::detail::robust;
  const int rc = r::real_destroy.load(std::memory_order_acquire)(m);
  if (!r::current_env) return rc;
  if (rc != 0) r::count(r::event_counts.destroy_errors);
  return 0;
}

extern "C" inline int smisk_ipc_robust_cond_wait(pthread_cond_t* c, pthread_mutex_t* m) noexcept {
  if (!smisk::ipc::detail::robust::current_env) return ::pthread_cond_wait(c, m);
  return smisk::ipc::detail::robust::cond_wait(c, m, nullptr);
}

extern "C" inline int smisk_ipc_robust_cond_timedwait(pthread_cond_t* c, pthread_mutex_t* m,
                                                      const struct timespec* t) noexcept {
  namespace r = smisk::ipc::detail::robust;
  if (!r::current_env) return r::real_cond_timedwait.load(std::memory_order_acquire)(c, m, t);
  return r::cond_wait(c, m, t);
}

extern "C" inline int smisk_ipc_robust_cond_destroy(pthread_cond_t* c) noexcept {
  namespace r = smisk::ipc::detail::robust;
  if (!r::current_env) return ::pthread_cond_destroy(c);
  r::count(r::event_counts.cond_destroys);
  return 0;
}

extern "C" inline int smisk_ipc_robust_rwlock_rdlock(pthread_rwlock_t* l) noexcept {
  namespace r = smisk::ipc::detail::robust;
  if (!r::current_env) return ::pthread_rwlock_rdlock(l);
  return r::rwlock_lock(l, r::real_tryrdlock.load(std::memory_order_acquire),
                        r::real_timedrdlock.load(std::memory_order_acquire));
}

extern "C" inline int smisk_ipc_robust_rwlock_wrlock(pthread_rwlock_t* l) noexcept {
  namespace r = smisk::ipc::detail::robust;
  if (!r::current_env) return ::pthread_rwlock_wrlock(l);
  return r::rwlock_lock(l, r::real_trywrlock.load(std::memory_order_acquire),
                        r::real_timedwrlock.load(std::memory_order_acquire));
}
