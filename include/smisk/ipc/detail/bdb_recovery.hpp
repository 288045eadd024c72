// smisk-ipc: what this process does when an environment breaks: take it out of service, drain it,
// retire it, and reopen the home, recovering it once per break. SPDX-License-Identifier: MIT
//
// The states of a home's environment in one process, and what moves it on:
//
//   in service   Operations enter it (environment::enter) and leave it.
//        |
//        v
//   broken       A process died inside libdb and left it inconsistent. Noticed by
//                 - a robust mutex: its owner died (EOWNERDEAD, robust_mutex.hpp), libdb panics
//                   and the operation gets DB_RUNRECOVERY; backend::run (bsddb.hpp) then calls
//                   environment::abort_waits();
//                 - failchk: the watchdog (environment::watch) gets DB_RUNRECOVERY and calls
//                   abort_waits();
//                 - the watchdog's panic: an operation stuck while failchk meets a dead process
//                   but frees nothing (a page latch it held); environment::watch sets
//                   DB_PANIC_ENVIRONMENT, then abort_waits();
//                 - the fault guard: a fault inside a libdb call (robust::call_guarded,
//                   robust_guard.hpp) becomes a panic, then DB_RUNRECOVERY as above;
//                 - a checkpoint that gets DB_RUNRECOVERY (environment::checkpoint,
//                   checkpoint_loop), and another process's panic, which fails this process's
//                   waits (environment_known_broken, bdb_checkpoint_state.hpp);
//                 - joining it: registry::open retries after take_out_of_service().
//                abort_waits() (checkpoint_state::abort_waits) marks it broken: waits of this
//                process in its regions fail, enter() refuses, the dicts' next call
//                (backend::current) sees it and calls registry::recover.
//        |
//        v
//   draining     recovery::take_out_of_service: out of the registry's tables (no new entries,
//                the next open of the home makes a new environment), its epoch recorded as
//                broken, this process's membership of the home kept, then
//                environment::drain waits at most 10 s for the threads still inside.
//        |
//        v
//   retired      Still in take_out_of_service: database::shutdown and environment::shutdown
//                (release_broken: descriptors closed, regions unmapped, heap arena freed), or,
//                when threads stay inside, abandoned (never closed; environments_abandoned).
//        |
//        v
//   reopening    registry::open_environment takes the home's gate; recovery::open_under_gate
//   under the    decides by the epoch in the lock file: another process already recovered this
//   gate         epoch, so join (environment, then failchk); else recover: epoch+1 written with
//                "opening", retire_regions (bdb_home_files.hpp), environment with DB_RECOVER
//                (begin_recovery, then record_landed_commits: which commits of the retired
//                environment landed, bdb_landed_commits.hpp), the epoch written as done. A join
//                that fails recovers too. (A first open decides the same way: the first process
//                of a home nobody uses recovers it; one that finds no region files creates them.)
//        |
//        v
//   in service   The registry hands the new environment out; each dict moves to it at its next
//                call (backend::refresh), and a write the break interrupted asks the record
//                whether its commit landed (backend::run).
//
// One recovery per break and home, whichever process gets there first; every other process
// joins what it made.
#pragma once

#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../bsddb_options.hpp"
#include "bdb_database.hpp"
#include "bdb_env.hpp"
#include "bdb_errors.hpp"
#include "bdb_home_files.hpp"
#include "bdb_stats.hpp"
#include "home_lease.hpp"
#include "posix.hpp"

namespace smisk::ipc::detail::bdb {

/// The registry's tables of open environments and databases, by home and by home and name.
using environment_table = std::map<std::string, std::weak_ptr<environment>>;
using database_table = std::map<std::string, std::weak_ptr<database>>;

/// This process's part in the recovery of its homes (see the top of this file). Used by the
/// registry, under its mutex.
class recovery {
 public:
  /// Takes a broken environment out of service: no new operation enters it, its handles are
  /// closed once the operations inside have left (or abandoned), and the next open of its home
  /// opens a new environment (open_under_gate). A no-op if it is already out.
  void take_out_of_service(const std::shared_ptr<environment>& env, environment_table& environments,
                           database_table& databases) {
    if (env->generation() != fork_generation()) return;
    env->mark_broken();
    auto it = environments.find(env->home());
    if (it == environments.end() || it->second.lock() != env) return;  // already done
    environments.erase(it);
    broken_epochs_[env->home()] = env->epoch();
    // Keep this process's membership of the home across the reopen: were the lease released
    // here, a temporary home would look abandoned and be wiped.
    recovering_leases_[env->home()] = env->lease_ptr();
    std::vector<std::shared_ptr<database>> dbs;
    for (auto d = databases.begin(); d != databases.end();) {
      auto db = d->second.lock();
      if (db && &db->env() == env.get()) {
        dbs.push_back(std::move(db));
        d = databases.erase(d);
      } else {
        ++d;
      }
    }
    // Threads of this process still inside the environment leave it with an error (robust
    // mutexes, bounded waits); only then may its handles be closed. If they do not, the
    // handles are abandoned rather than closed under them.
    env->abort_waits();
    if (env->drain(std::chrono::seconds(10))) {
      for (auto& db : dbs) db->shutdown();
      env->shutdown();
    } else {
      stats().environments_abandoned.fetch_add(1, std::memory_order_relaxed);
      new std::shared_ptr<environment>(env);  // never closed
    }
  }

  /// Opens the environment of `home`; the caller holds its gate (`first`: the lease was just
  /// made, and this process is the first of it). The first process in runs recovery; a process
  /// whose environment broke runs it if no other process has since (the epoch in the lock file
  /// tells); anyone else joins and runs failchk.
  std::shared_ptr<environment> open_under_gate(const std::string& home,
                                               const std::shared_ptr<home_lease>& lease, bool first,
                                               const bsddb::options& o) {
    const auto state = lease->read_epoch();
    std::uint64_t epoch = state.epoch;
    auto broke = broken_epochs_.find(home);
    // A process that died while it created or recovered the environment left its regions half
    // made: joining them would wait (libdb retries for 18 s) and then fail. Recover instead.
    const bool broken =
        state.interrupted || (broke != broken_epochs_.end() && broke->second == epoch);
    // The first process of a home nobody uses recovers it too, routinely: a new home, one
    // closed cleanly, or one whose processes were all killed (whose log recovery replays).
    const bool first_open = first && lease->alone_at_open() && !broken;
    bool recover = first_open || broken;
    std::shared_ptr<environment> env;
    if (!recover) {
      // Without region files, this process creates the environment.
      struct stat st;
      const bool creating = ::stat((home + "/__db.001").c_str(), &st) != 0;
      if (creating) lease->write_epoch(epoch, true);
      try {
        env = std::make_shared<environment>(lease, o, false, epoch);
        if (creating) lease->write_epoch(epoch, false);
      } catch (const engine_error&) {
        // Joining failed: failchk found that a dead process left the environment inconsistent
        // (DB_RUNRECOVERY), or a process was killed while it created or recovered it ("unable
        // to join the environment"). This process holds the gate: it recovers.
        recover = true;
      }
    }
    if (recover) {
      lease->write_epoch(++epoch, true);
      const std::uint32_t retired_envid = retire_regions(home);
      env = std::make_shared<environment>(lease, o, true, epoch, retired_envid);
      lease->write_epoch(epoch, false);
      (first_open ? stats().first_open_recoveries : stats().recoveries)
          .fetch_add(1, std::memory_order_relaxed);
    }
    recovering_leases_.erase(home);
    return env;
  }

  /// At exit (see registry::at_exit): leaves the homes whose membership a recovery keeps.
  void leave_homes() noexcept {
    for (auto& entry : recovering_leases_) entry.second->leave();
  }

 private:
  /// The epoch of the environment that broke last in this process, by home: reopening recovers
  /// while the lock file still shows it.
  std::map<std::string, std::uint64_t> broken_epochs_;
  /// This process's membership of a home between a break and the reopening.
  std::map<std::string, std::shared_ptr<home_lease>> recovering_leases_;
};

}  // namespace smisk::ipc::detail::bdb
