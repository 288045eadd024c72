// smisk-ipc: what one write does in a home short of space (see bdb_space_guard.hpp): the checks
// before and inside its transaction, the credit it takes and the credit its erases give.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "bdb_database.hpp"
#include "bdb_space_guard.hpp"

namespace smisk::ipc::detail::bdb {

/// The last page of a database (see last_page(DB*)), inside a library call.
inline db_pgno_t last_page(database& d) {
  db_pgno_t pages = 0;
  (void)guarded(d, [&] {
    pages = last_page(d.handle());
    return 0;
  });
  return pages;
}

/// The bytes of the pages of a database (the ones its cache knows of, written or not).
inline std::uint64_t database_bytes(database& d) {
  u_int32_t page_size = 0;
  (void)guarded(d, [&] { return d.handle()->get_pagesize(d.handle(), &page_size); });
  return (std::uint64_t{last_page(d)} + 1) * page_size;
}

/// What a write of a key and a value may add to the home: its log records (with the old value
/// an overwrite replaces) and its pages.
inline space_need write_need(std::uint64_t key, std::uint64_t value,
                             std::uint64_t old_value = 0) noexcept {
  const std::uint64_t bytes = key + value;
  return {(bytes + old_value) + (bytes + old_value) / 8 + 512, bytes + bytes / 8, value};
}

/// What erasing a key and its value may add to the home: the log of every page it frees.
inline space_need erase_need(std::uint64_t key, std::uint64_t value) noexcept {
  return {key + space_guard::erase_room(value), 0, 0};
}

/// The size of the value stored under `k`, read in `txn` (with DB_RMW: the write that follows
/// holds the lock anyway) without copying it. @returns 0, DB_NOTFOUND or libdb's error.
inline int stored_size(database& d, DB_TXN* txn, const DBT& k, std::uint64_t& size) {
  DB* db = d.handle();
  thread_local std::string key_copy;
  DBT key = lookup_dbt(d, bytes_of(k), key_copy);
  DBT v;
  std::memset(&v, 0, sizeof v);
  v.flags = DB_DBT_USERMEM;  // ulen 0: DB_BUFFER_SMALL, with the size
  const int rc = guarded(d, [&] { return db->get(db, txn, &key, &v, DB_RMW); });
  if (rc != 0 && rc != DB_BUFFER_SMALL) return rc;
  size = v.size;
  return 0;
}

/// One attempt of one write and the space guard: reserve() before the transaction, confirm()
/// inside it once the sizes are known (in a tight home), grew() before the commit, settle()
/// after it. Credit taken is given back if the attempt fails (not if its commit is in doubt:
/// it may have landed); credit from erases, and the size of the value stored, count only once
/// the commit succeeded.
class space_use {
 public:
  using kind = space_guard::kind;
  using verdict = space_guard::verdict;

  space_use(database& d, kind k) noexcept : d_(d), guard_(d.env().space()), kind_(k) {}

  /// Room for what the write needs; in a home short of space, checkpoints first free what log
  /// files they can (at most every 50 ms for writes; always for erases and clears, which are how
  /// space is freed). @returns 0, or ENOSPC (run() raises size_error).
  int reserve(space_need need) {
    verdict v = guard_.check(need, kind_);
    if (v != verdict::plenty &&
        ((v == verdict::full && kind_ == kind::shrinks) || guard_.room_may_help())) {
      d_.env().make_room();
      v = guard_.check(need, kind_);
    }
    if (v == verdict::full) return refuse(space_guard::refusal::no_room);
    value_ = need.value;
    tight_ = v == verdict::tight;
    if (tight_ && kind_ == kind::grows) pages_ = last_page(d_);
    return 0;
  }

  /// Whether the home is short of space: confirm() and grew() apply.
  [[nodiscard]] bool tight() const noexcept { return tight_; }
  /// Whether erases should count what they free (see space_guard::counting).
  [[nodiscard]] bool counting() const noexcept { return tight_ || guard_.counting(); }

  /// In a tight home, once the sizes are known: room for `need`, and `credit` bytes of
  /// credit for what the write adds. @returns 0 or ENOSPC.
  int confirm(space_need need, std::uint64_t credit) {
    if (need.value > value_) value_ = need.value;
    if (!tight_) return 0;
    verdict v = guard_.check(need, kind_);
    if (v == verdict::full && kind_ == kind::shrinks) {
      d_.env().make_room();
      v = guard_.check(need, kind_);
    }
    if (v == verdict::full) return refuse(space_guard::refusal::no_room);
    // A few bytes more (a counter that gains a digit) fit where the value was: no credit. The
    // write is still aborted if it made the file longer (grew()).
    constexpr std::uint64_t free_growth = 64;
    if (credit > free_growth && credit > taken_) {
      if (!guard_.take_credit(credit - taken_)) return refuse(space_guard::refusal::no_credit);
      taken_ = credit;
    }
    return 0;
  }

  /// In a tight home, before the commit: ENOSPC if the write made the database file longer.
  int grew() {
    if (!tight_ || kind_ != kind::grows || last_page(d_) <= pages_) return 0;
    return refuse(space_guard::refusal::grew);
  }

  /// An erase of the attempt freed `bytes` inside the database file.
  void freed(std::uint64_t bytes) noexcept { freed_ += bytes; }

  /// After the attempt, with what it returned and whether its commit is in doubt (a break
  /// interrupted it: it may have landed, see bdb_landed_commits.hpp).
  void settle(int rc, bool in_doubt) noexcept {
    if (rc == 0) {
      if (freed_ != 0) guard_.add_credit(freed_);
      if (value_ != 0) guard_.note_value(value_);
    } else if (!in_doubt && taken_ != 0) {
      guard_.add_credit(taken_);  // given back
    }
    taken_ = freed_ = 0;
  }

 private:
  int refuse(space_guard::refusal why) {
    guard_.explain(why);
    return ENOSPC;
  }

  database& d_;
  space_guard& guard_;
  kind kind_;
  bool tight_ = false;
  db_pgno_t pages_ = 0;
  std::uint64_t taken_ = 0;
  std::uint64_t freed_ = 0;
  std::uint64_t value_ = 0;
};

}  // namespace smisk::ipc::detail::bdb
