// smisk-ipc: exactly-once redo of writes interrupted by an environment break.
// SPDX-License-Identifier: MIT
//
// A write whose environment breaks while it commits (a process died inside Berkeley DB, and the
// commit returned DB_RUNRECOVERY) cannot tell whether its commit record reached the log. The
// operation is redone after recovery; had the commit landed, recovery has already applied it and
// the redo would apply it a second time (an increment counted twice, an insert that reports
// "already there", a set that overwrites a later write of another process).
//
// So every write transaction also writes, in the same transaction, a journal record that only
// the writing thread ever writes: (token, sequence number). After a break, before redoing, the
// thread reads its record in the recovered environment. If it holds what the interrupted attempt
// wrote, the commit landed (atomically with the journal record, so its effects are there) and the
// operation returns as done; otherwise nothing of it was applied, and it is redone.
//
// The journal is one DB_QUEUE database per home, in its own file (queues cannot be
// sub-databases): queues lock records, not pages, so writers of distinct records never wait for
// each other. Record n+1 belongs to the thread that holds slot n: an open-file-description lock on
// byte slot_base + n of the home's lock file. The kernel releases it when the process dies, so a
// dead process's slots are reused, and the journal stays as small as the number of threads that
// write at once. A process keeps its slots while it is a member of the home (they go with the
// lease); a thread gives its slot back to the process when it ends. A child of fork() inherits no
// slot: its copy of the descriptor is closed (see lock_fds.hpp), and it claims slots of its own.
// The token, random per claim, tells the record of this claim from whatever an earlier owner of
// the slot left there.
#pragma once

#include <db.h>
#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../error.hpp"
#include "lock_fds.hpp"
#include "posix.hpp"

namespace smisk::ipc::detail::bdb {

constexpr const char* journal_file_name = "smisk-ipc.journal";

namespace journal {

/// The byte of the lock file that slot 0 locks (bytes 0 and 1 are the gate and membership).
constexpr off_t slot_base = 4096;
/// More slots than this would mean as many threads writing to one home at once.
constexpr std::uint32_t max_slots = 1u << 20;

/// A journal record: the claim's token and the sequence number of the thread's last write.
struct record {
  std::uint64_t token;
  std::uint64_t seq;
};
constexpr u_int32_t record_size = sizeof(record);

/// One slot, as a thread uses it.
struct slot {
  std::uint32_t index = 0;
  std::uint64_t token = 0;
  std::uint64_t seq = 0;  // the last sequence number written
};

inline std::uint64_t random_token() noexcept {
  std::uint64_t t = 0;
  if (::getrandom(&t, sizeof t, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof t)) t = 0;
  // Without the kernel's randomness (very early boot): time and pid still differ per claim.
  static std::atomic<std::uint64_t> counter{0};
  t ^= static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  t ^= static_cast<std::uint64_t>(::getpid()) << 40;
  t ^= counter.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed);
  return t | 1;  // never 0: an empty record reads as token 0
}

/// This process's slots in one home: owned by its home_lease, so they outlive recoveries.
class slots {
 public:
  /// `lock_path`: the home's lock file.
  slots(std::string home, std::string lock_path)
      : home_(std::move(home)), lock_path_(std::move(lock_path)), generation_(fork_generation()) {}
  slots(const slots&) = delete;
  slots& operator=(const slots&) = delete;

  /// A free slot of this process, or a newly claimed one.
  slot acquire() {
    std::lock_guard<fork_safe_mutex> lock(mutex_);
    if (!free_.empty()) {
      slot s = free_.back();
      free_.pop_back();
      return s;
    }
    if (!fd_) {
      fd_ = lock_fd(lock_path_, O_RDWR | O_NOFOLLOW, 0, home_, false);
      if (!fd_) throw_errno("cannot open the lock file in " + home_, "open");
    }
    for (std::uint32_t i = next_; i < max_slots; ++i) {
      if (owned(i)) continue;
      if (!ofd_lock(fd_.get(), slot_base + static_cast<off_t>(i), lock_kind::exclusive, false))
        continue;
      owned_.push_back(i);
      next_ = 0;  // slots below may have been freed by processes that ended
      return slot{i, random_token(), 0};
    }
    next_ = 0;
    throw engine_error("smisk::ipc: more than " + std::to_string(max_slots) +
                       " threads write to the home " + home_ + " at once");
  }

  /// Gives a thread's slot back (the thread ended).
  void release(const slot& s) noexcept {
    if (generation_ != fork_generation()) return;
    std::lock_guard<fork_safe_mutex> lock(mutex_);
    try {
      free_.push_back(s);
    } catch (...) {
      // Out of memory: the slot stays claimed by this process, unused.
    }
  }

  [[nodiscard]] unsigned generation() const noexcept { return generation_; }

 private:
  bool owned(std::uint32_t i) const noexcept {
    for (std::uint32_t o : owned_)
      if (o == i) return true;
    return false;
  }

  std::string home_;
  std::string lock_path_;
  unsigned generation_;
  fork_safe_mutex mutex_;
  lock_fd fd_;  // holds the slot locks; closed (and so released) with the lease
  std::vector<std::uint32_t> owned_;
  std::vector<slot> free_;
  std::uint32_t next_ = 0;
};

/// The slots this thread holds, one per home it wrote to; given back when the thread ends.
class thread_slots {
 public:
  static slot& of(const std::shared_ptr<slots>& table) {
    thread_local thread_slots mine;
    return mine.find(table);
  }

  thread_slots() = default;
  thread_slots(const thread_slots&) = delete;
  thread_slots& operator=(const thread_slots&) = delete;
  ~thread_slots() {
    for (auto& e : entries_)
      if (auto t = e.table.lock()) t->release(e.held);
  }

 private:
  struct entry {
    std::weak_ptr<slots> table;
    const slots* raw;
    unsigned generation;
    slot held;
  };

  slot& find(const std::shared_ptr<slots>& table) {
    const unsigned generation = fork_generation();
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      entry& e = entries_[i];
      // A table that is gone (its lease closed, releasing the lock) may be followed by another at
      // the same address: such entries are dropped, never matched.
      if (e.generation != generation || e.table.expired()) {
        entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i--));
        continue;
      }
      if (e.raw == table.get()) return e.held;
    }
    entries_.push_back(entry{table, table.get(), generation, table->acquire()});
    return entries_.back().held;
  }

  std::vector<entry> entries_;
};

/// What one attempt of a write stamped, and whether the outcome is in doubt.
struct ticket {
  slot stamped{};         // the slot and sequence number the attempt wrote
  bool written = false;   // the attempt got as far as writing its journal record
  bool in_doubt = false;  // the environment broke after that: did its commit land?
};

inline DBT recno_dbt(db_recno_t* recno) noexcept {
  DBT k;
  std::memset(&k, 0, sizeof k);
  k.data = recno;
  k.size = sizeof *recno;
  k.ulen = sizeof *recno;
  k.flags = DB_DBT_USERMEM;
  return k;
}

/// Writes the thread's journal record inside `txn` (before its commit). `table`: the slots of
/// the home the transaction writes to.
template <class Guard>
int stamp(DB* journal, DB_TXN* txn, const std::shared_ptr<slots>& table, ticket& t,
          Guard&& guarded) {
  slot& s = thread_slots::of(table);
  ++s.seq;
  t.stamped = s;
  t.written = true;
  record r{s.token, s.seq};
  db_recno_t recno = s.index + 1;
  DBT k = recno_dbt(&recno);
  DBT v;
  std::memset(&v, 0, sizeof v);
  v.data = &r;
  v.size = record_size;
  return guarded([&] { return journal->put(journal, txn, &k, &v, 0); });
}

/// After a break: whether the interrupted attempt's commit landed (*landed), read in the
/// recovered environment. @returns 0, or libdb's error.
template <class Guard>
int check(DB* journal, const ticket& t, bool* landed, Guard&& guarded) {
  record r{0, 0};
  db_recno_t recno = t.stamped.index + 1;
  DBT k = recno_dbt(&recno);
  DBT v;
  std::memset(&v, 0, sizeof v);
  v.data = &r;
  v.ulen = record_size;
  v.flags = DB_DBT_USERMEM;
  const int rc = guarded([&] { return journal->get(journal, nullptr, &k, &v, 0); });
  if (rc == DB_NOTFOUND || rc == DB_KEYEMPTY) {
    *landed = false;
    return 0;
  }
  if (rc != 0) return rc;
  *landed = v.size == record_size && r.token == t.stamped.token && r.seq == t.stamped.seq;
  return 0;
}

}  // namespace journal
}  // namespace smisk::ipc::detail::bdb
