// smisk-ipc: the options of a Berkeley DB shared dict (smisk::ipc::bsddb::options).
// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <string>

namespace smisk::ipc::bsddb {

/// The Berkeley DB access method of a dict.
enum class access_method {
  hash,   ///< DB_HASH: the fastest point lookups; iteration in hash order
  btree,  ///< DB_BTREE: iteration in key order (by the encoded bytes)
};

/// What a write that returned survives.
enum class durability_level {
  none,           ///< DB_TXN_NOSYNC: a crash that forces recovery may lose recent writes
  process_crash,  ///< DB_TXN_WRITE_NOSYNC (default): survives the process being killed
  system_crash,   ///< fsync at every commit: survives power loss, at disk-flush speed
};

/// Settings of a Berkeley DB shared dict; an aggregate, so set fields by name.
struct options {
  /// Sets both the home (its directory) and the database name (its base name), as in smisk.
  std::string filename{};
  /// The environment directory. Default: a private directory on /dev/shm (else $TMPDIR or
  /// /tmp) named after the program and the user.
  std::string homedir{};
  /// The database file name inside the home. Default: the program's name.
  std::string name{};
  /// Permission bits of the files the library creates (directories it creates are 0700).
  unsigned mode = 0600;
  /// hash (default) or btree (key-ordered iteration).
  access_method method = access_method::hash;
  /// false: a temporary dict, removed when the last process using its home closes it or exits.
  /// true: kept on disk across restarts.
  bool persistent = false;
  /// Berkeley DB cache in bytes; only the process that creates the environment sets it.
  std::size_t cache_size = std::size_t{32} << 20;
  /// What a returned write survives.
  durability_level durability = durability_level::process_crash;
  /// Opening fails with crash_safety_error where the library cannot make libdb survive a process
  /// killed inside it (robust mutexes through libdb's GOT, the fault guard): a statically linked
  /// or foreign libdb, an unsupported CPU. false: open anyway, without that protection
  /// (runtime_status() says what is missing).
  bool require_crash_safety = true;
};

}  // namespace smisk::ipc::bsddb
