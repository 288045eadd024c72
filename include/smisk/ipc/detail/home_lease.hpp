// smisk-ipc: a process's membership of a home, and the gate that serialises opening it.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../error.hpp"
#include "bdb_home_files.hpp"
#include "bdb_stats.hpp"
#include "lock_fds.hpp"
#include "posix.hpp"

namespace smisk::ipc::detail::bdb {

/// This process's membership of a home. Every process using a home holds a shared lock on byte 1
/// of its lock file; byte 0 is the gate that serialises opening and closing. The kernel drops a
/// dead process's locks, so "no one else holds byte 1" means no live process uses the home.
class home_lease {
 public:
  home_lease(std::string home, bool persistent, unsigned mode, bool default_home)
      : home_(std::move(home)),
        persistent_(persistent),
        mode_(mode),
        generation_(fork_generation()) {
    bool created = default_home;
    gate_ = open_gate(&created);
    manifest m = manifest::read(home_);
    // Alone: no other open file description holds byte 1 (a child's inherited membership counts,
    // so a daemon's child keeps the temporary home its parent made).
    bool alone = ofd_lock(gate_.get(), 1, lock_kind::exclusive, false);
    if (alone && m.exists && !m.persistent) {
      // Left behind by processes that crashed: a temporary home starts clean.
      created = created || m.created_home;
      remove_home_files(home_, m);
      stats().stale_homes_cleaned.fetch_add(1, std::memory_order_relaxed);
      gate_ = open_gate(&created);
      if (!ofd_lock(gate_.get(), 1, lock_kind::exclusive, false))
        throw engine_error("smisk::ipc: home " + home_ + " was taken while it was being cleaned");
      m = manifest{};
    }
    if (alone) ofd_lock(gate_.get(), 1, lock_kind::none, false);
    if (m.exists && m.persistent != persistent_) {
      unlock_gate();
      throw home_error("smisk::ipc: home " + home_ + " holds " +
                       (m.persistent ? "persistent" : "temporary") +
                       " dicts; open it with persistent = " + (m.persistent ? "true" : "false"));
    }
    if (m.exists && created && !m.created_home) {
      // Another process reached the gate first, but this one made the directory.
      m.created_home = true;
      m.write(home_, mode_);
    }
    if (!m.exists) {
      m.created_home = created;
      m.persistent = persistent_;
      m.exists = true;
      m.write(home_, mode_);
    }
    alone_ = alone;
    // Membership on a descriptor of its own, which never holds the gate: a child of fork() keeps
    // it (see lock_fds.hpp) without keeping the gate.
    users_ = lock_fd(home_ + "/" + lock_file_name, O_RDWR | O_NOFOLLOW, 0, home_, true);
    if (!users_) throw_errno("cannot open the lock file in " + home_, "open");
    ofd_lock(users_.get(), 1, lock_kind::shared, false);
    // A child of fork() now holds its own membership: the one inherited from its parent goes.
    lock_fd_table::instance().drop_inherited(home_);
  }

  home_lease(const home_lease&) = delete;
  home_lease& operator=(const home_lease&) = delete;

  /// Leaves the home; the last process out of a temporary home removes it.
  ~home_lease() { leave(); }

  /// Leaves the home now (at exit: see registry::at_exit). Idempotent.
  void leave() noexcept {
    if (generation_ != fork_generation()) return;  // a copy inherited over fork(): not ours
    if (left_.exchange(true)) return;
    try {
      // The home exists while this process is a member; never re-create it from here.
      lock_fd gate(home_ + "/" + lock_file_name, O_RDWR | O_NOFOLLOW, 0, home_, false);
      if (!gate) return;
      ofd_lock(gate.get(), 0, lock_kind::exclusive, true);
      users_.reset();
      lock_fd_table::instance().drop_inherited(home_);
      if (!persistent_ && ofd_lock(gate.get(), 1, lock_kind::exclusive, false))
        remove_home_files(home_, manifest::read(home_));
      ofd_lock(gate.get(), 0, lock_kind::none, false);
    } catch (...) {
      // A destructor only releases; a home we cannot reach is left for the next opener.
    }
  }

  /// Holds the gate while the environment and its databases are opened.
  class gate_guard {
   public:
    explicit gate_guard(const home_lease& lease)
        : fd_(lease.home_ + "/" + lock_file_name, O_RDWR | O_NOFOLLOW, 0, lease.home_, false) {
      if (!fd_) throw_errno("cannot open the lock file in " + lease.home_, "open");
      ofd_lock(fd_.get(), 0, lock_kind::exclusive, true);
    }
    ~gate_guard() {
      // Unlocked explicitly: a copy of the descriptor that a fork() made meanwhile must not keep
      // the gate (closing only drops this process's reference).
      try {
        ofd_lock(fd_.get(), 0, lock_kind::none, false);
      } catch (...) {
      }
    }
    gate_guard(const gate_guard&) = delete;
    gate_guard& operator=(const gate_guard&) = delete;

   private:
    lock_fd fd_;
  };

  void record_database(const std::string& name) {
    manifest m = manifest::read(home_);
    if (m.has_database(name)) return;
    m.databases.push_back(name);
    m.write(home_, mode_);
  }

  [[nodiscard]] const std::string& home() const noexcept { return home_; }
  [[nodiscard]] bool persistent() const noexcept { return persistent_; }
  [[nodiscard]] unsigned mode() const noexcept { return mode_; }
  /// Whether no other live process used the home when this process joined it.
  [[nodiscard]] bool alone_at_open() const noexcept { return alone_; }

  /// The recovery epoch (how many times the environment of this home was recovered) and
  /// whether the last process that created or recovered the environment finished: "<epoch>
  /// ready" or "<epoch> opening", as text in the lock file, read and written only under the gate.
  struct epoch_state {
    std::uint64_t epoch = 0;
    bool interrupted = false;  // "opening": that process died before it was done
  };
  [[nodiscard]] epoch_state read_epoch() const {
    char buf[48] = {};
    ssize_t n = ::pread(fd(), buf, sizeof buf - 1, 0);
    epoch_state st;
    if (n <= 0) return st;
    char* end = nullptr;
    st.epoch = std::strtoull(buf, &end, 10);
    st.interrupted = std::strncmp(end, " opening", 8) == 0;
    return st;
  }
  void write_epoch(std::uint64_t epoch, bool opening) const {
    // Fixed width, so that a shorter text never leaves the tail of a longer one behind.
    char text[40];
    int n = std::snprintf(text, sizeof text, "%20llu %s\n", static_cast<unsigned long long>(epoch),
                          opening ? "opening" : "ready  ");
    if (::pwrite(fd(), text, static_cast<std::size_t>(n), 0) != n)
      throw_errno("cannot write the lock file in " + home_, "pwrite");
  }
  [[nodiscard]] int fd() const noexcept { return users_ ? users_.get() : gate_.get(); }
  /// Releases the gate the constructor took (once).
  void unlock_gate() {
    if (!gate_) return;
    ofd_lock(gate_.get(), 0, lock_kind::none, false);
    gate_.reset();
  }

 private:
  /// Opens the lock file and takes the gate, retrying if the last process out removed the file
  /// (and perhaps the home). Sets *created if this process made the home directory.
  lock_fd open_gate(bool* created = nullptr) const {
    std::string path = home_ + "/" + lock_file_name;
    for (;;) {
      if (prepare_home(home_) && created) *created = true;
      lock_fd fd(path, O_RDWR | O_CREAT | O_NOFOLLOW, static_cast<mode_t>(mode_), home_, false);
      if (!fd) throw_errno("cannot open the lock file " + path, "open");
      ofd_lock(fd.get(), 0, lock_kind::exclusive, true);
      struct stat held, named;
      if (::fstat(fd.get(), &held) == 0 && held.st_nlink > 0 &&
          ::lstat(path.c_str(), &named) == 0 && named.st_ino == held.st_ino &&
          named.st_dev == held.st_dev)
        return fd;
      ofd_lock(fd.get(), 0, lock_kind::none, false);
    }
  }

  std::string home_;
  bool persistent_;
  unsigned mode_;
  unsigned generation_;
  bool alone_ = false;
  std::atomic<bool> left_{false};
  lock_fd gate_;   // holds the gate from construction until unlock_gate()
  lock_fd users_;  // holds byte 1 shared: this process's membership
};

}  // namespace smisk::ipc::detail::bdb
