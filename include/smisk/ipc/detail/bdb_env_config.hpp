// smisk-ipc: how a Berkeley DB environment is configured as shared_dict configures it, in one
// place for the library (bdb_env.hpp) and for bench/'s raw C API baselines.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>
#include <sys/types.h>

#include <cerrno>
#include <cstddef>

#include "../bsddb_options.hpp"

namespace smisk::ipc::detail::bdb {

/// The size of a log file: they are removed one by one after the checkpoints, so that the log a
/// home keeps stays a few megabytes.
inline constexpr u_int32_t log_file_bytes = 2u << 20;

/// DB_ENV->set_isalive's callback: whether a process (that held a thread in the environment) is
/// alive.
using is_alive_function = int (*)(DB_ENV*, pid_t, db_threadid_t, u_int32_t);

/// What configure_environment() takes. The defaults are shared_dict's with default options.
struct env_config {
  /// The cache in bytes (the library passes cache_size_for() of the option).
  std::size_t cache_bytes = bsddb::options{}.cache_size;
  /// What a returned write survives (the commit's log write and sync).
  bsddb::durability_level durability = bsddb::options{}.durability;
  /// Whether libdb removes log files once no checkpoint needs them. The library turns it off
  /// while it recovers (the commits it records are read from those files), and on afterwards.
  bool remove_logs = true;
  /// false: locking only, no transactions and no log (bench/'s "unsafe" baselines, Berkeley DB's
  /// fastest mode, whose page splits can deadlock and leave the database corrupt).
  bool transactions = true;
  /// With transactions: for failchk, which frees what dead processes held (required).
  is_alive_function is_alive = nullptr;
};

/// What configure_environment() did: `rc` 0 and the flags to pass to DB_ENV->open (DB_RECOVER
/// is the caller's to add), or the error of the DB_ENV method named by `failed`.
struct env_setup {
  int rc = 0;
  const char* failed = nullptr;
  u_int32_t open_flags = 0;
};

/// Configures a created, not yet opened, DB_ENV as shared_dict does: the cache, deadlock
/// detection on every conflict, lock tables for many threads and processes, and, with
/// transactions, thread tracking for failchk, the log (a 1 MiB buffer, files of log_file_bytes,
/// removed automatically) and the commit's durability. Transactions, because Berkeley DB warns
/// that writes under locking alone can deadlock during page splits and leave the database
/// inconsistent. The checkpoint policy is checkpoint_due()'s (bdb_env.hpp).
[[nodiscard]] inline env_setup configure_environment(DB_ENV* env, const env_config& c) noexcept {
  env_setup s;
  const auto step = [&s](int rc, const char* origin) {
    if (rc != 0) {
      s.rc = rc;
      s.failed = origin;
    }
    return rc == 0;
  };
  const std::size_t gigabyte = std::size_t{1} << 30;
  if (!step(env->set_cachesize(env, static_cast<u_int32_t>(c.cache_bytes >> 30),
                               static_cast<u_int32_t>(c.cache_bytes & (gigabyte - 1)), 1),
            "DB_ENV->set_cachesize") ||
      !step(env->set_lk_detect(env, DB_LOCK_DEFAULT), "DB_ENV->set_lk_detect") ||
      !step(env->set_lk_max_locks(env, 20000), "DB_ENV->set_lk_max_locks") ||
      !step(env->set_lk_max_objects(env, 20000), "DB_ENV->set_lk_max_objects") ||
      !step(env->set_lk_max_lockers(env, 4000), "DB_ENV->set_lk_max_lockers"))
    return s;
  // DB_REGISTER is not used: it recovers (and so panics every live process) whenever any process
  // exited without closing, even one that held nothing. DB_FAILCHK at open is not used either:
  // with Berkeley DB 5.3's pthread mutexes its internal failchk fails with "unable to destroy
  // mutex" (EBUSY) after a process _exit()ed, where an explicit failchk() after the open
  // succeeds.
  s.open_flags = DB_CREATE | DB_INIT_MPOOL | DB_INIT_LOCK | DB_THREAD;
  if (!c.transactions) return s;
  if (!c.is_alive) {
    step(EINVAL, "DB_ENV->set_isalive");
    return s;
  }
  if (!step(env->set_tx_max(env, 1000), "DB_ENV->set_tx_max") ||
      !step(env->set_thread_count(env, 4000), "DB_ENV->set_thread_count") ||
      !step(env->set_isalive(env, c.is_alive), "DB_ENV->set_isalive") ||
      !step(env->set_lg_bsize(env, 1u << 20), "DB_ENV->set_lg_bsize") ||
      !step(env->set_lg_max(env, log_file_bytes), "DB_ENV->set_lg_max") ||
      !step(env->log_set_config(env, DB_LOG_AUTO_REMOVE, c.remove_logs ? 1 : 0),
            "DB_ENV->log_set_config"))
    return s;
  if (c.durability == bsddb::durability_level::none)
    step(env->set_flags(env, DB_TXN_NOSYNC, 1), "DB_ENV->set_flags");
  else if (c.durability == bsddb::durability_level::process_crash)
    step(env->set_flags(env, DB_TXN_WRITE_NOSYNC, 1), "DB_ENV->set_flags");
  s.open_flags |= DB_INIT_LOG | DB_INIT_TXN;
  return s;
}

}  // namespace smisk::ipc::detail::bdb
