// smisk-ipc: the Berkeley DB backend (the default).
// SPDX-License-Identifier: MIT
//
// Environment: DB_INIT_MPOOL | DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_TXN | DB_THREAD, plus
// DB_RECOVER when no other live process uses the home; a watchdog thread per process runs
// DB_ENV->failchk (is_alive callback) to clean up after processes that died. Every write is a
// transaction (auto-commit, or an explicit one for read-modify-write), so a deadlock aborts cleanly
// and is retried, and a crashed process is recovered from the log. Logs live in the home (on tmpfs
// for temporary dicts) and are removed automatically after checkpoints.
#pragma once

#include <db.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "bsddb_options.hpp"
#include "bsddb_status.hpp"
#include "detail/bdb_landed_commits.hpp"
#include "detail/bdb_registry.hpp"
#include "detail/bdb_space.hpp"
#include "detail/scoped_set.hpp"
#include "error.hpp"
#include "shared_dict.hpp"

namespace smisk::ipc::bsddb {

/// Berkeley DB backend of shared_dict. One environment per home and process, one DB handle per
/// database and process, shared by every dict handle; reopened in a child after fork().
class backend {
 public:
  using options = bsddb::options;

  /// Opens (creating if needed) the database. @throws home_error, type_mismatch, engine_error.
  backend(const options& o, std::string_view key_type, std::string_view value_type)
      : options_(o), key_type_(key_type), value_type_(value_type) {
    owner_ = detail::bdb::registry::instance().open(options_, key_type_, value_type_);
    current_.store(owner_.get(), std::memory_order_release);
  }

  ~backend() {
    keep_if_foreign(owner_);
    for (auto& d : retired_) keep_if_foreign(d);
  }

  backend(const backend&) = delete;
  backend& operator=(const backend&) = delete;

  template <class F>
  bool get(std::string_view key, F&& consume) const {
    thread_local std::string buffer, key_copy;
    if (buffer.size() < 512) buffer.resize(512);
    DBT v;
    std::memset(&v, 0, sizeof v);
    v.flags = DB_DBT_USERMEM;
    int rc = run("DB->get", [&](detail::bdb::database& d) {
      DBT k = detail::bdb::lookup_dbt(d, key, key_copy);
      for (;;) {
        v.data = buffer.data();
        v.ulen = static_cast<u_int32_t>(buffer.size());
        int r = detail::bdb::guarded(
            d, [&] { return d.handle()->get(d.handle(), nullptr, &k, &v, 0); });
        if (r != DB_BUFFER_SMALL) return r;
        buffer.resize(v.size);
      }
    });
    if (rc == DB_NOTFOUND) return false;
    consume(std::string_view(buffer.data(), v.size));
    return true;
  }

  bool exists(std::string_view key) const {
    thread_local std::string key_copy;
    return run("DB->exists", [&](detail::bdb::database& d) {
             DBT k = detail::bdb::lookup_dbt(d, key, key_copy);
             return detail::bdb::guarded(
                 d, [&] { return d.handle()->exists(d.handle(), nullptr, &k, 0); });
           }) == 0;
  }

  void put(std::string_view key, std::string_view value) { write("DB->put", key, value, 0); }

  bool add(std::string_view key, std::string_view value) {
    return write("DB->put", key, value, DB_NOOVERWRITE) == 0;
  }

  bool remove(std::string_view key) {
    DBT k = detail::bdb::make_dbt(key);
    return write_transaction(
               "DB->del", detail::bdb::erase_need(key.size(), 1024), space_kind::shrinks,
               [&](detail::bdb::database& d, DB_TXN* txn, detail::bdb::space_use& space) {
                 return erase(d, txn, k, space);
               }) == 0;
  }

  /// Read-modify-write in one transaction: get with DB_RMW (a write lock on the key's page),
  /// then put or del, then commit; retried from the start on deadlock.
  ///
  /// The first attempts do not queue for a lock another transaction holds (DB_TXN_NOWAIT): they
  /// fail at once and run() retries after a short backoff. Berkeley DB hands a released lock to
  /// the waiter queued for it, so under contention every queued update costs a cross-process
  /// wake-up (about 40k updates/s of one key on two cores); retrying instead lets the process
  /// that already runs take the lock again (several times faster, see bench/ and the README).
  /// After nowait_attempts tries the transaction waits in the queue, so no caller starves.
  template <class F>
  void modify(std::string_view key, F&& step) {
    DBT k = detail::bdb::make_dbt(key);
    detail::bdb::commit_ticket ticket;
    std::string current_value(256, '\0');
    std::string out;
    auto once = [&](detail::bdb::database& d, u_int32_t txn_flags) {
      detail::bdb::space_use space(d, space_kind::grows);
      if (const int full = space.reserve(detail::bdb::write_need(key.size(), 256, 256)))
        return full;
      int rc;
      {
        detail::bdb::transaction txn(d.env().handle(), txn_flags);
        rc = txn.begin_error();
        if (rc == 0) rc = modify_once(d, txn, k, step, current_value, out, space, ticket);
      }
      space.settle(rc, ticket.in_doubt);
      return rc;
    };
    unsigned attempts = 0;
    run(
        "DB_TXN",
        [&](detail::bdb::database& d) {
          const bool nowait = attempts++ < nowait_attempts;
          const int rc = once(d, nowait ? DB_TXN_NOWAIT : 0u);
          // A busy lock fails a DB_TXN_NOWAIT transaction with DB_LOCK_DEADLOCK: count it as the
          // conflict it is (it never waited, so it was in no deadlock).
          return nowait && rc == DB_LOCK_DEADLOCK ? DB_LOCK_NOTGRANTED : rc;
        },
        &ticket);
  }

  void sync() {
    run("DB_ENV->log_flush", [&](detail::bdb::database& d) {
      return detail::bdb::guarded(d, [&] {
        int rc = d.env().handle()->log_flush(d.env().handle(), nullptr);
        return rc != 0 ? rc : d.handle()->sync(d.handle(), 0);
      });
    });
  }

  // ---- enumeration --------------------------------------------------------------------------

  /// Calls fn(key, value) for every record, from a snapshot read with a read-committed cursor.
  template <class F>
  void for_each(F&& fn) const {
    std::vector<std::pair<std::string, std::string>> records;
    scan(
        DB_DBT_REALLOC, [&] { records.clear(); },
        [&](const DBT& k, const DBT& v) {
          records.emplace_back(detail::bdb::bytes_of(k), detail::bdb::bytes_of(v));
          return true;
        });
    for (const auto& [key, value] : records) fn(std::string_view(key), std::string_view(value));
  }

  /// The number of records, counted with a read-committed cursor that copies no data.
  /// (DB->stat is not used: concurrent stats of a hash database deadlock on its meta page in a
  /// way the detector does not see.)
  [[nodiscard]] std::size_t count() const { return walk(false); }

  /// Whether there are no records.
  [[nodiscard]] bool empty() const { return walk(true) == 0; }

  /// Removes every record in one transaction (DB->truncate). In a home short of space, then
  /// gives the free pages at the end of the file back to the filesystem (DB->compact with
  /// DB_FREE_SPACE, in transactions of its own), and the ones that stay become credit for writes
  /// (see detail/bdb_space_guard.hpp).
  ///
  /// DB->truncate logs every page it frees, all in one transaction, whose log cannot be removed
  /// before it ends. When the home's filesystem has no room for that much log, the records are
  /// erased in batches of their own transactions instead (about 64 kB of records each), so that
  /// checkpoints free the log as it goes: another process may then see part of them erased.
  void clear() {
    const bool whole =
        run("DB->truncate", [&](detail::bdb::database& d) {
          return d.env().space().has_room_for(detail::bdb::database_bytes(d)) ? 0 : DB_NOTFOUND;
        }) == 0;
    if (whole) {
      write_transaction("DB->truncate", detail::bdb::erase_need(0, 4096), space_kind::shrinks,
                        [&](detail::bdb::database& d, DB_TXN* txn, detail::bdb::space_use&) {
                          std::unique_lock<std::shared_mutex> no_cursors(d.cursor_mutex());
                          u_int32_t removed = 0;
                          return detail::bdb::guarded(d, [&] {
                            return d.handle()->truncate(d.handle(), txn, &removed, 0);
                          });
                        });
    } else {
      while (erase_batch() == 0) {
      }
    }
    run("DB->compact", [&](detail::bdb::database& d) {
      detail::bdb::space_use space(d, space_kind::shrinks);
      if (const int full = space.reserve(detail::bdb::erase_need(0, 4096))) return full;
      if (!space.counting()) return 0;
      DB_COMPACT c;
      std::memset(&c, 0, sizeof c);
      const int rc = detail::bdb::guarded(d, [&] {
        return d.handle()->compact(d.handle(), nullptr, nullptr, nullptr, &c, DB_FREE_SPACE,
                                   nullptr);
      });
      d.env().space().measure_again();
      // After batches, their erases credited the pages already.
      if (rc == 0 && whole) space.freed(detail::bdb::database_bytes(d));
      space.settle(rc, false);
      return rc;
    });
  }

  /// The home directory in use.
  [[nodiscard]] std::string home() const {
    in_use counted(*this);
    return current().env().home();
  }
  /// The raw handles, for what the library does not wrap. Not valid across fork(), nor after a
  /// recovery (the library then opens new ones).
  [[nodiscard]] DB* db_handle() const {
    in_use counted(*this);
    return current().handle();
  }
  [[nodiscard]] DB_ENV* env_handle() const {
    in_use counted(*this);
    return current().env().handle();
  }

 private:
  /// How many times in a row modify() retries without queueing for a lock (see modify).
  static constexpr unsigned nowait_attempts = 16;

  /// The database of this process: reopened after fork() and after its environment broke,
  /// refused after the exit-time close.
  detail::bdb::database& current() const {
    detail::bdb::database* d = current_.load(std::memory_order_seq_cst);
    if (!usable(*d)) d = refresh();
    return *d;
  }

  static bool usable(const detail::bdb::database& d) noexcept {
    return d.generation() == detail::fork_generation() && !d.closed() && !d.env().broken();
  }

  /// Opens the database again (in a child of fork(), or after a break). The swap mutex is held
  /// only to read and to swap the pointers, never across the open: fork() takes it (see
  /// fork_safe_mutex), so it must never be held for long. Two threads may reopen at once; the
  /// registry gives both the same database.
  detail::bdb::database* refresh() const {
    std::shared_ptr<detail::bdb::database> old;
    {
      std::lock_guard<detail::fork_safe_mutex> lock(swap_mutex_);
      detail::bdb::database* d = current_.load(std::memory_order_seq_cst);
      if (usable(*d)) return d;
      old = owner_;
    }
    const bool same_process = old->generation() == detail::fork_generation();
    if (same_process && !old->env().broken() && old->closed())
      throw engine_error("smisk::ipc: the dict was closed");
    if (same_process) detail::bdb::registry::instance().recover(old->env_ptr());
    // A child of fork() opens its own handles (the parent's stay untouched); after a recovery
    // this process opens the new environment.
    auto fresh = detail::bdb::registry::instance().open(options_, key_type_, value_type_);
    std::lock_guard<detail::fork_safe_mutex> lock(swap_mutex_);
    if (owner_ == old) {
      // Threads that loaded the old pointer may still use it: it is kept until none can (see
      // purge_retired()).
      retired_.push_back(std::move(owner_));
      has_retired_.store(true, std::memory_order_relaxed);
      owner_ = std::move(fresh);
      current_.store(owner_.get(), std::memory_order_seq_cst);
    }
    return current_.load(std::memory_order_seq_cst);
  }

  /// Counts the threads inside an operation of this handle, so that databases retired by
  /// refresh() are freed once no thread can still hold a pointer to one: a thread counts itself
  /// before it loads current_, so when the count is seen at zero after a swap, every later load
  /// sees the new database. Without this, a process would keep every environment it ever
  /// recovered from (its memory and descriptors) until the dict is destroyed.
  class in_use {
   public:
    explicit in_use(const backend& b) noexcept : b_(b) {
      b_.users_.fetch_add(1, std::memory_order_seq_cst);
    }
    ~in_use() {
      if (b_.users_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
          b_.has_retired_.load(std::memory_order_relaxed))
        b_.purge_retired();
    }
    in_use(const in_use&) = delete;
    in_use& operator=(const in_use&) = delete;

   private:
    const backend& b_;
  };

  void purge_retired() const noexcept {
    std::vector<std::shared_ptr<detail::bdb::database>> doomed;
    {
      std::lock_guard<detail::fork_safe_mutex> lock(swap_mutex_);
      if (users_.load(std::memory_order_seq_cst) != 0) return;
      doomed.swap(retired_);
      has_retired_.store(false, std::memory_order_relaxed);
    }
    // Destroyed outside the mutex: closing an environment joins its threads.
    for (auto& d : doomed) keep_if_foreign(d);
  }

  /// A parent's database (and environment), in a child of fork(), is never destroyed: its
  /// condition variables still count the parent's waiting threads, which do not exist here, and
  /// destroying one would wait for them for ever. One set per fork() stays allocated.
  static void keep_if_foreign(std::shared_ptr<detail::bdb::database>& d) noexcept {
    using handle = std::shared_ptr<detail::bdb::database>;
    if (!d || d->generation() == detail::fork_generation()) return;
    if (new (std::nothrow) handle(std::move(d)) != nullptr) return;
    // Out of memory: a few static slots, never destroyed; past them, a hang is still better
    // avoided by keeping the reference inside `d` (whose owner is going away anyway).
    alignas(handle) static unsigned char spare[16][sizeof(handle)];
    static std::atomic<unsigned> used{0};
    const unsigned slot = used.fetch_add(1);
    if (slot < 16) new (spare[slot]) handle(std::move(d));
  }

  /// The database (shared by every handle of a dict in this process) whose read-modify-write
  /// function runs on this thread (see modify()).
  static const detail::bdb::database*& rmw_database() noexcept {
    thread_local const detail::bdb::database* db = nullptr;
    return db;
  }
  class rmw_scope : detail::scoped_set<const detail::bdb::database*> {
   public:
    explicit rmw_scope(const detail::bdb::database* db) noexcept : scoped_set(rmw_database(), db) {}
  };

  /// Runs `op` on the current database, retrying it after a deadlock and redoing it after a
  /// break (recovery). A write passes its `ticket`: if the break interrupted its commit, the
  /// record the recovery made says whether that commit landed, and a landed write is not redone
  /// (see detail/bdb_landed_commits.hpp).
  template <class Op>
  int run(const char* origin, Op&& op, detail::bdb::commit_ticket* ticket = nullptr) const {
    in_use counted(*this);
    for (detail::bdb::backoff retry;;) {
      detail::bdb::database& d = current();
      detail::bdb::environment& env = d.env();
      if (rmw_database() == &d)
        throw reentry_error(std::string("smisk::ipc: ") + origin +
                            " called from inside a read-modify-write function (update(), "
                            "compare_exchange(), ...) of the same dict on the same thread (through "
                            "another handle); it would wait for that transaction's own locks");
      if (!env.enter()) continue;  // broke meanwhile: current() reopens
      struct inside {
        detail::bdb::environment& env;
        ~inside() { env.leave(); }
      };
      int rc;
      {
        inside guard{env};
        // The environment was recovered since the break (a broken one is never entered again):
        // the recovery's record says whether the interrupted commit landed.
        if (ticket && ticket->in_doubt && landed(origin, env, *ticket)) return 0;
        rc = op(d);
      }
      if (rc == 0 || rc == DB_NOTFOUND || rc == DB_KEYEXIST) return rc;
      if (detail::bdb::is_retryable(rc)) {
        retry(rc == DB_LOCK_NOTGRANTED);
      } else if (rc == DB_RUNRECOVERY) {
        // A dead process left it inconsistent: leave it (see environment::abort_waits), recover
        // and redo.
        env.abort_waits();
      } else {
        detail::bdb::raise(origin, rc);
      }
    }
  }

  /// Counts records (stopping at the first if `first_only`) without copying them.
  std::size_t walk(bool first_only) const {
    std::size_t n = 0;
    // DB_DBT_PARTIAL with dlen 0: position only, copy nothing.
    scan(
        DB_DBT_PARTIAL, [&] { n = 0; },
        [&](const DBT&, const DBT&) {
          ++n;
          return !first_only;
        });
    return n;
  }

  /// Walks the database with a read-committed cursor (retried from the start, after `restart()`,
  /// on deadlock), calling on_record(key, value) until it returns false. `dbt_flags` are the
  /// flags of both DBTs; DB_DBT_REALLOC memory is freed here.
  template <class Restart, class OnRecord>
  void scan(u_int32_t dbt_flags, Restart&& restart, OnRecord&& on_record) const {
    run("DBC->get", [&](detail::bdb::database& d) {
      restart();
      std::shared_lock<std::shared_mutex> no_truncate(d.cursor_mutex());
      DBC* cursor = nullptr;
      int rc = detail::bdb::guarded(
          d, [&] { return d.handle()->cursor(d.handle(), nullptr, &cursor, DB_READ_COMMITTED); });
      if (rc != 0) return rc;
      DBT k, v;
      std::memset(&k, 0, sizeof k);
      std::memset(&v, 0, sizeof v);
      k.flags = v.flags = dbt_flags;
      while ((rc = detail::bdb::guarded(d, [&] { return cursor->get(cursor, &k, &v, DB_NEXT); })) ==
             0)
        if (!on_record(k, v)) break;
      if (dbt_flags & DB_DBT_REALLOC) {
        std::free(k.data);
        std::free(v.data);
      }
      int close_rc = detail::bdb::guarded(d, [&] { return cursor->close(cursor); });
      if (rc == DB_NOTFOUND || rc == 0) rc = close_rc;
      return rc;
    });
  }

  int write(const char* origin, std::string_view key, std::string_view value, u_int32_t flags) {
    DBT k = detail::bdb::make_dbt(key);
    DBT v = detail::bdb::make_dbt(value);
    return write_transaction(
        origin, detail::bdb::write_need(key.size(), value.size()), space_kind::grows,
        [&](detail::bdb::database& d, DB_TXN* txn, detail::bdb::space_use& space) {
          if (space.tight()) {
            // The old value's size: what the overwrite logs, and what it frees.
            std::uint64_t old = 0;
            int rc = detail::bdb::stored_size(d, txn, k, old);
            if (rc != 0 && rc != DB_NOTFOUND) return rc;
            const bool exists = rc == 0;
            if (exists && (flags & DB_NOOVERWRITE)) return DB_KEYEXIST;
            const std::uint64_t before = exists ? key.size() + old : 0;
            const std::uint64_t after = key.size() + value.size();
            rc = space.confirm(detail::bdb::write_need(key.size(), value.size(), old),
                               after > before ? after - before : 0);
            if (rc != 0) return rc;
          }
          return detail::bdb::guarded(
              d, [&] { return d.handle()->put(d.handle(), txn, &k, &v, flags); });
        });
  }

  using space_kind = detail::bdb::space_guard::kind;

  /// One attempt of modify() inside its transaction: get with DB_RMW, `step`, then put or del
  /// and commit. In a home short of space, a value that gets longer (or a new key) is written on
  /// credit; one that does not (a counter) needs none (see detail/bdb_space.hpp).
  template <class F>
  int modify_once(detail::bdb::database& d, detail::bdb::transaction& txn, DBT& k, F& step,
                  std::string& current_value, std::string& out, detail::bdb::space_use& space,
                  detail::bdb::commit_ticket& ticket) {
    DB* db = d.handle();
    DBT v;
    std::memset(&v, 0, sizeof v);
    v.flags = DB_DBT_USERMEM;
    thread_local std::string key_copy;
    DBT lookup = detail::bdb::lookup_dbt(d, detail::bdb::bytes_of(k), key_copy);
    int rc;
    for (;;) {
      v.data = current_value.data();
      v.ulen = static_cast<u_int32_t>(current_value.size());
      rc = detail::bdb::guarded(d, [&] { return db->get(db, txn.get(), &lookup, &v, DB_RMW); });
      if (rc != DB_BUFFER_SMALL) break;
      current_value.resize(v.size);
    }
    if (rc != 0 && rc != DB_NOTFOUND) return rc;
    const bool exists = rc == 0;
    std::string_view old(current_value.data(), exists ? v.size : 0);
    modify_action action;
    {
      // Any handle of this dict used from inside `step` on this thread would wait for this
      // transaction's own locks: run() refuses it.
      rmw_scope inside(&d);
      action = step(exists ? &old : nullptr, out);
    }
    if (action == modify_action::keep) return txn.commit();
    if (action == modify_action::store) {
      DBT w = detail::bdb::make_dbt(out);  // a value too large throws before credit is taken
      const std::uint64_t before = exists ? k.size + old.size() : 0;
      const std::uint64_t after = std::uint64_t{k.size} + out.size();
      rc = space.confirm(detail::bdb::write_need(k.size, out.size(), old.size()),
                         after > before ? after - before : 0);
      if (rc != 0) return rc;
      rc = detail::bdb::guarded(d, [&] { return db->put(db, txn.get(), &k, &w, 0); });
      if (rc == 0) rc = space.grew();  // the transaction aborts
    } else {
      rc = erase_sized(d, txn.get(), k, old.size(), space);
    }
    return rc != 0 ? rc : commit(d, txn, ticket);
  }

  /// Erases `k` in `txn`. In a home short of space its value's size is read first (without
  /// copying it): the erase's log must fit, and the bytes it frees become credit for writes.
  static int erase(detail::bdb::database& d, DB_TXN* txn, DBT& k, detail::bdb::space_use& space) {
    std::uint64_t size = 0;
    if (space.counting()) {
      const int rc = detail::bdb::stored_size(d, txn, k, size);
      if (rc != 0) return rc;
    }
    return erase_sized(d, txn, k, size, space);
  }

  /// Erases `k`, whose value has `size` bytes, in `txn`; in a home short of space, only if the
  /// erase's log fits, and what it frees is credit once it commits.
  static int erase_sized(detail::bdb::database& d, DB_TXN* txn, DBT& k, std::uint64_t size,
                         detail::bdb::space_use& space) {
    if (space.counting()) {
      const int rc = space.confirm(detail::bdb::erase_need(k.size, size), 0);
      if (rc != 0) return rc;
      space.freed(std::uint64_t{k.size} + size);
    }
    return detail::bdb::guarded(d, [&] { return d.handle()->del(d.handle(), txn, &k, 0); });
  }

  /// For clear() in a home short of space: erases up to 256 records or 64 kB of them in one
  /// transaction, each checked against the space left. @returns 0 if it erased some,
  /// DB_NOTFOUND once there are none.
  int erase_batch() {
    constexpr std::size_t max_records = 256;
    constexpr std::size_t max_bytes = std::size_t{64} << 10;
    return write_transaction(
        "DBC->del", detail::bdb::erase_need(0, max_bytes), space_kind::shrinks,
        [&](detail::bdb::database& d, DB_TXN* txn, detail::bdb::space_use& space) {
          std::shared_lock<std::shared_mutex> no_truncate(d.cursor_mutex());
          DBC* cursor = nullptr;
          int rc = detail::bdb::guarded(
              d, [&] { return d.handle()->cursor(d.handle(), txn, &cursor, 0); });
          if (rc != 0) return rc;
          DBT k, v;
          std::memset(&k, 0, sizeof k);
          std::memset(&v, 0, sizeof v);
          k.flags = v.flags = DB_DBT_REALLOC;
          std::size_t records = 0, bytes = 0;
          while (records < max_records && bytes < max_bytes) {
            rc = detail::bdb::guarded(
                d, [&] { return cursor->get(cursor, &k, &v, DB_NEXT | DB_RMW); });
            if (rc != 0) break;
            rc = space.confirm(detail::bdb::erase_need(k.size, v.size), 0);
            if (rc != 0) break;  // the records erased so far are committed
            rc = detail::bdb::guarded(d, [&] { return cursor->del(cursor, 0); });
            if (rc != 0) break;
            ++records;
            bytes += k.size + v.size;
            space.freed(std::uint64_t{k.size} + v.size);
          }
          std::free(k.data);
          std::free(v.data);
          const int close_rc = detail::bdb::guarded(d, [&] { return cursor->close(cursor); });
          if ((rc == DB_NOTFOUND || rc == ENOSPC) && records > 0) rc = 0;
          return rc != 0 ? rc : close_rc;
        });
  }

  /// Runs `change(d, txn, space)` in a transaction of its own and commits it, through run():
  /// exactly once across breaks. `change` puts its libdb call under detail::bdb::guarded itself
  /// (and takes no lock inside it: a fault leaves the guard by siglongjmp). A write that the
  /// home's filesystem has no room for (`need`) is refused with size_error before
  /// it runs; in a home short of space, `change` confirms the real sizes with `space`, and the
  /// write is aborted if it made the database file longer (see detail/bdb_space.hpp).
  template <class Change>
  int write_transaction(const char* origin, detail::bdb::space_need need, space_kind kind,
                        Change&& change) {
    detail::bdb::commit_ticket ticket;
    return run(
        origin,
        [&](detail::bdb::database& d) {
          detail::bdb::space_use space(d, kind);
          int rc = space.reserve(need);
          if (rc != 0) return rc;
          {
            detail::bdb::transaction txn(d.env().handle());
            rc = txn.begin_error();
            if (rc == 0) rc = change(d, txn.get(), space);
            if (rc == 0) rc = space.grew();  // aborted
            if (rc == 0) rc = commit(d, txn, ticket);
          }
          space.settle(rc, ticket.in_doubt);
          return rc;
        },
        &ticket);
  }

  /// Commits a write transaction, keeping in `ticket` what identifies its commit record: if the
  /// commit returns DB_RUNRECOVERY, run() looks it up after recovery. The transaction is
  /// explicit (not DB_AUTO_COMMIT) only to know its id: the same work for Berkeley DB.
  static int commit(detail::bdb::database& d, detail::bdb::transaction& txn,
                    detail::bdb::commit_ticket& ticket) {
    ticket.envid = d.env().envid();
    ticket.txnid = txn.get()->id(txn.get());
    const int rc = txn.commit();
    ticket.in_doubt = rc == DB_RUNRECOVERY;
    if (rc == 0) d.env().note_write();
    return rc;
  }

  /// For a write whose commit a break interrupted, once the environment is a recovered one:
  /// whether that commit landed (then the write is done). @throws engine_error if no recovery
  /// recorded it (see detail/bdb_landed_commits.hpp).
  static bool landed(const char* origin, const detail::bdb::environment& env,
                     detail::bdb::commit_ticket& ticket) {
    const auto outcome = detail::bdb::look_up_commit(env.home(), ticket);
    if (outcome == detail::bdb::commit_outcome::unknown)
      throw engine_error(std::string("smisk::ipc: ") + origin +
                         ": the environment broke during this write's commit and no recovery "
                         "recorded whether it landed (this thread stayed away over too many "
                         "recoveries); the write may or may not be applied");
    ticket.in_doubt = false;
    auto& counter = outcome == detail::bdb::commit_outcome::landed
                        ? detail::bdb::stats().writes_found_landed
                        : detail::bdb::stats().writes_redone;
    counter.fetch_add(1, std::memory_order_relaxed);
    return outcome == detail::bdb::commit_outcome::landed;
  }

  options options_;
  std::string key_type_;
  std::string value_type_;
  mutable detail::fork_safe_mutex swap_mutex_;  // owner_, retired_ and the store of current_
  mutable std::shared_ptr<detail::bdb::database> owner_;
  mutable std::vector<std::shared_ptr<detail::bdb::database>> retired_;
  mutable std::atomic<bool> has_retired_{false};
  mutable std::atomic<int> users_{0};
  mutable std::atomic<detail::bdb::database*> current_{nullptr};
};

/// `bsddb::shared_dict<K, V>`: a shared_dict on Berkeley DB.
template <class K, class V>
using shared_dict = ::smisk::ipc::shared_dict<K, V, backend>;

}  // namespace smisk::ipc::bsddb
