// smisk-ipc: what a write does in a home short of space (see bdb_space_guard.hpp): the checks
// before and after it, the credit that erases give.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

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

/// Whether the home's filesystem has room for DB->truncate's log: about every page of the
/// database (the pages it knows of, written or not, so rather more).
inline bool truncate_fits(database& d) {
  using verdict = space_guard::verdict;
  return d.env().space().check(database_bytes(d), space_guard::kind::shrinks) == verdict::plenty;
}

/// Erases a key in `txn`. In a home short of space, the bytes it frees become credit for writes
/// (see detail/bdb_space_guard.hpp): its value's size is read first, without copying it.
inline int erase_counted(database& d, DB_TXN* txn, DBT& k) {
  DB* db = d.handle();
  space_guard& space = d.env().space();
  std::uint64_t freed = 0;
  if (space.counting()) {
    DBT v;
    std::memset(&v, 0, sizeof v);
    v.flags = DB_DBT_USERMEM;  // ulen 0: DB_BUFFER_SMALL, with the size
    const int rc = guarded(d, [&] { return db->get(db, txn, &k, &v, DB_RMW); });
    if (rc != 0 && rc != DB_BUFFER_SMALL) return rc;
    freed = std::uint64_t{k.size} + v.size;
  }
  const int rc = guarded(d, [&] { return db->del(db, txn, &k, 0); });
  if (rc == 0 && freed != 0) space.add_credit(freed);
  return rc;
}

/// In a tight home: takes `bytes` of credit for a write, or explains why it is refused.
inline bool take_credit(database& d, std::uint64_t bytes) {
  if (d.env().space().take_credit(bytes)) return true;
  d.env().space().explain();
  return false;
}

/// What a write of a key and a value may add to the home: its log record (the old value too,
/// for an overwrite or an erase) and its page.
inline std::uint64_t space_cost(std::size_t key, std::size_t value) noexcept {
  return 3 * (std::uint64_t{key} + value) + 512;
}

/// Before a write's transaction: whether the home's filesystem has room for it (see
/// detail/bdb_space_guard.hpp). @returns 0, or ENOSPC (run() raises size_error) once a forced
/// round of checkpoints freed too little. `tight`: the write may run only if it does not make
/// the database file longer.
inline int make_space(database& d, std::uint64_t cost, space_guard::kind kind, bool& tight) {
  using verdict = space_guard::verdict;
  environment& env = d.env();
  verdict v = env.space().check(cost, kind);
  // Short of space: first the log files that checkpoints can free (often most of it). Always
  // for an erase or a clear: they are how space is freed.
  if ((v == verdict::full && kind == space_guard::kind::shrinks) ||
      (v != verdict::plenty && env.space().room_may_help())) {
    env.make_room();
    v = env.space().check(cost, kind);
  }
  if (v == verdict::full) {
    env.space().explain();
    return ENOSPC;
  }
  tight = v == verdict::tight;
  return 0;
}

/// In a tight home: whether the write made the database file longer (then it is refused).
inline bool grew(database& d, db_pgno_t before) {
  if (last_page(d) <= before) return false;
  d.env().space().explain();
  return true;
}

}  // namespace smisk::ipc::detail::bdb
