// smisk-ipc: memory known broken (a dead environment's regions), and this thread's robust list.
// SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "posix.hpp"
#include "robust_state.hpp"

namespace smisk::ipc::detail::robust {

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

}  // namespace smisk::ipc::detail::robust
