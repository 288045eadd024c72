// smisk-ipc: the process-wide table of open environments and databases, and where a dict lives;
// what happens when an environment breaks is bdb_recovery.hpp's. SPDX-License-Identifier: MIT
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "../bsddb_options.hpp"
#include "../error.hpp"
#include "bdb_database.hpp"
#include "bdb_env.hpp"
#include "bdb_home_files.hpp"
#include "bdb_recovery.hpp"
#include "home_lease.hpp"
#include "posix.hpp"
#include "type_tags.hpp"

namespace smisk::ipc::detail::bdb {

/// Resolved location of a dict.
struct location {
  std::string home;
  std::string name{};
  bool default_home = false;
};

inline location locate(const bsddb::options& o) {
  location loc;
  if (!o.filename.empty()) {
    std::string f = o.filename;
    if (f[0] != '/') {
      char cwd[4096];
      if (::getcwd(cwd, sizeof cwd)) f = std::string(cwd) + "/" + f;
    }
    loc.home = dirname_of(f);
    loc.name = basename_of(f);
    if (loc.name.empty()) throw home_error("smisk::ipc: filename " + o.filename + " names no file");
  } else {
    loc.name = o.name.empty() ? program_name() : o.name;
    if (o.homedir.empty()) {
      loc.home = temp_root() + "/smisk-ipc." + user_name() + "." + program_name();
      loc.default_home = true;
    } else {
      loc.home = o.homedir;
    }
  }
  loc.home = canonical_home(loc.home);
  if (loc.name.find('/') != std::string::npos || loc.name == "." || loc.name == ".." ||
      starts_with(loc.name, "__db.") || starts_with(loc.name, "log.") ||
      starts_with(loc.name, "smisk-ipc."))
    throw home_error("smisk::ipc: " + loc.name + " cannot be a database name");
  return loc;
}

/// The process-wide table of open environments and databases, so that every handle of a home
/// shares one DB_ENV and every handle of a database one DB. Entries of a parent process are
/// forgotten after fork().
class registry {
 public:
  /// The registry of this process. A child of fork() gets a fresh one: the parent's belongs to
  /// the parent (a parent thread may have held its mutex, or been changing its maps, at the
  /// moment of fork()), and the child never touches it. Never destroyed: handles may outlive
  /// static objects.
  static registry& instance() { return *current().load(std::memory_order_acquire); }

  std::shared_ptr<database> open(const bsddb::options& o, std::string_view key_type,
                                 std::string_view value_type) {
    location loc = locate(o);
    std::lock_guard<std::mutex> lock(mutex_);
    // An environment can break while it is being joined (a process died in it): recover and
    // open again, as operations do.
    for (int attempt = 1;; ++attempt) {
      try {
        return open_locked(loc, o, key_type, value_type);
      } catch (const engine_error& e) {
        if (e.code() != DB_RUNRECOVERY || attempt == 50) throw;
        if (auto env = environments_[loc.home].lock()) recover_locked(env);
      }
    }
  }

  /// Takes a broken environment out of service in this process: no new operation enters it,
  /// its handles are closed once the operations inside have left, and the next open() of its
  /// home opens a new environment (running recovery if no other process has yet). See
  /// recovery::take_out_of_service.
  void recover(const std::shared_ptr<environment>& env) {
    std::lock_guard<std::mutex> lock(mutex_);
    recover_locked(env);
  }

  /// At exit(): nothing is closed, since other threads may still be inside a dict or about to
  /// call one while the process ends (closing under them made them throw, and an uncaught
  /// exception in a thread is std::terminate). Instead the library's threads stop (after a last
  /// checkpoint of a persistent home), the log buffer is written, and this process leaves its
  /// homes: the last process out of a temporary home removes it, while this process's handles
  /// stay usable (on unlinked files) until it ends.
  void at_exit() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    if (generation_ != fork_generation()) return;
    for (auto& entry : environments_)
      if (auto env = entry.second.lock()) env->quiesce();
    for (auto& entry : leases_)
      if (auto lease = entry.second.lock()) lease->leave();
    recovery_.leave_homes();
  }

 private:
  std::shared_ptr<database> open_locked(const location& loc, const bsddb::options& o,
                                        std::string_view key_type, std::string_view value_type) {
    std::string db_key = loc.home + '\0' + loc.name;
    if (auto found = databases_[db_key].lock()) {
      if (found->method() != o.method || found->env().lease().persistent() != o.persistent)
        throw type_mismatch("smisk::ipc: " + loc.home + "/" + loc.name +
                            " is already open in this process with another access method or "
                            "persistence");
      std::string wanted = format_record(key_type, value_type, o.method);
      if (wanted != formats_[db_key])
        throw type_mismatch("smisk::ipc: the dict " + loc.home + "/" + loc.name +
                            " is open in this process as\n" + formats_[db_key] +
                            "and is now opened as\n" + wanted + same_name_hint(loc.name));
      return found;
    }
    std::shared_ptr<environment> env = environments_[loc.home].lock();
    if (env && env->broken()) {
      recover_locked(env);
      env.reset();
    }
    if (!env) {
      env = open_environment(loc, o);
      environments_[loc.home] = env;
      register_exit_handler();
    } else if (env->lease().persistent() != o.persistent) {
      throw home_error("smisk::ipc: home " + loc.home +
                       " is open in this process with persistent = " +
                       (env->lease().persistent() ? "true" : "false"));
    }
    home_lease::gate_guard gate(env->lease());
    env->lease().record_database(loc.name);
    // Opening a database takes locks that a dead process may hold: it counts as an operation,
    // so that the watchdog runs failchk when it is stuck, as for any other.
    if (!env->enter()) raise("DB->open", DB_RUNRECOVERY, loc.home + "/" + loc.name);
    struct inside {
      environment& env;
      ~inside() { env.leave(); }
    } guard{*env};
    auto db = std::make_shared<database>(env, loc.name, key_type, value_type, o.method, o.mode);
    databases_[db_key] = db;
    formats_[db_key] = format_record(key_type, value_type, o.method);
    return db;
  }

  void recover_locked(const std::shared_ptr<environment>& env) {
    recovery_.take_out_of_service(env, environments_, databases_);
  }

  /// Opens the environment of a home under its gate, recovering it if need be (see
  /// recovery::open_under_gate).
  std::shared_ptr<environment> open_environment(const location& loc, const bsddb::options& o) {
    std::shared_ptr<home_lease> lease = leases_[loc.home].lock();
    std::optional<home_lease::gate_guard> gate;
    bool first = false;
    if (!lease) {
      lease = std::make_shared<home_lease>(loc.home, o.persistent, o.mode, loc.default_home);
      first = true;  // the lease holds the gate until unlock_gate()
    } else {
      gate.emplace(*lease);
    }
    struct release_gate {
      home_lease* lease;
      ~release_gate() {
        if (lease) lease->unlock_gate();
      }
    } release{first ? lease.get() : nullptr};
    std::shared_ptr<environment> env = recovery_.open_under_gate(loc.home, lease, first, o);
    leases_[loc.home] = lease;
    return env;
  }

  static std::atomic<registry*>& current() {
    static std::atomic<registry*> r{[] {
      (void)fork_generation();  // handler order: the generation counter's child handler first
      ::pthread_atfork(nullptr, nullptr, [] {
        // The parent's registry, and every object of the parent it leads to, are left as they
        // are (their descriptors are dealt with by lock_fd_table, their threads do not exist
        // here); the child's dicts open their own.
        current().store(new registry, std::memory_order_release);
      });
      return new registry;
    }()};
    return r;
  }

  void register_exit_handler() {
    static const bool registered = [] {
      std::atexit([] { registry::instance().at_exit(); });
      return true;
    }();
    (void)registered;
  }

  std::mutex mutex_;
  unsigned generation_ = fork_generation();
  environment_table environments_;
  database_table databases_;
  std::map<std::string, std::string> formats_;
  std::map<std::string, std::weak_ptr<home_lease>> leases_;
  recovery recovery_;  // the broken environments' way back (bdb_recovery.hpp)
};

}  // namespace smisk::ipc::detail::bdb
