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
//                                 under a fault guard: see "the deadlock detector" below.
//
// "Broken" memory: the mapping (a region file, __db.00N) that holds a mutex found EOWNERDEAD or
// ENOTRECOVERABLE, or that libdb relocked while holding it (EDEADLK: after a failure its error
// paths return with mutexes held, its MUTEX_LOCK macro returns DB_RUNRECOVERY at once, and
// lock them again during the cleanup), plus whatever abort_waits(home) declares; the library
// calls it when failchk reports DB_RUNRECOVERY, since the panic may have come from another
// process. A wait in broken memory fails at once (and one already blocked, within 100 ms); libdb
// then returns DB_RUNRECOVERY to the caller, which can leave the environment and recover it.
//
// Limits:
//  * Only mutexes initialised after install() are robust: call it before the first DB_ENV is
//    created (an environment's mutexes are initialised by the process that creates its regions),
//    and every process that shares an environment must have called it, because the creator's
//    attributes decide for everyone. A child of fork() inherits the patched GOT.
//  * Shared latches (pthread_rwlock_t, libdb's buffer-page latches) cannot be robust: a process
//    killed while holding one blocks writers of that page until something declares the
//    environment broken (failchk's "Thread died in Berkeley DB library", then abort_waits()).
//  * "Self-blocking" mutexes (logical locks, group-commit waits) are held as a flag, not as a
//    pthread mutex; a process that dies holding one is failchk's business, not this one's.
//  * Only libdb's calls are patched (not those of other libraries or of the program); a copy of
//    libdb loaded later (dlopen of another version) is not patched; DB_SYSTEM_MEM regions
//    (shmat/shmdt) are not tracked by abort_waits(home).
//  * A process without the patch that meets EOWNERDEAD panics but keeps the mutex locked for
//    ever; the waits of patched processes end only once something marks the memory broken.
//  * Closing a broken DB_ENV unmaps its regions: only once no thread is inside it any more.
//  * The patch is per process and permanent.
//
// Use (what the library is expected to do):
//   1. install() in every process, before its first db_env_create() (e.g. first thing in the
//      environment's constructor; it is idempotent and cheap after the first call);
//   2. the per-process watchdog that runs DB_ENV->failchk: on DB_RUNRECOVERY, call
//      abort_waits(home), and again at every interval while the broken handle is open;
//   3. calls then return DB_RUNRECOVERY (within ~100 ms for blocked ones); once no thread is
//      inside the handle, close it and reopen with DB_RECOVER when no other process uses the home.
//
// API: install(), status(), owner_died_count(), abort_waits(home); counters in event_counts.
#pragma once

#include <db.h>
#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <linux/futex.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "posix.hpp"

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
class library_call {
 public:
  explicit library_call(DB_ENV* env) noexcept : previous_(current_env) { current_env = env; }
  ~library_call() { current_env = previous_; }
  library_call(const library_call&) = delete;
  library_call& operator=(const library_call&) = delete;

 private:
  DB_ENV* previous_;
};

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

// ---- broken memory ---------------------------------------------------------------------------

inline constexpr long wait_slice_ns = 100L * 1000 * 1000;

struct broken_range {
  std::uintptr_t lo = 0, hi = 0;  // hi == 0: unused
};
/// fork() must not leave it locked in the child (a child marks and checks broken memory too).
inline fork_safe_mutex broken_mutex;
inline broken_range broken_ranges[64];
inline unsigned broken_next = 0;
inline std::atomic<unsigned> broken_count{0};  // lets the common case skip the mutex

inline void mark_broken(std::uintptr_t lo, std::uintptr_t hi) noexcept {
  std::lock_guard<fork_safe_mutex> lock(broken_mutex);
  constexpr unsigned n = sizeof broken_ranges / sizeof broken_ranges[0];
  for (const broken_range& r : broken_ranges)
    if (r.hi != 0 && r.lo <= lo && hi <= r.hi) return;
  broken_range* slot = nullptr;
  for (broken_range& r : broken_ranges)
    if (r.hi == 0) {
      slot = &r;
      break;
    }
  if (!slot)
    slot = &broken_ranges[broken_next++ % n];  // full: forget the oldest
  else
    broken_count.fetch_add(1, std::memory_order_release);
  *slot = {lo, hi};
}

/// libdb unmapped [lo, hi): whatever is mapped there later is not broken.
inline void forget_broken(std::uintptr_t lo, std::uintptr_t hi) noexcept {
  if (broken_count.load(std::memory_order_acquire) == 0) return;
  std::lock_guard<fork_safe_mutex> lock(broken_mutex);
  for (broken_range& r : broken_ranges)
    if (r.hi != 0 && r.lo < hi && lo < r.hi) {
      r = {};
      broken_count.fetch_sub(1, std::memory_order_release);
    }
}

inline bool is_broken(const void* object) noexcept {
  if (broken_count.load(std::memory_order_acquire) == 0) return false;
  auto a = reinterpret_cast<std::uintptr_t>(object);
  std::lock_guard<fork_safe_mutex> lock(broken_mutex);
  for (const broken_range& r : broken_ranges)
    if (r.hi != 0 && a >= r.lo && a < r.hi) return true;
  return false;
}

// ---- this thread's robust list ----------------------------------------------------------------
//
// glibc links every robust mutex a thread holds into that thread's robust list (the kernel walks
// it when the thread dies, which is what makes EOWNERDEAD possible). On an error (a panic, a
// mutex that failed) libdb often returns with mutexes of the broken environment still held; once
// the environment is closed and its regions unmapped, the list points into unmapped memory, and
// the next robust-mutex operation of the thread (in any environment) follows it: SIGSEGV. So a
// thread drops from its list what it holds in broken memory before that memory goes away; the
// mutexes stay locked (the environment is thrown away with them). The layout is glibc's on
// x86-64 and AArch64: pthread_mutex_t's __list is {__prev, __next}, the list links the __next
// fields, the head's own fake entry is struct robust_list_head::list.

/// Unlinks from the calling thread's robust list every mutex whose address satisfies `drop`.
/// @returns how many it unlinked.
template <class Drop>
inline int forget_holds(Drop&& drop) noexcept {
  struct robust_list_head* head = nullptr;
  std::size_t len = 0;
  if (::syscall(SYS_get_robust_list, 0, &head, &len) != 0 || !head) return 0;
  constexpr std::uintptr_t flag = 1;  // glibc marks PI mutexes in the low bit
  const auto end = reinterpret_cast<std::uintptr_t>(&head->list);
  int dropped = 0;
  // `prev`: the __next field (or the head's list field) that points to `cur`.
  auto** prev = reinterpret_cast<void**>(&head->list.next);
  std::uintptr_t cur = reinterpret_cast<std::uintptr_t>(*prev) & ~flag;
  for (int guard = 0; cur != end && cur != 0 && guard < 4096; ++guard) {
    auto** next_field = reinterpret_cast<void**>(cur);  // the entry's __next
    const std::uintptr_t next = reinterpret_cast<std::uintptr_t>(*next_field) & ~flag;
    if (next == 0) {
      // The entry's memory was wiped under the thread (a fault in libdb then ended the call):
      // nothing after it can be reached; end the list before it.
      *prev = reinterpret_cast<void*>(end);
      ++dropped;
      break;
    }
    if (drop(reinterpret_cast<const void*>(cur))) {
      // glibc's DEQUEUE_MUTEX: next->__prev = the predecessor; predecessor->__next = next.
      *(reinterpret_cast<void**>(next) - 1) = reinterpret_cast<void*>(prev);
      *prev = *next_field;
      ++dropped;
    } else {
      prev = next_field;
    }
    cur = next;
  }
  return dropped;
}

/// Unlinks from the calling thread's robust list the mutexes it holds in broken memory.
inline int forget_broken_holds() noexcept {
  if (broken_count.load(std::memory_order_acquire) == 0) return 0;
  return forget_holds([](const void* m) { return is_broken(m); });
}

/// Calls f(lo, hi, path) for each line of /proc/self/maps, without allocating.
template <class F>
inline void for_each_mapping(F&& f) noexcept {
  int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[8192];
  std::size_t have = 0;
  bool skipping = false;  // inside a line longer than buf
  for (;;) {
    ssize_t n = ::read(fd, buf + have, sizeof buf - 1 - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
    buf[have] = '\0';
    char* line = buf;
    for (char* nl; (nl = std::strchr(line, '\n')) != nullptr; line = nl + 1) {
      *nl = '\0';
      if (skipping) {
        skipping = false;
        continue;
      }
      char* end = nullptr;
      std::uintptr_t lo = std::strtoull(line, &end, 16);
      if (*end != '-') continue;
      std::uintptr_t hi = std::strtoull(end + 1, &end, 16);
      const char* path = end;
      for (int field = 0; field < 4 && *path; ++field) {  // perms, offset, device, inode
        while (*path == ' ') ++path;
        while (*path && *path != ' ') ++path;
      }
      while (*path == ' ') ++path;
      f(lo, hi, path);
    }
    have = static_cast<std::size_t>(buf + have - line);
    std::memmove(buf, line, have);
    if (have == sizeof buf - 1) {
      have = 0;
      skipping = true;
    }
  }
  ::close(fd);
}

/// Marks broken the mapping that holds `object` (a libdb mutex); just the object if /proc is
/// not there to say.
inline void mark_mapping_broken(const void* object) noexcept {
  auto a = reinterpret_cast<std::uintptr_t>(object);
  std::uintptr_t found_lo = a, found_hi = a + sizeof(pthread_mutex_t);
  for_each_mapping([&](std::uintptr_t lo, std::uintptr_t hi, const char*) {
    if (a >= lo && a < hi) found_lo = lo, found_hi = hi;
  });
  mark_broken(found_lo, found_hi);
}

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

inline int mutex_lock(pthread_mutex_t* m) noexcept {
  int rc = real_trylock.load(std::memory_order_acquire)(m);
  if (rc == 0) return 0;
  if (rc != EBUSY) return lock_failed(m, rc);
  mutex_timed_fn timed = real_timedlock.load(std::memory_order_acquire);
  for (;;) {
    if (is_broken(m)) return wait_failed();
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
    if (is_broken(c)) return wait_failed();
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
    if (is_broken(l)) return wait_failed();
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

namespace smisk::ipc::detail::robust {
/// Unmaps memory of the library's environments: nothing of this thread's robust list may point
/// into memory that goes away, and broken marks there are forgotten.
inline int unmap_region(void* addr, std::size_t len) noexcept {
  const auto lo = reinterpret_cast<std::uintptr_t>(addr), hi = lo + len;
  forget_holds([&](const void* m) {
    const auto a = reinterpret_cast<std::uintptr_t>(m);
    return a >= lo && a < hi;
  });
  int rc = real_munmap.load(std::memory_order_acquire)(addr, len);
  if (rc == 0) forget_broken(lo, hi);
  return rc;
}
}  // namespace smisk::ipc::detail::robust

extern "C" inline int smisk_ipc_robust_munmap(void* addr, std::size_t len) noexcept {
  namespace r = smisk::ipc::detail::robust;
  if (!r::current_env) return r::real_munmap.load(std::memory_order_acquire)(addr, len);
  return r::unmap_region(addr, len);
}

extern "C" inline int smisk_ipc_robust_open(const char* path, int flags, ...) noexcept {
  mode_t mode = 0;
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list args;
    va_start(args, flags);
    mode = static_cast<mode_t>(va_arg(args, int));
    va_end(args);
  }
  const int fd = ::open(path, flags, mode);
  smisk::ipc::detail::robust::note_open(fd);
  return fd;
}

namespace smisk::ipc::detail::robust {
/// Whether libdb, listing a home inside a library call, sees `name`. It takes every name that
/// starts with "__db" for a region file (and removes them all when it recovers) and every name
/// that starts with "log." for a log file (and parses the rest as its number): a user's
/// "__db.notes" would be deleted and a user's "log.1" taken for log file 1. Only the exact names
/// are shown: "__db." and three digits, "log." and ten digits.
inline bool libdb_may_see(const char* name) noexcept {
  auto exact = [name](const char* prefix, std::size_t digits) {
    const std::size_t n = std::strlen(prefix);
    if (std::strlen(name) != n + digits) return false;
    for (std::size_t i = n; i < n + digits; ++i)
      if (name[i] < '0' || name[i] > '9') return false;
    return true;
  };
  if (std::strncmp(name, "__db", 4) == 0)
    return std::strncmp(name, "__db.", 5) == 0 && exact("__db.", 3);
  if (std::strncmp(name, "log.", 4) == 0) return exact("log.", 10);
  return true;
}
}  // namespace smisk::ipc::detail::robust

extern "C" inline struct dirent* smisk_ipc_robust_readdir(DIR* dir) noexcept {
  namespace r = smisk::ipc::detail::robust;
  for (;;) {
    struct dirent* e = ::readdir(dir);
    if (!e || !r::current_env || r::libdb_may_see(e->d_name)) return e;
  }
}

extern "C" inline int smisk_ipc_robust_close(int fd) noexcept {
  smisk::ipc::detail::robust::note_close(fd);
  return ::close(fd);
}

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

namespace smisk::ipc::detail::robust {

// ---- finding and patching libdb's GOT --------------------------------------------------------

#if defined(__x86_64__)
inline constexpr bool arch_supported = true;
inline constexpr unsigned reloc_jump_slot = R_X86_64_JUMP_SLOT;
inline constexpr unsigned reloc_glob_dat = R_X86_64_GLOB_DAT;
#elif defined(__aarch64__)
inline constexpr bool arch_supported = true;
inline constexpr unsigned reloc_jump_slot = R_AARCH64_JUMP_SLOT;
inline constexpr unsigned reloc_glob_dat = R_AARCH64_GLOB_DAT;
#else
inline constexpr bool arch_supported = false;  // install() says "not installed"
inline constexpr unsigned reloc_jump_slot = ~0u;
inline constexpr unsigned reloc_glob_dat = ~0u;
#endif
// Both supported targets are LP64 and use RELA relocations.
inline constexpr unsigned reloc_type(std::uint64_t info) noexcept {
  return static_cast<unsigned>(info & 0xffffffffu);
}
inline constexpr std::size_t reloc_symbol(std::uint64_t info) noexcept {
  return static_cast<std::size_t>(info >> 32);
}

template <class F>
inline std::uintptr_t address_of(F* f) noexcept {
  return reinterpret_cast<std::uintptr_t>(f);
}

/// One loaded object, as dl_iterate_phdr describes it.
struct elf_object {
  ElfW(Addr) base = 0;
  const ElfW(Phdr) * phdr = nullptr;
  ElfW(Half) phnum = 0;
  const char* name = nullptr;
  bool main_program = false;

  [[nodiscard]] bool contains(std::uintptr_t a, std::size_t len = 1) const noexcept {
    for (ElfW(Half) i = 0; i < phnum; ++i) {
      if (phdr[i].p_type != PT_LOAD) continue;
      std::uintptr_t lo = base + phdr[i].p_vaddr, hi = lo + phdr[i].p_memsz;
      if (a >= lo && a < hi && len <= hi - a) return true;
    }
    return false;
  }
  [[nodiscard]] const ElfW(Phdr) * segment(ElfW(Word) type) const noexcept {
    for (ElfW(Half) i = 0; i < phnum; ++i)
      if (phdr[i].p_type == type) return &phdr[i];
    return nullptr;
  }
};

/// What libdb's dynamic section says, with every address checked to lie in libdb.
struct dynamic_info {
  const ElfW(Sym) * symtab = nullptr;
  const char* strtab = nullptr;
  std::size_t strsz = 0;
  std::size_t nsyms = 0;  // from DT_HASH or DT_GNU_HASH; 0 if unknown
  const ElfW(Rela) * jmprel = nullptr;
  std::size_t jmprel_count = 0;
  const ElfW(Rela) * rela = nullptr;
  std::size_t rela_count = 0;
};

/// glibc relocates most d_ptr entries in place (to absolute addresses); other loaders leave
/// them as offsets from the load base. Accept whichever lies inside the object.
inline std::uintptr_t dyn_address(const elf_object& o, ElfW(Addr) v, std::size_t len) noexcept {
  if (v >= o.base && o.contains(v, len)) return v;
  if (o.contains(o.base + v, len)) return o.base + v;
  return 0;
}

inline std::size_t gnu_hash_symbol_count(const elf_object& o, const std::uint32_t* h) noexcept {
  if (!o.contains(address_of(h), 16)) return 0;
  std::uint32_t nbuckets = h[0], symoffset = h[1], bloom_size = h[2];
  auto bloom = reinterpret_cast<const ElfW(Addr)*>(h + 4);
  auto buckets = reinterpret_cast<const std::uint32_t*>(bloom + bloom_size);
  const std::uint32_t* chain = buckets + nbuckets;
  if (!o.contains(address_of(buckets), std::size_t{nbuckets} * 4)) return 0;
  std::uint32_t last = 0;
  for (std::uint32_t b = 0; b < nbuckets; ++b)
    if (buckets[b] > last) last = buckets[b];
  if (last < symoffset) return symoffset;
  for (;;) {
    const std::uint32_t* c = chain + (last - symoffset);
    if (!o.contains(address_of(c), 4)) return 0;
    if (*c & 1u) return std::size_t{last} + 1;
    ++last;
  }
}

inline bool read_dynamic(const elf_object& o, dynamic_info& d) noexcept {
  const ElfW(Phdr)* dyn_ph = o.segment(PT_DYNAMIC);
  if (!dyn_ph) return false;
  auto dyn = reinterpret_cast<const ElfW(Dyn)*>(o.base + dyn_ph->p_vaddr);
  ElfW(Addr) symtab = 0, strtab = 0, jmprel = 0, rela = 0, hash = 0, gnu_hash = 0;
  std::size_t pltrelsz = 0, relasz = 0, relaent = sizeof(ElfW(Rela));
  long pltrel = DT_RELA;
  std::size_t n = dyn_ph->p_memsz / sizeof(ElfW(Dyn));
  for (std::size_t i = 0; i < n && dyn[i].d_tag != DT_NULL; ++i) {
    switch (dyn[i].d_tag) {
      case DT_SYMTAB:
        symtab = dyn[i].d_un.d_ptr;
        break;
      case DT_STRTAB:
        strtab = dyn[i].d_un.d_ptr;
        break;
      case DT_STRSZ:
        d.strsz = dyn[i].d_un.d_val;
        break;
      case DT_JMPREL:
        jmprel = dyn[i].d_un.d_ptr;
        break;
      case DT_PLTRELSZ:
        pltrelsz = dyn[i].d_un.d_val;
        break;
      case DT_PLTREL:
        pltrel = static_cast<long>(dyn[i].d_un.d_val);
        break;
      case DT_RELA:
        rela = dyn[i].d_un.d_ptr;
        break;
      case DT_RELASZ:
        relasz = dyn[i].d_un.d_val;
        break;
      case DT_RELAENT:
        relaent = dyn[i].d_un.d_val;
        break;
      case DT_HASH:
        hash = dyn[i].d_un.d_ptr;
        break;
      case DT_GNU_HASH:
        gnu_hash = dyn[i].d_un.d_ptr;
        break;
      default:
        break;
    }
  }
  if (pltrel != DT_RELA || relaent != sizeof(ElfW(Rela)) || !symtab || !strtab || !d.strsz)
    return false;
  d.strtab = reinterpret_cast<const char*>(dyn_address(o, strtab, d.strsz));
  d.symtab = reinterpret_cast<const ElfW(Sym)*>(dyn_address(o, symtab, sizeof(ElfW(Sym))));
  if (!d.strtab || !d.symtab) return false;
  if (jmprel && pltrelsz) {
    d.jmprel = reinterpret_cast<const ElfW(Rela)*>(dyn_address(o, jmprel, pltrelsz));
    if (!d.jmprel) return false;
    d.jmprel_count = pltrelsz / sizeof(ElfW(Rela));
  }
  if (rela && relasz) {
    d.rela = reinterpret_cast<const ElfW(Rela)*>(dyn_address(o, rela, relasz));
    if (!d.rela) return false;
    d.rela_count = relasz / sizeof(ElfW(Rela));
  }
  if (hash) {
    auto h = reinterpret_cast<const std::uint32_t*>(dyn_address(o, hash, 8));
    if (h) d.nsyms = h[1];  // nchain
  } else if (gnu_hash) {
    auto h = reinterpret_cast<const std::uint32_t*>(dyn_address(o, gnu_hash, 16));
    if (h) d.nsyms = gnu_hash_symbol_count(o, h);
  }
  return true;
}

inline const char* symbol_name(const dynamic_info& d, std::size_t index) noexcept {
  if (d.nsyms && index >= d.nsyms) return nullptr;
  std::size_t off = d.symtab[index].st_name;
  if (off >= d.strsz) return nullptr;
  return d.strtab + off;
}

/// Whether the object defines (not merely uses) the symbol `name`.
inline bool defines(const elf_object& o, const char* name) noexcept {
  dynamic_info d;
  if (!read_dynamic(o, d) || !d.nsyms) return false;
  if (!o.contains(address_of(d.symtab), d.nsyms * sizeof(ElfW(Sym)))) return false;
  for (std::size_t i = 1; i < d.nsyms; ++i) {
    const char* s = symbol_name(d, i);
    if (s && d.symtab[i].st_shndx != SHN_UNDEF && std::strcmp(s, name) == 0) return true;
  }
  return false;
}

struct find_state {
  std::uintptr_t probe = 0;  // an address inside libdb, if known
  int index = 0;
  int found = 0;          // objects defining db_env_create
  elf_object by_address;  // the one containing `probe`
  elf_object by_symbol;   // the (last) one defining db_env_create
  bool main_defines = false;
};

inline int find_callback(struct dl_phdr_info* info, std::size_t, void* data) noexcept {
  auto* st = static_cast<find_state*>(data);
  elf_object o;
  o.base = info->dlpi_addr;
  o.phdr = info->dlpi_phdr;
  o.phnum = info->dlpi_phnum;
  o.name = info->dlpi_name ? info->dlpi_name : "";
  o.main_program = st->index++ == 0 || o.name[0] == '\0';
  if (st->probe && o.contains(st->probe)) st->by_address = o;
  if (o.main_program) {
    if (defines(o, "db_env_create")) st->main_defines = true;
  } else if (defines(o, "db_env_create")) {
    st->by_symbol = o;
    ++st->found;
  }
  return 0;
}

/// A GOT slot to rewrite.
struct slot {
  const char* symbol;
  std::uintptr_t replacement;
  std::uintptr_t* where[4];  // JUMP_SLOT and GLOB_DAT entries for the symbol
  int count;
  std::uintptr_t previous[4];
  bool required;
};

inline std::size_t page_size() noexcept {
  long p = ::sysconf(_SC_PAGESIZE);
  return p > 0 ? static_cast<std::size_t>(p) : 4096;
}

/// Writes `value` into the slot at `where` of object `o`, making the page writable for the
/// write and read-only again afterwards if it is part of PT_GNU_RELRO.
inline bool write_slot(const elf_object& o, std::uintptr_t* where, std::uintptr_t value) noexcept {
  std::uintptr_t a = address_of(where);
  std::uintptr_t ps = page_size();
  std::uintptr_t page = a & ~(ps - 1);
  bool read_only_after = false;
  if (const ElfW(Phdr)* relro = o.segment(PT_GNU_RELRO)) {
    std::uintptr_t lo = (o.base + relro->p_vaddr) & ~(ps - 1);
    std::uintptr_t hi = (o.base + relro->p_vaddr + relro->p_memsz) & ~(ps - 1);  // as ld.so
    read_only_after = page >= lo && page < hi;
  }
  bool writable_segment = false;
  for (ElfW(Half) i = 0; i < o.phnum; ++i) {
    const ElfW(Phdr)& p = o.phdr[i];
    if (p.p_type == PT_LOAD && a >= o.base + p.p_vaddr &&
        a + sizeof value <= o.base + p.p_vaddr + p.p_memsz)
      writable_segment = (p.p_flags & PF_W) != 0;
  }
  if (!writable_segment) return false;  // a GOT is never in a read-only or text segment
  if (::mprotect(reinterpret_cast<void*>(page), ps, PROT_READ | PROT_WRITE) != 0) return false;
  __atomic_store_n(where, value, __ATOMIC_RELEASE);
  if (read_only_after) (void)::mprotect(reinterpret_cast<void*>(page), ps, PROT_READ);
  return true;
}

/// Whether a resolved slot already points to one of our replacements (installed by another copy
/// of this header, e.g. in another shared object with hidden visibility).
inline bool ours(std::uintptr_t target) noexcept {
  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(target), &info) == 0 || !info.dli_sname) return false;
  return std::strncmp(info.dli_sname, "smisk_ipc_robust_", 17) == 0;
}

template <class F>
inline void adopt(std::atomic<F>& real, const elf_object& libdb, std::uintptr_t previous) noexcept {
  // A lazily bound slot still points into libdb's PLT: keep this program's binding then.
  if (previous && !libdb.contains(previous))
    real.store(reinterpret_cast<F>(previous), std::memory_order_release);
}

inline bool do_install(char* message, std::size_t size) noexcept {
  auto fail = [&](const char* why, const char* detail = "") {
    std::snprintf(message, size, "not installed: %s%s", why, detail);
    return false;
  };
  if (!arch_supported) return fail("unsupported architecture (x86-64 and AArch64 only)");

  // libdb: the object that &db_env_create points into (dladdr), else (a non-PIE program, where
  // that is a PLT entry of the program) the one shared object that defines db_env_create.
  find_state st;
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(address_of(&::db_env_create)), &info) != 0)
    st.probe = address_of(&::db_env_create);
  ::dl_iterate_phdr(&find_callback, &st);
  elf_object libdb;
  if (st.probe && st.by_address.phdr && !st.by_address.main_program)
    libdb = st.by_address;
  else if (st.main_defines)
    return fail("Berkeley DB is linked statically into the program");
  else if (st.found == 1)
    libdb = st.by_symbol;
  else
    return fail(st.found ? "more than one loaded object defines db_env_create"
                         : "no loaded shared object defines db_env_create");

  dynamic_info d;
  if (!read_dynamic(libdb, d)) return fail("cannot read the dynamic section of ", libdb.name);

  slot slots[] = {
      {"pthread_mutex_lock", address_of(&::smisk_ipc_robust_mutex_lock), {}, 0, {}, true},
      {"pthread_mutex_trylock", address_of(&::smisk_ipc_robust_mutex_trylock), {}, 0, {}, false},
      {"pthread_mutex_destroy", address_of(&::smisk_ipc_robust_mutex_destroy), {}, 0, {}, false},
      {"pthread_cond_wait", address_of(&::smisk_ipc_robust_cond_wait), {}, 0, {}, false},
      {"pthread_cond_timedwait", address_of(&::smisk_ipc_robust_cond_timedwait), {}, 0, {}, false},
      {"pthread_cond_destroy", address_of(&::smisk_ipc_robust_cond_destroy), {}, 0, {}, false},
      {"pthread_rwlock_rdlock", address_of(&::smisk_ipc_robust_rwlock_rdlock), {}, 0, {}, false},
      {"pthread_rwlock_wrlock", address_of(&::smisk_ipc_robust_rwlock_wrlock), {}, 0, {}, false},
      {"munmap", address_of(&::smisk_ipc_robust_munmap), {}, 0, {}, false},
      {"open", address_of(&::smisk_ipc_robust_open), {}, 0, {}, false},
      {"close", address_of(&::smisk_ipc_robust_close), {}, 0, {}, false},
      {"readdir", address_of(&::smisk_ipc_robust_readdir), {}, 0, {}, false},
      {"__lock_detect", address_of(&::smisk_ipc_robust_lock_detect), {}, 0, {}, false},
      {"__os_yield", address_of(&::smisk_ipc_robust_os_yield), {}, 0, {}, false},
      // Last: mutexes become robust only once the functions above handle what that brings.
      {"pthread_mutexattr_setpshared",
       address_of(&::smisk_ipc_robust_mutexattr_setpshared),
       {},
       0,
       {},
       true},
  };
  constexpr int nslots = static_cast<int>(sizeof slots / sizeof slots[0]);

  auto scan = [&](const ElfW(Rela) * rel, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      unsigned type = reloc_type(rel[i].r_info);
      if (type != reloc_jump_slot && type != reloc_glob_dat) continue;
      const char* name = symbol_name(d, reloc_symbol(rel[i].r_info));
      if (!name) continue;
      for (slot& s : slots) {
        if (std::strcmp(name, s.symbol) != 0) continue;
        std::uintptr_t where = libdb.base + rel[i].r_offset;
        if (s.count >= 0 && s.count < 4 && libdb.contains(where, sizeof(std::uintptr_t)) &&
            where % sizeof(std::uintptr_t) == 0)
          s.where[s.count++] = reinterpret_cast<std::uintptr_t*>(where);
        else
          s.count = -1;  // unexpected: refuse
      }
    }
  };
  if (d.jmprel) scan(d.jmprel, d.jmprel_count);
  if (d.rela) scan(d.rela, d.rela_count);
  for (slot& s : slots) {
    if (s.count < 0) return fail("unexpected relocations for ", s.symbol);
    if (s.required && s.count == 0) return fail("libdb does not call ", s.symbol);
  }

  bool all_ours = true;
  for (slot& s : slots)
    for (int k = 0; k < s.count; ++k) {
      s.previous[k] = __atomic_load_n(s.where[k], __ATOMIC_ACQUIRE);
      if (!ours(s.previous[k])) all_ours = false;
    }
  if (all_ours) {
    std::snprintf(message, size, "installed (by another copy of smisk-ipc in this process) in %s",
                  libdb.name);
    return true;
  }

  for (slot& s : slots) {
    if (s.count == 0) continue;
    std::uintptr_t prev = s.previous[0];
    if (std::strcmp(s.symbol, "pthread_mutex_trylock") == 0)
      adopt(real_trylock, libdb, prev);
    else if (std::strcmp(s.symbol, "pthread_mutex_destroy") == 0)
      adopt(real_destroy, libdb, prev);
    else if (std::strcmp(s.symbol, "pthread_cond_timedwait") == 0)
      adopt(real_cond_timedwait, libdb, prev);
    else if (std::strcmp(s.symbol, "munmap") == 0)
      adopt(real_munmap, libdb, prev);
    else if (std::strcmp(s.symbol, "pthread_mutexattr_setpshared") == 0)
      adopt(real_setpshared, libdb, prev);
  }

  // The detector's wrapper calls libdb's own __lock_detect (its lazily bound slot may still
  // point into libdb's PLT, whose resolver would overwrite the patch), and needs the handler.
  for (slot& s : slots) {
    const bool detect = std::strcmp(s.symbol, "__lock_detect") == 0;
    const bool yield = std::strcmp(s.symbol, "__os_yield") == 0;
    if ((!detect && !yield) || s.count == 0) continue;
    void* handle = ::dlopen(libdb.name, RTLD_NOW | RTLD_NOLOAD);
    void* real = handle ? ::dlsym(handle, s.symbol) : nullptr;
    if (handle) ::dlclose(handle);
    if (!real || !libdb.contains(address_of(real)) || !install_fault_handler()) {
      s.count = 0;  // leave libdb's own
    } else if (detect) {
      real_lock_detect.store(reinterpret_cast<lock_detect_fn>(real), std::memory_order_release);
    } else {
      real_os_yield.store(reinterpret_cast<os_yield_fn>(real), std::memory_order_release);
    }
  }

  int patched = 0;
  for (int i = 0; i < nslots; ++i) {
    for (int k = 0; k < slots[i].count; ++k) {
      if (write_slot(libdb, slots[i].where[k], slots[i].replacement)) {
        ++patched;
        continue;
      }
      for (int j = i; j >= 0; --j)  // undo, newest first: libdb is left as it was
        for (int m = (j == i ? k : slots[j].count) - 1; m >= 0; --m)
          (void)write_slot(libdb, slots[j].where[m], slots[j].previous[m]);
      return fail("cannot write libdb's GOT (mprotect failed) for ", slots[i].symbol);
    }
  }
  std::snprintf(message, size,
                "installed: %d GOT slots of %s patched; the process-shared mutexes it creates "
                "from now on are robust",
                patched, libdb.name);
  return true;
}

inline char status_message[512] = "not installed: install() was not called";
inline std::atomic<const char*> status_text{"not installed: install() was not called"};
inline std::atomic<bool> installed_flag{false};

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

/// Declares broken the environment at `home` (the mappings of its region files, "__db.*", in
/// this process): every wait that a thread of this process makes inside libdb on memory there
/// (mutex, logical lock, page latch) fails from now on, and one already blocked within 100 ms,
/// so that libdb returns DB_RUNRECOVERY. For the library's watchdog when failchk returns
/// DB_RUNRECOVERY (the panic may have come from another process); call it while the broken
/// environment is still open, before closing it. libdb's munmap of a region clears the mark.
/// Returns how many mappings it marked (0 also when install() did not succeed: waits are then
/// not sliced and cannot be ended).
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

/// Declares broken the memory [lo, hi) (a region of an environment known broken): waits there
/// fail from now on, as after abort_waits().
inline void abort_waits_in(std::uintptr_t lo, std::uintptr_t hi) noexcept {
  if (installed_flag.load(std::memory_order_acquire)) mark_broken(lo, hi);
}

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
