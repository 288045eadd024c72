// smisk-ipc: the descriptors of homes' lock files, and what a child of fork() does with them.
// SPDX-License-Identifier: MIT
//
// A home's lock file carries open-file-description locks (see ofd_lock): byte 0 is the gate that
// serialises opening and closing, byte 1 is held shared by every member. A child of fork()
// inherits every descriptor, and with it a share of each lock: a gate descriptor that a parent
// thread held at the moment of fork() would keep the gate locked for as long as the child lives
// (for ever, if the parent then dies), and the child's own first open would wait for it. So every
// lock-file descriptor the library opens is registered here, under a fork_safe_mutex so that no
// fork() can copy a descriptor that is not yet registered:
//   - gate descriptors are closed in the child at once (the lock stays with the parent's copy);
//   - membership descriptors are kept: the child is a member of its parent's homes from the
//     moment of fork() (a daemon's child keeps a temporary dict its exiting parent made). They are
//     closed once the child holds a membership of its own for that home, or leaves it.
// Objects of a parent that hold such a descriptor (lock_fd) never close it in the child.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#include "posix.hpp"

namespace smisk::ipc::detail {

class lock_fd_table {
 public:
  static lock_fd_table& instance() noexcept {
    static lock_fd_table* table = new lock_fd_table;  // never destroyed: used at exit
    return *table;
  }

  /// Opens `path` and registers the descriptor. @returns it, or -1 (errno set).
  int open(const std::string& path, int flags, mode_t mode, const std::string& home,
           bool membership) {
    std::lock_guard<fork_safe_mutex> lock(mutex_);
    entries_.reserve(entries_.size() + 1);  // no allocation after the open
    const int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd < 0) return -1;
    entries_.push_back({fd, membership, false, home});
    return fd;
  }

  /// Unregisters and closes a descriptor of this process.
  void close(int fd) noexcept {
    {
      std::lock_guard<fork_safe_mutex> lock(mutex_);
      for (auto& e : entries_)
        if (e.fd == fd) e.fd = -1;
      compact();
    }
    ::close(fd);
  }

  /// In a child of fork(): closes the memberships of `home` inherited from the parent (the child
  /// now holds one of its own, or leaves the home).
  void drop_inherited(const std::string& home) noexcept {
    std::vector<int> doomed;
    {
      std::lock_guard<fork_safe_mutex> lock(mutex_);
      for (auto& e : entries_)
        if (e.fd >= 0 && e.inherited && e.home == home) {
          doomed.push_back(e.fd);
          e.fd = -1;
        }
      compact();
    }
    for (int fd : doomed) ::close(fd);
  }

 private:
  struct entry {
    int fd;
    bool membership;
    bool inherited;  // a parent's descriptor, in a child of fork()
    std::string home;
  };

  lock_fd_table() noexcept {
    (void)fork_generation();  // handler order: the generation counter's child handler runs first
    ::pthread_atfork(nullptr, nullptr, &on_fork_child);
  }

  /// In the child (one thread; the table was consistent at fork(): its mutex was held): gates are
  /// closed, memberships marked inherited.
  static void on_fork_child() noexcept {
    lock_fd_table& t = instance();
    for (auto& e : t.entries_) {
      if (e.fd < 0) continue;
      if (e.membership) {
        e.inherited = true;
      } else {
        ::close(e.fd);
        e.fd = -1;
      }
    }
  }

  void compact() noexcept {
    std::size_t out = 0;
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].fd >= 0) {
        if (out != i) entries_[out] = std::move(entries_[i]);
        ++out;
      }
    while (entries_.size() > out) entries_.pop_back();
  }

  fork_safe_mutex mutex_;
  std::vector<entry> entries_;
};

/// A registered lock-file descriptor of this process: closed (with its locks) when destroyed,
/// except in a child of fork(), where the table decides (see above).
class lock_fd {
 public:
  lock_fd() = default;
  /// Opens and registers; check with operator bool (errno set on failure).
  lock_fd(const std::string& path, int flags, mode_t mode, const std::string& home, bool membership)
      : fd_(lock_fd_table::instance().open(path, flags, mode, home, membership)),
        generation_(fork_generation()) {}
  lock_fd(lock_fd&& o) noexcept : fd_(o.fd_), generation_(o.generation_) { o.fd_ = -1; }
  lock_fd& operator=(lock_fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      generation_ = o.generation_;
      o.fd_ = -1;
    }
    return *this;
  }
  lock_fd(const lock_fd&) = delete;
  lock_fd& operator=(const lock_fd&) = delete;
  ~lock_fd() { reset(); }

  void reset() noexcept {
    if (fd_ >= 0 && generation_ == fork_generation()) lock_fd_table::instance().close(fd_);
    fd_ = -1;
  }
  [[nodiscard]] int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
  unsigned generation_ = 0;
};

}  // namespace smisk::ipc::detail
