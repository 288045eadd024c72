// smisk-ipc: the replacements of libdb's munmap, open, readdir and close.
// SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstddef>
#include <cstring>

#include "robust_broken.hpp"
#include "robust_fds.hpp"
#include "robust_state.hpp"

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
