// smisk-ipc: a Berkeley DB transaction that aborts unless committed.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>

#include "robust_mutex.hpp"

namespace smisk::ipc::detail::bdb {

/// A transaction that aborts unless committed. Berkeley DB frees DB_TXN whether or not commit
/// succeeds, so the handle is dropped before the call.
class transaction {
 public:
  /// `flags`: txn_begin's, e.g. DB_TXN_NOWAIT (a lock conflict fails at once, with
  /// DB_LOCK_DEADLOCK, instead of queueing behind the holder).
  explicit transaction(DB_ENV* env, u_int32_t flags = 0) : env_(env) {
    int rc =
        robust::call_guarded(env_, [&] { return env_->txn_begin(env_, nullptr, &txn_, flags); });
    if (rc != 0) {
      txn_ = nullptr;
      rc_ = rc;
    }
  }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  ~transaction() {
    if (DB_TXN* t = txn_) robust::call_guarded(env_, [t] { return t->abort(t); });
  }
  [[nodiscard]] int begin_error() const noexcept { return rc_; }
  [[nodiscard]] DB_TXN* get() const noexcept { return txn_; }
  int commit() noexcept {
    DB_TXN* t = txn_;
    txn_ = nullptr;
    return robust::call_guarded(env_, [t] { return t->commit(t, 0); });
  }

 private:
  DB_ENV* env_;
  DB_TXN* txn_ = nullptr;
  int rc_ = 0;
};

}  // namespace smisk::ipc::detail::bdb
