// smisk-ipc: one Berkeley DB environment (DB_ENV) per home and process, its watchdog and
// checkpoints. SPDX-License-Identifier: MIT
#pragma once

#include <db.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../bsddb_options.hpp"
#include "bdb_checkpoint_state.hpp"
#include "bdb_env_config.hpp"
#include "bdb_errors.hpp"
#include "bdb_home_files.hpp"
#include "bdb_landed_commits.hpp"
#include "bdb_liveness.hpp"
#include "bdb_space_guard.hpp"
#include "bdb_stats.hpp"
#include "home_lease.hpp"
#include "posix.hpp"
#include "robust_mutex.hpp"

namespace smisk::ipc::detail::bdb {

/// Blocks the asynchronous signals in the library's own threads, so that a signal sent to the
/// process (SIGTERM, SIGHUP) reaches one of the application's threads.
inline void block_signals_in_this_thread() noexcept {
  sigset_t set;
  ::sigfillset(&set);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) ::sigdelset(&set, sig);
  (void)::pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

/// Whether the process's write number `n` (from 0) should take a checkpoint: every 64 writes
/// (the first included, so that a process that writes less still takes its turn), if the home
/// has written `interval` bytes of log since its last checkpoint (any process's), or if
/// `log_stat` (DB_ENV->log_stat) cannot say (a libdb without statistics: txn_checkpoint applies
/// the threshold itself). By log volume, not by write count: 4,096 writes of 1 KB values wrote
/// 18 MB of log, which a home on a 64 MB /dev/shm could not hold. Also used by bench/.
template <class LogStat>
bool checkpoint_due(std::uint64_t n, LogStat&& log_stat, std::uint64_t interval) {
  if ((n & 63) != 0) return false;
  DB_LOG_STAT* st = nullptr;
  if (log_stat(&st) != 0 || !st) return true;
  const std::uint64_t since =
      std::uint64_t{st->st_wc_mbytes} * (std::uint64_t{1} << 20) + st->st_wc_bytes;
  std::free(st);  // malloc's (the library's environments set_alloc malloc; the benches' default)
  return since >= interval;
}

/// The cache an environment is made with: `wanted` (at least 1 MiB), at most an eighth of what
/// the home's filesystem has free. On tmpfs the cache region is memory of that filesystem, and a
/// 32 MiB cache on Docker's 64 MB /dev/shm left little room for data.
inline std::size_t cache_size_for(std::size_t wanted, const std::string& home) noexcept {
  constexpr std::size_t least = std::size_t{1} << 20;
  space_reading r;
  if (read_space(home, r) && r.usable() / 8 < wanted)
    wanted = static_cast<std::size_t>(r.usable() / 8);
  return wanted < least ? least : wanted;
}

/// One DB_ENV per home and process, shared by every dict of that home.
class environment {
 public:
  /// Opens the environment of a home; the caller holds the home's gate. `recover` runs Berkeley
  /// DB recovery (only safe when no other process uses the environment, or when every other
  /// process will notice the panic that recovery leaves in the old environment and reopen).
  /// `retired_envid`: the id of the environment that recovery replaces, whose commits found in
  /// the log are recorded for the threads a break interrupted (bdb_landed_commits.hpp).
  environment(std::shared_ptr<home_lease> lease, const bsddb::options& o, bool recover,
              std::uint64_t epoch, std::uint32_t retired_envid = 0)
      : lease_(std::move(lease)),
        home_(lease_->home()),
        space_(home_, o.mode),
        generation_(fork_generation()),
        epoch_(epoch) {
    // Before the first environment: libdb's process-shared mutexes become robust, so that a
    // process killed while holding one makes the others fail (and recover) instead of hang.
    if (!robust::install() && o.require_crash_safety)
      throw crash_safety_error(std::string("smisk::ipc: cannot make Berkeley DB survive processes "
                                           "killed inside it in this process (robust mutexes ") +
                               robust::status() +
                               "); set bsddb::options::require_crash_safety = false to open "
                               "the dict without that protection");
    if (!robust::fault_handler_installed.load() && o.require_crash_safety)
      throw crash_safety_error(
          "smisk::ipc: the fault guard (a SIGSEGV/SIGBUS handler for libdb calls) could not be "
          "installed; set bsddb::options::require_crash_safety = false to open the dict without "
          "that protection");
    robust::broken_check.store(&environment_known_broken, std::memory_order_release);
    // libdb's heap memory of this environment comes from its own arena, freed whole when a
    // broken environment is released (robust_heap.hpp); from the DB_ENV itself on.
    if (robust::install_heap())
      robust::arena_of.store(&arena_of_environment, std::memory_order_release);
    robust::arena_scope making(&checkpoints_->heap);
    int rc = ::db_env_create(&env_, 0);
    if (rc != 0) raise("db_env_create", rc);
    env_->app_private = checkpoints_.get();  // for is_alive and the arena
    try {
      // Recovery's own checkpoint must not remove the log files whose commits are recorded
      // below; log removal is switched on after that.
      const u_int32_t flags = configure(o, !recover) | (recover ? DB_RECOVER : 0u);
      // Before the recovery: which environments' commits it records (see
      // bdb_landed_commits.hpp).
      const std::vector<std::uint32_t> landed_targets =
          recover ? begin_recovery(home_, retired_envid, o.mode) : std::vector<std::uint32_t>{};
      // Inside a library call: the mutexes it creates are made robust, the descriptors it opens
      // are recorded (see robust_mutex.hpp), and a fault on half-made regions becomes a panic.
      rc = robust::call_guarded(env_, [&] {
        return env_->open(env_, lease_->home().c_str(), flags, static_cast<int>(o.mode));
      });
      if (rc != 0) raise("DB_ENV->open", rc, lease_->home());
      if (recover) {
        // Before anyone writes: which commits of the retired environment landed. Should that
        // fail, a thread interrupted in its commit gets commit_outcome::unknown, never a redo
        // of a write that may have landed.
        (void)record_landed_commits(env_, home_, landed_targets, o.mode);
        check(env_->log_set_config(env_, DB_LOG_AUTO_REMOVE, 1), "DB_ENV->log_set_config");
      } else {
        rc = run_failchk(env_);
        if (rc != 0) raise("DB_ENV->failchk", rc, lease_->home());
      }
    } catch (...) {
      close_handle();
      env_ = nullptr;
      throw;
    }
    stats().environments_opened.fetch_add(1, std::memory_order_relaxed);
    // Under the gate, the home's live region files are this environment's.
    robust::for_each_region(home_.c_str(), [this](std::uintptr_t lo, std::uintptr_t hi) {
      checkpoints_->regions.emplace_back(lo, hi);
    });
    checkpoints_->regenv = open_primary_region(home_, O_RDONLY);
    envid_ = regenv_word(checkpoints_->regenv.get(), regenv_envid_offset);
    watchdog_ = start_library_thread([this] {
      block_signals_in_this_thread();
      watch();
    });
  }

  environment(const environment&) = delete;
  environment& operator=(const environment&) = delete;

  ~environment() { shutdown(); }

  /// Closes the DB_ENV and leaves the home. Idempotent; a no-op for a handle inherited over fork.
  ///
  /// A checkpoint can hang for ever: libdb's page flush waits, without a mutex and without
  /// looking at the panic flag, for a page that a dead process had latched. The checkpoint
  /// thread is then left where it is and the DB_ENV is abandoned (never closed: closing would
  /// unmap what the thread reads); its home is still left, so a temporary home is removed.
  void shutdown() noexcept {
    if (generation_ != fork_generation()) {
      // Inherited over fork(): a parent thread may have held shutdown_mutex_ at the moment of
      // fork(). Only the child's single reference (the last shared_ptr) gets here; the parent's
      // threads do not exist in this process and their mutexes may be held by them for ever:
      // touch nothing of libdb.
      if (!env_) return;
      if (watchdog_.joinable()) watchdog_.detach();
      if (checkpointer_.joinable()) checkpointer_.detach();
      lease_.reset();
      env_ = nullptr;
      return;
    }
    std::lock_guard<std::mutex> lock(shutdown_mutex_);
    if (!env_) return;
    bool abandon = false;
    {
      abandon = !stop_threads();
      if (abandon) {
        // The thread is stuck inside libdb (a checkpoint in a broken environment usually gets
        // out within a few wait slices): it releases the environment itself when it does, so
        // that abandoned environments do not pile up.
        if (broken()) {
          std::lock_guard<std::mutex> lock(checkpoints_->mutex);
          if (checkpoints_->exited)
            checkpoints_->release(env_);
          else
            checkpoints_->release_on_exit = true;
        }
        stats().environments_abandoned.fetch_add(1, std::memory_order_relaxed);
      } else {
        if (broken()) {
          release_broken();
        } else {
          close_handle();
        }
      }
    }
    // The last process out of a temporary home removes it. A broken environment keeps its
    // lease until the object goes: dicts of this process may still point to it (they move to
    // the new environment at their next call), and while they exist this process is a member;
    // dropping the membership here let the last dict of the new environment, closing, remove a
    // home whose other dicts were still open (all their data lost).
    if (!broken()) lease_.reset();
    env_ = nullptr;
  }

  /// At exit (see registry::at_exit): ends the library's threads and writes the log buffer
  /// out, closing nothing. Idempotent.
  void quiesce() noexcept {
    if (generation_ != fork_generation()) return;
    std::lock_guard<std::mutex> lock(shutdown_mutex_);
    if (!env_ || quiesced_) return;
    quiesced_ = true;
    stop_threads();
    DB_ENV* e = env_;
    if (!broken()) robust::call_guarded(e, [e] { return e->log_flush(e, nullptr); });
  }

  [[nodiscard]] DB_ENV* handle() const noexcept { return env_; }
  [[nodiscard]] home_lease& lease() const noexcept { return *lease_; }
  [[nodiscard]] std::shared_ptr<home_lease> lease_ptr() const noexcept { return lease_; }
  [[nodiscard]] const std::string& home() const noexcept { return home_; }
  [[nodiscard]] unsigned generation() const noexcept { return generation_; }
  /// Whether the environment needs recovery (a dead process left it inconsistent: failchk or an
  /// operation said DB_RUNRECOVERY). A broken environment is never used again by this process.
  [[nodiscard]] bool broken() const noexcept {
    return checkpoints_->broken.load(std::memory_order_seq_cst);
  }
  void mark_broken() noexcept { checkpoints_->broken.store(true, std::memory_order_seq_cst); }
  /// After DB_RUNRECOVERY: marks the environment broken; waits of this process inside it fail
  /// from now on, and the calling thread forgets the mutexes it still holds there.
  void abort_waits() noexcept { checkpoints_->abort_waits(); }
  [[nodiscard]] std::uint64_t epoch() const noexcept { return epoch_; }
  /// Berkeley DB's id of this environment (REGENV.envid), as its commit records carry it.
  [[nodiscard]] std::uint32_t envid() const noexcept { return envid_; }

  /// Operations announce themselves, so that a broken environment is closed only once no thread
  /// of this process is inside it. @returns false (and enters nothing) if it is broken.
  [[nodiscard]] bool enter() noexcept {
    inflight_.fetch_add(1, std::memory_order_seq_cst);
    if (!broken()) return true;
    inflight_.fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }
  void leave() noexcept {
    completed_.fetch_add(1, std::memory_order_relaxed);
    inflight_.fetch_sub(1, std::memory_order_seq_cst);
  }
  /// Waits until no thread is inside; @returns false on timeout.
  bool drain(std::chrono::milliseconds limit) const noexcept {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (inflight_.load(std::memory_order_seq_cst) != 0) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return true;
  }

  /// Called after each committed write: takes a checkpoint when checkpoint_due() says so (every
  /// checkpoint_interval() of log, see bdb_space_guard.hpp), in the writing thread, before the
  /// write returns. Not in a thread of the library's: a process that ended (_exit(), SIGKILL)
  /// while that thread was still flushing what its last writes left died inside libdb holding
  /// its mutexes, and every other process had to recover; done here, a process whose calls have
  /// returned holds nothing. The cost: one write in many pauses to write the pages dirtied since
  /// the last checkpoint (a few milliseconds on tmpfs), on the writer's core rather than another.
  /// One thread of the process at a time; the others go on. A checkpoint that meets a page a
  /// dead process latched waits until the watchdog declares the environment broken (then
  /// DB_RUNRECOVERY, and this write, already committed, still returns).
  void note_write() noexcept {
    const std::uint64_t n = writes_.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t interval = space_.checkpoint_bytes();
    if (!checkpoint_due(
            n,
            [this](DB_LOG_STAT** st) {
              return robust::call_guarded(env_, [&] { return env_->log_stat(env_, st, 0); });
            },
            interval))
      return;
    checkpoint(static_cast<u_int32_t>(interval >> 10), 0, false);
  }

  /// The free space of the home's filesystem, as writes of this process see it.
  [[nodiscard]] space_guard& space() noexcept { return space_; }

  /// For a write short of space: two checkpoints in a row, after which libdb removes the log
  /// files that no open transaction still needs (all but the last when none is open). Waits for
  /// a checkpoint another thread or process is taking (another process's at most 2 s, see
  /// checkpoint()).
  void make_room() noexcept {
    checkpoint(0, DB_FORCE, true);
    checkpoint(0, DB_FORCE, true);
    space_.measure_again();
  }

 private:
  /// DB_ENV->txn_checkpoint in the calling thread (see note_write). One thread of this process
  /// at a time (`wait`: after the one taking it; else not at all), and one process of the home
  /// at a time (space_guard::begin_checkpoint): libdb holds its checkpoint mutex for the whole
  /// page flush, so a process stopped (SIGSTOP) inside its checkpoint would otherwise hold up
  /// every writer of the home whose checkpoint fell due. Never in a broken environment.
  void checkpoint(u_int32_t kbytes, u_int32_t flags, bool wait) noexcept {
    std::unique_lock<std::mutex> one(checkpoint_mutex_, std::defer_lock);
    if (wait)
      one.lock();
    else if (!one.try_lock())
      return;
    if (broken() || !space_.begin_checkpoint(wait)) return;
    checkpointing_.store(true, std::memory_order_seq_cst);
    // A checkpoint meets pages that writers latched for a moment: short sleeps, counted for the
    // watchdog (robust_guard.hpp).
    const bool quick = robust::quick_yields;
    robust::quick_yields = true;
    robust::quick_yield_count = &checkpoint_yields_;
    const int rc =
        robust::call_guarded(env_, [&] { return env_->txn_checkpoint(env_, kbytes, 0, flags); });
    robust::quick_yield_count = nullptr;
    robust::quick_yields = quick;
    checkpointing_.store(false, std::memory_order_seq_cst);
    space_.end_checkpoint();
    if (rc == 0) stats().checkpoints.fetch_add(1, std::memory_order_relaxed);
    if (rc == DB_RUNRECOVERY) abort_waits();
  }

  /// The environment as configure_environment() makes it, with this library's memory and
  /// messages. @returns the flags for DB_ENV->open.
  u_int32_t configure(const bsddb::options& o, bool remove_logs) {
    // Memory that libdb hands to the library (DB_DBT_MALLOC and DB_DBT_REALLOC records) is
    // malloc's, freed with free(), never the environment's arena.
    check(env_->set_alloc(env_, &::malloc, &::realloc, &::free), "DB_ENV->set_alloc");
    env_->set_errcall(env_, &on_bdb_error);
    env_->set_msgcall(env_, &on_bdb_message);
    env_config c;
    c.cache_bytes = cache_size_for(o.cache_size, home_);
    c.durability = o.durability;
    c.remove_logs = remove_logs;
    c.is_alive = &is_alive;
    const env_setup s = configure_environment(env_, c);
    check(s.rc, s.failed);
    return s.open_flags;
  }
  static void check(int rc, const char* origin) {
    if (rc != 0) raise(origin, rc);
  }

  /// The checkpoint thread: the last checkpoint of a persistent home at close (see
  /// stop_checkpoints). A thread of its own because it can hang in an environment that a dead
  /// process broke (see shutdown()), and closing must not. Never in a broken environment.
  static void checkpoint_loop(std::shared_ptr<checkpoint_state> state, DB_ENV* env) {
    block_signals_in_this_thread();
    robust::quick_yields = true;
    std::unique_lock<std::mutex> lock(state->mutex);
    state->cv.wait(lock, [&] { return state->stopping; });
    if (state->final && !state->broken.load()) {
      state->inside = true;
      lock.unlock();
      const int rc = [&] {
        library_work working;
        return robust::call_guarded(env, [&] { return env->txn_checkpoint(env, 0, 0, 0); });
      }();
      if (rc == 0) stats().checkpoints.fetch_add(1, std::memory_order_relaxed);
      if (rc == DB_RUNRECOVERY) state->abort_waits();
      lock.lock();
      state->inside = false;
    }
    state->exited = true;
    if (state->release_on_exit) state->release(env);
    state->cv.notify_all();
  }

  /// The checkpoint thread starts at close, for the last checkpoint; called with
  /// checkpoints_->mutex held.
  void start_checkpointer_locked() noexcept {
    if (checkpointer_.joinable()) return;
    try {
      checkpointer_ =
          start_library_thread([state = checkpoints_, env = env_] { checkpoint_loop(state, env); });
    } catch (...) {
      // No thread: no background checkpoints (logs are kept until one succeeds).
    }
  }

  /// DB_ENV->close of a healthy (or half-opened) environment, then its arena is handed back
  /// with whatever libdb did not free itself.
  void close_handle() noexcept {
    DB_ENV* e = env_;
    robust::call_guarded(e, [e] { return e->close(e, 0); });
    checkpoints_->heap.release();
  }

  /// Leaves a broken environment without DB_ENV->close. Closing frees the process's shared
  /// structures through the regions' allocator, and a process killed inside that allocator
  /// leaves free lists that the free walks for ever. Instead, the descriptors libdb opened for it
  /// are closed (recorded through the GOT patch, see robust::close_descriptors_of) and its
  /// regions are unmapped directly (no thread of this process is inside any more; they are other
  /// processes' garbage, and recovery has already removed their files), and libdb's heap memory
  /// of its handles (DB_ENV, DB, cursors: 15-25 kB) is freed with its arena (robust_heap.hpp).
  void release_broken() noexcept {
    if (inflight_.load(std::memory_order_seq_cst) != 0) return;  // leave it mapped
    checkpoints_->release(env_);
  }

  /// Ends the watchdog and the checkpoint thread (see stop_checkpoints), once. @returns false
  /// if the checkpoint thread is stuck (it is then detached).
  bool stop_threads() noexcept {
    if (threads_stopped_) return !threads_abandoned_;
    threads_stopped_ = true;
    {
      std::lock_guard<std::mutex> w(watch_mutex_);
      stopping_ = true;
    }
    watch_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    threads_abandoned_ = !stop_checkpoints();
    if (threads_abandoned_) {
      if (checkpointer_.joinable()) checkpointer_.detach();
    } else if (checkpointer_.joinable()) {
      checkpointer_.join();
    }
    return !threads_abandoned_;
  }

  /// Ends the checkpoint thread (after a last checkpoint of a persistent home). @returns false
  /// if it is stuck inside a checkpoint: for 100 ms in a broken environment, else for 3 s.
  bool stop_checkpoints() noexcept {
    std::unique_lock<std::mutex> lock(checkpoints_->mutex);
    checkpoints_->stopping = true;
    checkpoints_->final = lease_->persistent();
    if (!checkpointer_.joinable()) {
      if (!checkpoints_->final || broken()) return true;  // no thread, and nothing left to do
      start_checkpointer_locked();                        // for the last checkpoint
      if (!checkpointer_.joinable()) return true;
    }
    checkpoints_->cv.notify_all();
    const auto deadline = std::chrono::steady_clock::now() +
                          (broken() ? std::chrono::milliseconds(100) : std::chrono::seconds(3));
    return checkpoints_->cv.wait_until(lock, deadline, [this] { return checkpoints_->exited; });
  }

  /// A process killed while holding locks or inside a transaction leaves them held, and the
  /// others would wait forever. Every watch interval this thread runs failchk, which aborts a
  /// dead process's transactions and frees its locks, so that waiters go on.
  void watch() {
    std::uint64_t last_completed = 0;
    std::uint64_t last_yields = 0;
    int idle_ticks = 0;
    int stuck_ticks = 0;
    std::unique_lock<std::mutex> lock(watch_mutex_);
    while (!watch_cv_.wait_for(lock, watch_interval, [this] { return stopping_; })) {
      if (broken()) continue;  // recover() takes it from here
      library_work working;
      // failchk only when an operation of this process has made no progress for a whole
      // interval (it may be waiting for a dead process), and every few seconds regardless.
      // Running it all the time would cost CPU, and a process that exits (_exit) while its
      // watchdog is inside failchk looks to the others like one that died inside Berkeley DB,
      // which forces a recovery.
      std::uint64_t done = completed_.load(std::memory_order_relaxed);
      bool stuck = inflight_.load(std::memory_order_relaxed) > 0 && done == last_completed;
      last_completed = done;
      // A write taking a checkpoint (which can take long: a home on a disk, fsync) is stuck only
      // if the checkpoint sleeps, waiting for a latched page; writing pages is progress.
      const std::uint64_t yields = checkpoint_yields_.load(std::memory_order_relaxed);
      if (stuck && checkpointing_.load(std::memory_order_seq_cst) && yields == last_yields)
        stuck = false;
      last_yields = yields;
      stuck_ticks = stuck ? stuck_ticks + 1 : 0;
      if (!stuck) checkpoints_->dead_seen.store(false, std::memory_order_relaxed);
      if (!stuck && ++idle_ticks < failchk_every_ticks) continue;
      idle_ticks = 0;
      int rc = run_failchk(env_);
      if (rc == 0 && stuck_ticks >= stuck_panic_ticks &&
          checkpoints_->dead_seen.load(std::memory_order_relaxed)) {
        // Still stuck, and failchk met a dead process but found nothing to do: it treats a
        // process that died while blocked on a lock as harmless, yet that process may have held
        // a page latch (a shared latch, which cannot be robust) that everyone now waits for.
        // Panic the environment: every process recovers.
        robust::call_guarded(env_,
                             [this] { return env_->set_flags(env_, DB_PANIC_ENVIRONMENT, 1); });
        rc = DB_RUNRECOVERY;
      }
      if (rc == 0) continue;
      stats().failchk_errors.fetch_add(1, std::memory_order_relaxed);
      if (rc == DB_RUNRECOVERY) {
        // Threads of this process blocked inside the broken environment leave it with
        // DB_RUNRECOVERY (and then recover) instead of waiting for a dead process. Only now,
        // once: this process has no newer environment of the home mapped yet.
        abort_waits();
      }
    }
  }

  std::shared_ptr<home_lease> lease_;
  const std::string home_;
  space_guard space_;
  unsigned generation_;
  DB_ENV* env_ = nullptr;
  std::uint64_t epoch_;
  std::uint32_t envid_ = 0;
  std::atomic<std::uint64_t> writes_{0};
  std::mutex checkpoint_mutex_;                      // one checkpoint at a time in this process
  std::atomic<bool> checkpointing_{false};           // one is being taken (for the watchdog)
  std::atomic<std::uint64_t> checkpoint_yields_{0};  // its sleeps (see watch)
  std::shared_ptr<checkpoint_state> checkpoints_ = std::make_shared<checkpoint_state>();
  std::atomic<int> inflight_{0};
  std::atomic<std::uint64_t> completed_{0};
  std::mutex shutdown_mutex_;
  std::mutex watch_mutex_;
  std::condition_variable watch_cv_;
  bool stopping_ = false;
  bool quiesced_ = false;           // under shutdown_mutex_
  bool threads_stopped_ = false;    // under shutdown_mutex_
  bool threads_abandoned_ = false;  // under shutdown_mutex_
  std::thread watchdog_;
  std::thread checkpointer_;
};

}  // namespace smisk::ipc::detail::bdb
