// smisk-ipc: the robust-mutex patch's process state: the functions it replaces, its counters, whose
// call it is. SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <db.h>
#include <pthread.h>
#include <sys/mman.h>
#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "posix.hpp"
#include "scoped_set.hpp"

namespace smisk::ipc::detail::robust {

using setpshared_fn = int (*)(pthread_mutexattr_t*, int);
using mutex_fn = int (*)(pthread_mutex_t*);
using mutex_timed_fn = int (*)(pthread_mutex_t*, const struct timespec*);
using cond_timedwait_fn = int (*)(pthread_cond_t*, pthread_mutex_t*, const struct timespec*);
using rwlock_fn = int (*)(pthread_rwlock_t*);
using rwlock_timed_fn = int (*)(pthread_rwlock_t*, const struct timespec*);
using munmap_fn = int (*)(void*, std::size_t);
using lock_detect_fn = int (*)(ENV*, u_int32_t, int*);
using os_yield_fn = void (*)(ENV*, u_long, u_long);
/// Set by the library: whether the environment (a DB_ENV) is known broken in this process.
using broken_check_fn = bool (*)(DB_ENV*) noexcept;

/// What the replacements call: the function libdb's slot pointed to when it was already
/// resolved, else (lazy binding: the slot still points to libdb's own PLT stub, which would
/// resolve the symbol again and overwrite the slot) this program's binding of the function.
inline std::atomic<setpshared_fn> real_setpshared{&::pthread_mutexattr_setpshared};
inline std::atomic<mutex_fn> real_trylock{&::pthread_mutex_trylock};
inline std::atomic<mutex_timed_fn> real_timedlock{&::pthread_mutex_timedlock};
inline std::atomic<mutex_fn> real_destroy{&::pthread_mutex_destroy};
inline std::atomic<cond_timedwait_fn> real_cond_timedwait{&::pthread_cond_timedwait};
inline std::atomic<rwlock_fn> real_tryrdlock{&::pthread_rwlock_tryrdlock};
inline std::atomic<rwlock_fn> real_trywrlock{&::pthread_rwlock_trywrlock};
inline std::atomic<rwlock_timed_fn> real_timedrdlock{&::pthread_rwlock_timedrdlock};
inline std::atomic<rwlock_timed_fn> real_timedwrlock{&::pthread_rwlock_timedwrlock};
inline std::atomic<munmap_fn> real_munmap{&::munmap};
inline std::atomic<lock_detect_fn> real_lock_detect{nullptr};  // libdb's own, found with dlsym
inline std::atomic<os_yield_fn> real_os_yield{nullptr};        // likewise
inline std::atomic<broken_check_fn> broken_check{nullptr};

/// Counters, per process.
struct counters {
  std::atomic<std::uint64_t> owner_died{0};       // EOWNERDEAD met by a libdb call
  std::atomic<std::uint64_t> not_recoverable{0};  // ENOTRECOVERABLE met (after an EOWNERDEAD)
  std::atomic<std::uint64_t> self_deadlocks{0};   // EDEADLK: libdb relocked a mutex it held
  std::atomic<std::uint64_t> waits_failed{0};     // waits ended because their memory is broken
  std::atomic<std::uint64_t> robust_inits{0};     // mutex attributes made robust
  std::atomic<std::uint64_t> destroy_errors{0};   // pthread_mutex_destroy failures hidden
  std::atomic<std::uint64_t> cond_destroys{0};    // pthread_cond_destroy calls not waited for
  std::atomic<std::uint64_t> libdb_faults{0};     // guarded libdb calls that ended by a fault
};
inline counters event_counts;

inline void count(std::atomic<std::uint64_t>& c) noexcept {
  c.fetch_add(1, std::memory_order_relaxed);
}

// ---- whose call is it ---------------------------------------------------------------------------
//
// The replacements act only inside the library's own libdb calls (call_guarded and
// library_call set current_env for the calling thread): a DB_ENV that the application opens
// and uses itself in the same process gets glibc's functions untouched, exactly as without
// smisk-ipc. Everything libdb does on the library's behalf runs inside such a call, so every
// mutex of the library's environments is made robust and every descriptor libdb opens for
// them is known.

/// The library's DB_ENV the calling thread is inside a libdb call for, or null.
inline thread_local DB_ENV* current_env = nullptr;

/// Marks the calling thread as inside a libdb call for `env` (nests).
class library_call : scoped_set<DB_ENV*> {
 public:
  explicit library_call(DB_ENV* env) noexcept : scoped_set(current_env, env) {}
};

}  // namespace smisk::ipc::detail::robust
