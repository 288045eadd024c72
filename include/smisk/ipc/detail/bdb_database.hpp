// smisk-ipc: one open database (DB handle) of an environment, and its stored format record.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>

#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>

#include "../bsddb_options.hpp"
#include "../codec.hpp"
#include "../error.hpp"
#include "bdb_env.hpp"
#include "bdb_errors.hpp"
#include "bdb_key_order.hpp"
#include "bdb_retry.hpp"
#include "bdb_transaction.hpp"
#include "posix.hpp"
#include "robust_mutex.hpp"

namespace smisk::ipc::detail::bdb {

/// The bytes a DBT points to.
inline std::string_view bytes_of(const DBT& d) noexcept {
  return {static_cast<const char*>(d.data), d.size};
}

/// A DBT over `bytes`. Berkeley DB's sizes are 32-bit: a key or value of 4 GiB or more would be
/// cut to its size modulo 4 GiB, so it is refused before anything is changed.
/// @throws size_error
inline DBT make_dbt(std::string_view bytes) {
  if (bytes.size() > std::numeric_limits<u_int32_t>::max())
    throw size_error("smisk::ipc: a key or value of " + std::to_string(bytes.size()) +
                     " bytes is over Berkeley DB's limit of 4 GiB - 1; nothing was changed");
  DBT d;
  std::memset(&d, 0, sizeof d);
  d.data = const_cast<char*>(bytes.data());
  d.size = static_cast<u_int32_t>(bytes.size());
  return d;
}

/// One open database (DB handle) of an environment.
class database {
 public:
  database(std::shared_ptr<environment> env, const std::string& name, std::string_view key_type,
           std::string_view value_type, bsddb::access_method method, unsigned mode)
      : env_(std::move(env)), generation_(fork_generation()), method_(method) {
    DB_ENV* e = env_->handle();
    numeric_ = check_types(e, name, describe(key_type, value_type, method), mode);
    // Every libdb call on the library's environments runs inside a library call (here: it
    // enters the environment, which may allocate and lock its mutexes; see robust_mutex.hpp).
    int rc = robust::call_guarded(e, [&] { return ::db_create(&db_, e, 0); });
    if (rc != 0) raise("db_create", rc);
    if (numeric_) rc = db_->set_bt_compare(db_, numeric_order_for(key_type));
    if (rc != 0) {
      robust::call_guarded(e, [this] { return db_->close(db_, DB_NOSYNC); });
      raise("DB->set_bt_compare", rc);
    }
    DBTYPE type = method == bsddb::access_method::btree ? DB_BTREE : DB_HASH;
    rc = robust::call_guarded(e, [&] {
      return db_->open(db_, nullptr, name.c_str(), "data", type,
                       DB_CREATE | DB_THREAD | DB_AUTO_COMMIT, static_cast<int>(mode));
    });
    if (rc != 0) {
      robust::call_guarded(e, [this] { return db_->close(db_, DB_NOSYNC); });
      raise("DB->open", rc, env_->lease().home() + "/" + name);
    }
  }
  database(const database&) = delete;
  database& operator=(const database&) = delete;
  ~database() { shutdown(); }

  /// Closes the DB handle; later operations through it throw. Idempotent; a no-op for a handle
  /// inherited over fork.
  void shutdown() noexcept {
    // Inherited over fork(): nothing to close here, and shutdown_mutex_ may have been held by a
    // parent thread at the moment of fork().
    if (generation_ != fork_generation()) {
      closed_.store(true);
      return;
    }
    std::lock_guard<std::mutex> lock(shutdown_mutex_);
    if (closed_.exchange(true)) return;
    // Closing can wait for a page latch of a dead process: an operation for the watchdog, unless
    // the environment is already broken (its waits fail then).
    // A broken environment's handle is left behind, not closed: see environment::release_broken.
    if (env_->broken()) return;
    // Broken since the check: a recovering thread may release the environment (its handles'
    // memory included, see robust_heap.hpp) as soon as no thread is inside, so one that could
    // not enter must not touch the handle either.
    if (!env_->enter()) return;
    // The log buffer goes to the OS first: with durability none, commits do not write it, and the
    // pages are not flushed here either.
    DB_ENV* e = env_->handle();
    robust::call_guarded(e, [e] { return e->log_flush(e, nullptr); });
    // Without flushing the file (see check_types): the last checkpoint of a persistent home
    // writes the pages, and a temporary home is removed anyway.
    robust::call_guarded(env_->handle(), [this] { return db_->close(db_, DB_NOSYNC); });
    env_->leave();
  }
  [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_relaxed); }

  [[nodiscard]] DB* handle() const noexcept { return db_; }
  [[nodiscard]] environment& env() const noexcept { return *env_; }
  [[nodiscard]] const std::shared_ptr<environment>& env_ptr() const noexcept { return env_; }
  [[nodiscard]] unsigned generation() const noexcept { return generation_; }
  [[nodiscard]] bsddb::access_method method() const noexcept { return method_; }
  /// Whether the keys are in numeric order (bdb_key_order.hpp), by a comparison function.
  [[nodiscard]] bool numeric_order() const noexcept { return numeric_; }
  /// Cursors take it shared, truncate exclusive: DB->truncate fails while cursors are open.
  std::shared_mutex& cursor_mutex() const noexcept { return cursor_mutex_; }

 private:
  /// Records the key and value types of a new database, or checks them against an existing one.
  /// @returns whether the keys are in numeric order (a new btree of integer keys), rather than
  /// in byte order (any other dict, and a btree of integers made before the order existed).
  bool check_types(DB_ENV* e, const std::string& name, const type_description& described,
                   unsigned mode) {
    const std::string wanted = described.record();
    const bool numeric = !described.settings.empty() && described.settings.back().first == "order";
    const std::string byte_order = numeric ? byte_order_record(described) : std::string();
    DB* meta = nullptr;
    int rc = robust::call_guarded(e, [&] { return ::db_create(&meta, e, 0); });
    if (rc != 0) raise("db_create", rc);
    // DB_NOSYNC (as for every DB->close here): closing would otherwise flush the whole file's
    // dirty pages, and libdb waits for a page other processes have pinned by sleeping a whole
    // second at a time, here while this process holds the home's gate. The log makes every
    // committed write recoverable; checkpoints write the pages.
    std::unique_ptr<DB, void (*)(DB*)> guard(meta, [](DB* d) {
      robust::call_guarded(d->dbenv, [d] { return d->close(d, DB_NOSYNC); });
    });
    rc = robust::call_guarded(e, [&] {
      return meta->open(meta, nullptr, name.c_str(), "meta", DB_BTREE,
                        DB_CREATE | DB_THREAD | DB_AUTO_COMMIT, static_cast<int>(mode));
    });
    if (rc != 0) {
      std::string path = env_->lease().home() + "/" + name;
      if (rc == EINVAL || rc == ENOENT)
        throw type_mismatch("smisk::ipc: " + path +
                                " is not a smisk-ipc database (it has no \"meta\" sub-database)",
                            rc, "DB->open");
      raise("DB->open", rc, path);
    }
    const std::string key = "format";
    for (backoff retry;; retry()) {
      transaction txn(e);
      if (txn.begin_error()) raise("DB_ENV->txn_begin", txn.begin_error());
      DBT k = make_dbt(key);
      DBT v;
      std::memset(&v, 0, sizeof v);
      v.flags = DB_DBT_MALLOC;
      rc = robust::call_guarded(e, [&] { return meta->get(meta, txn.get(), &k, &v, DB_RMW); });
      std::string_view write = wanted;  // what the record is to say
      bool in_numeric_order = numeric;
      if (rc == 0) {
        std::string stored(bytes_of(v));
        std::free(v.data);
        tag_match match = match_tags(stored, wanted);
        if (match == tag_match::different && numeric) {
          // A btree of integer keys made before the numeric order keeps its byte order.
          const tag_match old = match_tags(stored, byte_order);
          if (old != tag_match::different) {
            match = old;
            write = byte_order;
            in_numeric_order = false;
          }
        }
        if (match == tag_match::same) return in_numeric_order;
        if (match == tag_match::different)
          throw type_mismatch("smisk::ipc: the dict " + env_->lease().home() + "/" + name +
                              " was created as\n" + stored + "and is now opened as\n" + wanted +
                              same_name_hint(name));
        // Written before enum tags named the enum: upgraded to the current description.
      } else if (is_retryable(rc)) {
        continue;
      } else if (rc != DB_NOTFOUND) {
        raise("DB->get", rc, "meta");
      }
      DBT w = make_dbt(write);
      rc = robust::call_guarded(e, [&] { return meta->put(meta, txn.get(), &k, &w, 0); });
      if (rc == 0) rc = txn.commit();
      if (rc == 0) return in_numeric_order;
      if (!is_retryable(rc)) raise("DB->put", rc, "meta");
    }
  }

  std::shared_ptr<environment> env_;
  unsigned generation_;
  bsddb::access_method method_;
  bool numeric_ = false;
  DB* db_ = nullptr;
  mutable std::shared_mutex cursor_mutex_;
  std::mutex shutdown_mutex_;
  std::atomic<bool> closed_{false};
};

/// The key DBT of a lookup (DB->get, DB->exists, which is a get). With a comparison function of
/// our own (numeric order), DB->get may return the stored key that compared equal, and a
/// threaded handle then insists on memory that libdb may write: a copy of the key in
/// `scratch`. Otherwise the caller's bytes, which libdb only reads. (DB_DBT_READONLY, "never
/// write it", was tried instead: a waiter for a key whose DBT carried it then sometimes did not
/// wake up when the holder committed, 8 times in about 180 runs of the SIGSTOP test, against 0
/// in 150 without it.)
inline DBT lookup_dbt(const database& d, std::string_view key, std::string& scratch) {
  if (!d.numeric_order()) return make_dbt(key);
  scratch.assign(key.data(), key.size());
  DBT k = make_dbt(scratch);
  k.flags = DB_DBT_USERMEM;
  k.ulen = k.size;
  return k;
}

/// Runs one libdb call on the database's environment under the fault guard (see
/// robust::call_guarded): a fault on structures a dead process left half made panics the
/// environment and returns DB_RUNRECOVERY, which the caller handles as any other.
template <class F>
inline int guarded(const database& d, F&& f) noexcept {
  return robust::call_guarded(d.env().handle(), std::forward<F>(f));
}

}  // namespace smisk::ipc::detail::bdb
