// smisk-ipc: Berkeley DB environments and databases shared by every handle of a process.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#if DB_VERSION_MAJOR != 5 || DB_VERSION_MINOR != 3
#error \
    "smisk-ipc needs Berkeley DB 5.3 (Debian: libdb5.3-dev or libdb5.3++-dev): its crash safety relies on libdb 5.3's calls and region layout"
#endif

#include "../codec.hpp"
#include "../error.hpp"
#include "lock_fds.hpp"
#include "posix.hpp"
#include "robust_mutex.hpp"

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

namespace smisk::ipc::detail::bdb {

/// The last message Berkeley DB reported on this thread (through set_errcall).
inline std::string& last_message() {
  thread_local std::string message;
  return message;
}

extern "C" inline void on_bdb_error(const DB_ENV*, const char*, const char* msg) {
  last_message() = msg ? msg : "";
}
extern "C" inline void on_bdb_message(const DB_ENV*, const char*) {}

[[noreturn]] inline void raise(const char* origin, int rc, const std::string& context = {}) {
  std::string what = std::string("smisk::ipc: ") + origin + " failed: " + db_strerror(rc);
  if (!context.empty()) what += " (" + context + ")";
  if (!last_message().empty()) {
    what += ": " + last_message();
    last_message().clear();
  }
  throw engine_error(what, rc, origin);
}

/// Counters of what the library did, per process.
struct statistics {
  std::atomic<std::uint64_t> deadlock_retries{0};
  std::atomic<std::uint64_t> checkpoints{0};
  std::atomic<std::uint64_t> environments_opened{0};
  std::atomic<std::uint64_t> stale_homes_cleaned{0};
  std::atomic<std::uint64_t> homes_removed{0};
  std::atomic<std::uint64_t> failchk_errors{0};
  std::atomic<std::uint64_t> recoveries{0};
  std::atomic<std::uint64_t> environments_abandoned{0};
  std::atomic<std::uint64_t> lock_conflicts{0};
};
inline statistics& stats() {
  static statistics s;
  return s;
}

/// Whether a process exists and is not a zombie (killed, not yet reaped by its parent: it holds
/// nothing any more, but a signal can still be sent to it).
inline bool process_alive(pid_t pid) noexcept {
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  unique_fd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return true;  // no /proc: trust kill()
  char buf[512];
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n <= 0) return false;  // gone meanwhile
  buf[n] = '\0';
  const char* paren = std::strrchr(buf, ')');  // "pid (comm) S ...": comm may hold anything
  if (!paren || paren[1] != ' ') return true;
  return paren[2] != 'Z' && paren[2] != 'X';
}

inline void note_dead_thread(DB_ENV* env) noexcept;  // below

/// is_alive for failchk: this process, or another one that is neither gone nor a zombie. A dead
/// one is noted for the watchdog (see environment::watch).
extern "C" inline int is_alive(DB_ENV* env, pid_t pid, db_threadid_t, u_int32_t) {
  if (pid == ::getpid()) return 1;
  if (process_alive(pid)) return 1;
  note_dead_thread(env);
  return 0;
}

/// Exponential backoff for deadlock and lock-conflict retries.
class backoff {
 public:
  /// `conflict`: a lock was busy (DB_LOCK_NOTGRANTED), not a deadlock.
  void operator()(bool conflict = false) {
    (conflict ? stats().lock_conflicts : stats().deadlock_retries)
        .fetch_add(1, std::memory_order_relaxed);
    ++tries_;
    if (tries_ < 3) return;
    if (tries_ < 8) {
      ::sched_yield();
      return;
    }
    long ns = std::min(1000000L, 1000L << std::min(tries_ - 8, 10));
    ns = ns / 2 + static_cast<long>(::random() % (ns / 2 + 1));
    struct timespec ts = {0, ns};
    ::nanosleep(&ts, nullptr);
  }

 private:
  int tries_ = 0;
};

/// How often each process checks for dead processes that hold locks.
constexpr std::chrono::milliseconds watch_interval{100};
/// failchk runs at least every this many intervals (5 s), even when nothing seems stuck.
constexpr int failchk_every_ticks = 50;
/// An operation stuck this many intervals (0.5 s) while failchk meets a dead process but finds
/// nothing to clean up: the environment is declared broken (see environment::watch).
constexpr int stuck_panic_ticks = 5;

inline bool is_retryable(int rc) noexcept {
  return rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED;
}

// ---- the home: membership, cleanup, manifest --------------------------------------------------

constexpr const char* lock_file_name = "smisk-ipc.lock";
constexpr const char* manifest_file_name = "smisk-ipc.manifest";

/// What the library records in a home: whether it created the directory, whether the home is
/// persistent, and the database files it made there.
struct manifest {
  bool created_home = false;
  bool persistent = false;
  bool exists = false;
  std::vector<std::string> databases;

  static manifest read(const std::string& home) {
    manifest m;
    std::ifstream in(home + "/" + manifest_file_name);
    if (!in) return m;
    m.exists = true;
    std::string line;
    while (std::getline(in, line)) {
      if (line == "created-home") m.created_home = true;
      if (line == "persistent") m.persistent = true;
      if (starts_with(line, "database ")) m.databases.push_back(line.substr(9));
    }
    return m;
  }
  void write(const std::string& home, unsigned mode) const {
    std::string text = "smisk-ipc 1\n";
    if (created_home) text += "created-home\n";
    text += persistent ? "persistent\n" : "temporary\n";
    for (const auto& d : databases) text += "database " + d + "\n";
    std::string tmp = home + "/" + manifest_file_name + ".tmp";
    unique_fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                        static_cast<mode_t>(mode)));
    if (!fd) throw_errno("cannot write " + tmp, "open");
    if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
      throw_errno("cannot write " + tmp, "write");
    fd.reset();
    if (::rename(tmp.c_str(), (home + "/" + manifest_file_name).c_str()) != 0)
      throw_errno("cannot write the manifest in " + home, "rename");
  }
  [[nodiscard]] bool has_database(const std::string& name) const {
    for (const auto& d : databases)
      if (d == name) return true;
    return false;
  }
};

/// Whether `name` is `prefix` followed by exactly `digits` decimal digits.
inline bool is_numbered_name(const std::string& name, const char* prefix, std::size_t digits) {
  const std::size_t n = std::strlen(prefix);
  return name.size() == n + digits && starts_with(name, prefix) &&
         name.find_first_not_of("0123456789", n) == std::string::npos;
}
/// Berkeley DB's region files: "__db." and three digits ("__db.001").
inline bool is_region_file_name(const std::string& name) {
  return is_numbered_name(name, "__db.", 3);
}
/// Berkeley DB's log files: "log." and ten digits ("log.0000000001").
inline bool is_log_file_name(const std::string& name) { return is_numbered_name(name, "log.", 10); }

/// Removes the library's own files from a temporary home, and the home if the library made it.
/// Only exact names: Berkeley DB's regions and logs, the databases the manifest lists, the lock
/// file and the manifest. A user's "log.txt" or "__db.notes" in a home they gave is theirs.
inline void remove_home_files(const std::string& home, const manifest& m) {
  for (const auto& name : list_dir(home)) {
    bool ours = is_region_file_name(name) || is_log_file_name(name) || m.has_database(name);
    if (ours) ::unlink((home + "/" + name).c_str());
  }
  ::unlink((home + "/" + manifest_file_name + ".tmp").c_str());
  ::unlink((home + "/" + manifest_file_name).c_str());
  ::unlink((home + "/" + lock_file_name).c_str());
  if (m.created_home && ::rmdir(home.c_str()) == 0)
    stats().homes_removed.fetch_add(1, std::memory_order_relaxed);
}

/// Retires the environment regions of a home before this process recovers it (under the gate):
/// marks the old environment dead, as Berkeley DB's own recovery does first (the panic word of
/// its primary region, after the region magic; every process still using it then gets
/// DB_RUNRECOVERY and reopens), and removes the region files, so that recovery creates fresh
/// regions. Berkeley DB's recovery would instead attach to the old regions and free their memory
/// through the regions' own allocator, whose free lists a process killed inside that allocator
/// leaves cyclic: the recovering process then loops for ever.
inline void retire_regions(const std::string& home) {
  constexpr std::uint32_t region_magic = 0x120897;  // DB_REGION_MAGIC, REGENV's first word
  {
    unique_fd primary(::open((home + "/__db.001").c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    std::uint32_t head[2] = {0, 0};
    if (primary && ::pread(primary.get(), head, sizeof head, 0) == sizeof head &&
        head[0] == region_magic) {
      const std::uint32_t panic = 1;  // REGENV's second word
      if (::pwrite(primary.get(), &panic, sizeof panic, sizeof(std::uint32_t)) != sizeof panic)
        throw_errno("cannot mark the old environment of " + home + " dead", "pwrite");
    }
  }
  std::vector<std::string> regions;
  for (const auto& name : list_dir(home)) {
    // Region files only (no database, log or registry file).
    if (is_region_file_name(name)) regions.push_back(name);
  }
  // The primary region (__db.001) last, as Berkeley DB does.
  std::sort(regions.rbegin(), regions.rend());
  for (const auto& name : regions) ::unlink((home + "/" + name).c_str());
}

/// This process's membership of a home. Every process using a home holds a shared lock on byte 1
/// of its lock file; byte 0 is the gate that serialises opening and closing. The kernel drops a
/// dead process's locks, so "no one else holds byte 1" means no live process uses the home.
class home_lease {
 public:
  home_lease(std::string home, bool persistent, unsigned mode, bool default_home)
      : home_(std::move(home)),
        persistent_(persistent),
        mode_(mode),
        generation_(fork_generation()) {
    bool created = default_home;
    gate_ = open_gate(&created);
    manifest m = manifest::read(home_);
    // Alone: no other open file description holds byte 1 (a child's inherited membership counts,
    // so a daemon's child keeps the temporary home its parent made).
    bool alone = ofd_lock(gate_.get(), 1, lock_kind::exclusive, false);
    if (alone && m.exists && !m.persistent) {
      // Left behind by processes that crashed: a temporary home starts clean.
      created = created || m.created_home;
      remove_home_files(home_, m);
      stats().stale_homes_cleaned.fetch_add(1, std::memory_order_relaxed);
      gate_ = open_gate(&created);
      if (!ofd_lock(gate_.get(), 1, lock_kind::exclusive, false))
        throw engine_error("smisk::ipc: home " + home_ + " was taken while it was being cleaned");
      m = manifest{};
    }
    if (alone) ofd_lock(gate_.get(), 1, lock_kind::none, false);
    if (m.exists && m.persistent != persistent_) {
      unlock_gate();
      throw home_error("smisk::ipc: home " + home_ + " holds " +
                       (m.persistent ? "persistent" : "temporary") +
                       " dicts; open it with persistent = " + (m.persistent ? "true" : "false"));
    }
    if (m.exists && created && !m.created_home) {
      // Another process reached the gate first, but this one made the directory.
      m.created_home = true;
      m.write(home_, mode_);
    }
    if (!m.exists) {
      m.created_home = created;
      m.persistent = persistent_;
      m.exists = true;
      m.write(home_, mode_);
    }
    alone_ = alone;
    // Membership on a descriptor of its own, which never holds the gate: a child of fork() keeps
    // it (see lock_fds.hpp) without keeping the gate.
    users_ = lock_fd(home_ + "/" + lock_file_name, O_RDWR | O_NOFOLLOW, 0, home_, true);
    if (!users_) throw_errno("cannot open the lock file in " + home_, "open");
    ofd_lock(users_.get(), 1, lock_kind::shared, false);
    // A child of fork() now holds its own membership: the one inherited from its parent goes.
    lock_fd_table::instance().drop_inherited(home_);
  }

  home_lease(const home_lease&) = delete;
  home_lease& operator=(const home_lease&) = delete;

  /// Leaves the home; the last process out of a temporary home removes it.
  ~home_lease() { leave(); }

  /// Leaves the home now (at exit: see registry::at_exit). Idempotent.
  void leave() noexcept {
    if (generation_ != fork_generation()) return;  // a copy inherited over fork(): not ours
    if (left_.exchange(true)) return;
    try {
      // The home exists while this process is a member; never re-create it from here.
      lock_fd gate(home_ + "/" + lock_file_name, O_RDWR | O_NOFOLLOW, 0, home_, false);
      if (!gate) return;
      ofd_lock(gate.get(), 0, lock_kind::exclusive, true);
      users_.reset();
      lock_fd_table::instance().drop_inherited(home_);
      if (!persistent_ && ofd_lock(gate.get(), 1, lock_kind::exclusive, false))
        remove_home_files(home_, manifest::read(home_));
      ofd_lock(gate.get(), 0, lock_kind::none, false);
    } catch (...) {
      // A destructor only releases; a home we cannot reach is left for the next opener.
    }
  }

  /// Holds the gate while the environment and its databases are opened.
  class gate_guard {
   public:
    explicit gate_guard(const home_lease& lease)
        : fd_(lease.home_ + "/" + lock_file_name, O_RDWR | O_NOFOLLOW, 0, lease.home_, false) {
      if (!fd_) throw_errno("cannot open the lock file in " + lease.home_, "open");
      ofd_lock(fd_.get(), 0, lock_kind::exclusive, true);
    }
    ~gate_guard() {
      // Unlocked explicitly: a copy of the descriptor that a fork() made meanwhile must not keep
      // the gate (closing only drops this process's reference).
      try {
        ofd_lock(fd_.get(), 0, lock_kind::none, false);
      } catch (...) {
      }
    }
    gate_guard(const gate_guard&) = delete;
    gate_guard& operator=(const gate_guard&) = delete;

   private:
    lock_fd fd_;
  };

  void record_database(const std::string& name) {
    manifest m = manifest::read(home_);
    if (m.has_database(name)) return;
    m.databases.push_back(name);
    m.write(home_, mode_);
  }

  [[nodiscard]] const std::string& home() const noexcept { return home_; }
  [[nodiscard]] bool persistent() const noexcept { return persistent_; }
  [[nodiscard]] unsigned mode() const noexcept { return mode_; }
  /// Whether no other live process used the home when this process joined it.
  [[nodiscard]] bool alone_at_open() const noexcept { return alone_; }

  /// The recovery epoch (how many times the environment of this home was recovered) and
  /// whether the last process that created or recovered the environment finished: "<epoch>
  /// ready" or "<epoch> opening", as text in the lock file, read and written only under the gate.
  struct epoch_state {
    std::uint64_t epoch = 0;
    bool interrupted = false;  // "opening": that process died before it was done
  };
  [[nodiscard]] epoch_state read_epoch() const {
    char buf[48] = {};
    ssize_t n = ::pread(fd(), buf, sizeof buf - 1, 0);
    epoch_state st;
    if (n <= 0) return st;
    char* end = nullptr;
    st.epoch = std::strtoull(buf, &end, 10);
    st.interrupted = std::strncmp(end, " opening", 8) == 0;
    return st;
  }
  void write_epoch(std::uint64_t epoch, bool opening) const {
    // Fixed width, so that a shorter text never leaves the tail of a longer one behind.
    char text[40];
    int n = std::snprintf(text, sizeof text, "%20llu %s\n", static_cast<unsigned long long>(epoch),
                          opening ? "opening" : "ready  ");
    if (::pwrite(fd(), text, static_cast<std::size_t>(n), 0) != n)
      throw_errno("cannot write the lock file in " + home_, "pwrite");
  }
  [[nodiscard]] int fd() const noexcept { return users_ ? users_.get() : gate_.get(); }
  /// Releases the gate the constructor took (once).
  void unlock_gate() {
    if (!gate_) return;
    ofd_lock(gate_.get(), 0, lock_kind::none, false);
    gate_.reset();
  }

 private:
  /// Opens the lock file and takes the gate, retrying if the last process out removed the file
  /// (and perhaps the home). Sets *created if this process made the home directory.
  lock_fd open_gate(bool* created = nullptr) const {
    std::string path = home_ + "/" + lock_file_name;
    for (;;) {
      if (prepare_home(home_) && created) *created = true;
      lock_fd fd(path, O_RDWR | O_CREAT | O_NOFOLLOW, static_cast<mode_t>(mode_), home_, false);
      if (!fd) throw_errno("cannot open the lock file " + path, "open");
      ofd_lock(fd.get(), 0, lock_kind::exclusive, true);
      struct stat held, named;
      if (::fstat(fd.get(), &held) == 0 && held.st_nlink > 0 &&
          ::lstat(path.c_str(), &named) == 0 && named.st_ino == held.st_ino &&
          named.st_dev == held.st_dev)
        return fd;
      ofd_lock(fd.get(), 0, lock_kind::none, false);
    }
  }

  std::string home_;
  bool persistent_;
  unsigned mode_;
  unsigned generation_;
  bool alone_ = false;
  std::atomic<bool> left_{false};
  lock_fd gate_;   // holds the gate from construction until unlock_gate()
  lock_fd users_;  // holds byte 1 shared: this process's membership
};

// ---- the environment and its databases --------------------------------------------------------

/// What an environment shares with its checkpoint thread. The thread co-owns it, so that an
/// environment abandoned while the thread is stuck (see environment::shutdown) leaves it valid.
struct checkpoint_state {
  std::mutex mutex;
  std::condition_variable cv;
  bool wanted = false;    // a checkpoint was asked for
  bool stopping = false;  // the environment is being closed: end the thread
  bool final = false;     // with stopping: one last checkpoint (persistent homes)
  bool inside = false;    // the thread is inside DB_ENV->txn_checkpoint
  bool exited = false;
  /// A broken environment was left to the stuck thread: it releases it when it gets out.
  bool release_on_exit = false;
  std::atomic<bool> broken{false};     // the environment's broken flag
  std::atomic<bool> dead_seen{false};  // failchk met a dead process's thread (is_alive said so)
  /// The address ranges of the environment's regions in this process, recorded at open.
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> regions;

  /// Closes the descriptors libdb opened for a broken environment and unmaps its regions (see
  /// environment::release_broken); no thread of this process may be inside it.
  void release(DB_ENV* env) noexcept {
    robust::close_descriptors_of(env);
    for (const auto& range : regions)
      (void)robust::unmap_region(reinterpret_cast<void*>(range.first), range.second - range.first);
    regions.clear();
  }

  /// Marks the environment broken, declares its regions broken in this process (waits there
  /// fail) and drops what the calling thread holds there from its robust list (see
  /// robust_mutex.hpp).
  void abort_waits() noexcept {
    broken.store(true, std::memory_order_seq_cst);
    for (const auto& r : regions) robust::abort_waits_in(r.first, r.second);
    robust::forget_broken_holds();
  }
};

inline void note_dead_thread(DB_ENV* env) noexcept {
  if (auto* state = env ? static_cast<checkpoint_state*>(env->app_private) : nullptr)
    state->dead_seen.store(true, std::memory_order_relaxed);
}

/// For robust.hpp's __os_yield hook: whether this process knows the environment broken.
inline bool environment_known_broken(DB_ENV* env) noexcept {
  auto* state = env ? static_cast<checkpoint_state*>(env->app_private) : nullptr;
  return state && state->broken.load(std::memory_order_relaxed);
}

/// Blocks the asynchronous signals in the library's own threads, so that a signal sent to the
/// process (SIGTERM, SIGHUP) reaches one of the application's threads.
inline void block_signals_in_this_thread() noexcept {
  sigset_t set;
  ::sigfillset(&set);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) ::sigdelset(&set, sig);
  (void)::pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

/// One DB_ENV per home and process, shared by every dict of that home.
class environment {
 public:
  /// Opens the environment of a home; the caller holds the home's gate. `recover` runs Berkeley
  /// DB recovery (only safe when no other process uses the environment, or when every other
  /// process will notice the panic that recovery leaves in the old environment and reopen).
  environment(std::shared_ptr<home_lease> lease, const bsddb::options& o, bool recover,
              std::uint64_t epoch)
      : lease_(std::move(lease)),
        home_(lease_->home()),
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
    int rc = ::db_env_create(&env_, 0);
    if (rc != 0) raise("db_env_create", rc);
    env_->app_private = checkpoints_.get();  // for is_alive
    try {
      configure(o);
      // DB_REGISTER is not used: it recovers (and so panics every live process) whenever any
      // process exited without closing, even one that held nothing. DB_FAILCHK at open is not
      // used either: with Berkeley DB 5.3's pthread mutexes its internal failchk fails with
      // "unable to destroy mutex" (EBUSY) after a process _exit()ed, where an explicit
      // failchk() after the open succeeds.
      u_int32_t flags = DB_CREATE | DB_INIT_MPOOL | DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_TXN |
                        DB_THREAD | (recover ? DB_RECOVER : 0u);
      // Inside a library call: the mutexes it creates are made robust, the descriptors it opens
      // are recorded (see robust_mutex.hpp), and a fault on half-made regions becomes a panic.
      rc = robust::call_guarded(env_, [&] {
        return env_->open(env_, lease_->home().c_str(), flags, static_cast<int>(o.mode));
      });
      if (rc != 0) raise("DB_ENV->open", rc, lease_->home());
      if (recover) stats().recoveries.fetch_add(1, std::memory_order_relaxed);
      if (!recover) {
        rc = robust::call_guarded(env_, [this] { return env_->failchk(env_, 0); });
        if (rc != 0) raise("DB_ENV->failchk", rc, lease_->home());
      }
    } catch (...) {
      DB_ENV* e = env_;
      robust::call_guarded(e, [e] { return e->close(e, 0); });
      env_ = nullptr;
      throw;
    }
    stats().environments_opened.fetch_add(1, std::memory_order_relaxed);
    // Under the gate, the home's live region files are this environment's.
    robust::for_each_region(home_.c_str(), [this](std::uintptr_t lo, std::uintptr_t hi) {
      checkpoints_->regions.emplace_back(lo, hi);
    });
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
          DB_ENV* e = env_;
          robust::call_guarded(e, [e] { return e->close(e, 0); });
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

  /// Called after each committed write: now and then asks the checkpoint thread for a
  /// checkpoint, so that logs can be removed and recovery stays short. Operations never
  /// checkpoint themselves: a checkpoint can hang (see shutdown()).
  void note_write() {
    if ((writes_.fetch_add(1, std::memory_order_relaxed) & 4095) == 4095) {
      {
        std::lock_guard<std::mutex> lock(checkpoints_->mutex);
        checkpoints_->wanted = true;
        // Not once the threads were stopped (at exit: see quiesce()).
        if (!checkpoints_->stopping) start_checkpointer_locked();
      }
      checkpoints_->cv.notify_one();
    }
  }

 private:
  void configure(const bsddb::options& o) {
    env_->set_errcall(env_, &on_bdb_error);
    env_->set_msgcall(env_, &on_bdb_message);
    std::size_t cache =
        o.cache_size < (std::size_t{1} << 20) ? (std::size_t{1} << 20) : o.cache_size;
    check(env_->set_cachesize(env_, static_cast<u_int32_t>(cache >> 30),
                              static_cast<u_int32_t>(cache & ((std::size_t{1} << 30) - 1)), 1),
          "DB_ENV->set_cachesize");
    check(env_->set_lk_detect(env_, DB_LOCK_DEFAULT), "DB_ENV->set_lk_detect");
    check(env_->set_lk_max_locks(env_, 20000), "DB_ENV->set_lk_max_locks");
    check(env_->set_lk_max_objects(env_, 20000), "DB_ENV->set_lk_max_objects");
    check(env_->set_lk_max_lockers(env_, 4000), "DB_ENV->set_lk_max_lockers");
    check(env_->set_tx_max(env_, 1000), "DB_ENV->set_tx_max");
    check(env_->set_thread_count(env_, 4000), "DB_ENV->set_thread_count");
    check(env_->set_isalive(env_, &is_alive), "DB_ENV->set_isalive");
    check(env_->set_lg_bsize(env_, 1u << 20), "DB_ENV->set_lg_bsize");
    check(env_->set_lg_max(env_, 8u << 20), "DB_ENV->set_lg_max");
    check(env_->log_set_config(env_, DB_LOG_AUTO_REMOVE, 1), "DB_ENV->log_set_config");
    if (o.durability == bsddb::durability_level::none)
      check(env_->set_flags(env_, DB_TXN_NOSYNC, 1), "DB_ENV->set_flags");
    else if (o.durability == bsddb::durability_level::process_crash)
      check(env_->set_flags(env_, DB_TXN_WRITE_NOSYNC, 1), "DB_ENV->set_flags");
  }
  static void check(int rc, const char* origin) {
    if (rc != 0) raise(origin, rc);
  }

  /// The checkpoint thread: a checkpoint (if at least 1 MiB of log was written since the last)
  /// whenever one is asked for, and a last full one at close for persistent homes. Never in a
  /// broken environment.
  static void checkpoint_loop(std::shared_ptr<checkpoint_state> state, DB_ENV* env) {
    block_signals_in_this_thread();
    std::unique_lock<std::mutex> lock(state->mutex);
    for (;;) {
      state->cv.wait(lock, [&] { return state->stopping || state->wanted; });
      const bool last = state->stopping;
      const bool run = (last ? state->final : state->wanted) && !state->broken.load();
      state->wanted = false;
      if (run) {
        state->inside = true;
        lock.unlock();
        const int rc = [&] {
          library_work working;
          return robust::call_guarded(
              env, [&] { return env->txn_checkpoint(env, last ? 0 : 1024, 0, 0); });
        }();
        if (rc == 0) stats().checkpoints.fetch_add(1, std::memory_order_relaxed);
        if (rc == DB_RUNRECOVERY) state->abort_waits();
        lock.lock();
        state->inside = false;
      }
      if (last) {
        state->exited = true;
        if (state->release_on_exit) state->release(env);
        state->cv.notify_all();
        return;
      }
    }
  }

  /// The checkpoint thread starts with the first checkpoint asked for (a process that writes
  /// little never has one); called with checkpoints_->mutex held.
  void start_checkpointer_locked() noexcept {
    if (checkpointer_.joinable()) return;
    try {
      checkpointer_ =
          start_library_thread([state = checkpoints_, env = env_] { checkpoint_loop(state, env); });
    } catch (...) {
      // No thread: no background checkpoints (logs are kept until one succeeds).
    }
  }

  /// Ends the checkpoint thread (after a last checkpoint of a persistent home). @returns false
  /// if it is stuck inside a checkpoint: for 100 ms in a broken environment, else for 3 s.
  /// Leaves a broken environment without DB_ENV->close. Closing frees the process's shared
  /// structures through the regions' allocator, and a process killed inside that allocator
  /// leaves free lists that the free walks for ever. Instead, the descriptors libdb opened for it
  /// are closed (recorded through the GOT patch, see robust::close_descriptors_of) and its
  /// regions are unmapped directly (no thread of this process is inside any more; they are other
  /// processes' garbage, and recovery has already removed their files). What stays behind is
  /// libdb's heap memory of the handles (DB_ENV, DB: a few kilobytes per recovery).
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
      stuck_ticks = stuck ? stuck_ticks + 1 : 0;
      if (!stuck) checkpoints_->dead_seen.store(false, std::memory_order_relaxed);
      if (!stuck && ++idle_ticks < failchk_every_ticks) continue;
      idle_ticks = 0;
      int rc = robust::call_guarded(env_, [this] { return env_->failchk(env_, 0); });
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
  unsigned generation_;
  DB_ENV* env_ = nullptr;
  std::uint64_t epoch_;
  std::atomic<std::uint64_t> writes_{0};
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

/// The record in the "meta" database that remembers what a dict holds.
inline std::string format_record(std::string_view key_type, std::string_view value_type,
                                 bsddb::access_method method) {
  std::string r = "smisk-ipc 1\nkey ";
  r += key_type;
  r += "\nvalue ";
  r += value_type;
  r += "\nmethod ";
  r += method == bsddb::access_method::btree ? "btree" : "hash";
  r += "\n";
  return r;
}

inline DBT make_dbt(std::string_view bytes) noexcept {
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
    check_types(e, name, format_record(key_type, value_type, method), mode);
    // Every libdb call on the library's environments runs inside a library call (here: it
    // enters the environment, which may allocate and lock its mutexes; see robust_mutex.hpp).
    int rc = robust::call_guarded(e, [&] { return ::db_create(&db_, e, 0); });
    if (rc != 0) raise("db_create", rc);
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
    const bool entered = env_->enter();
    // The log buffer goes to the OS first: with durability none, commits do not write it, and the
    // pages are not flushed here either.
    DB_ENV* e = env_->handle();
    robust::call_guarded(e, [e] { return e->log_flush(e, nullptr); });
    // Without flushing the file (see check_types): the last checkpoint of a persistent home
    // writes the pages, and a temporary home is removed anyway.
    robust::call_guarded(env_->handle(), [this] { return db_->close(db_, DB_NOSYNC); });
    if (entered) env_->leave();
  }
  [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_relaxed); }

  [[nodiscard]] DB* handle() const noexcept { return db_; }
  [[nodiscard]] environment& env() const noexcept { return *env_; }
  [[nodiscard]] const std::shared_ptr<environment>& env_ptr() const noexcept { return env_; }
  [[nodiscard]] unsigned generation() const noexcept { return generation_; }
  [[nodiscard]] bsddb::access_method method() const noexcept { return method_; }
  /// Cursors take it shared, truncate exclusive: DB->truncate fails while cursors are open.
  std::shared_mutex& cursor_mutex() const noexcept { return cursor_mutex_; }

 private:
  /// Records the key and value types of a new database, or checks them against an existing one.
  void check_types(DB_ENV* e, const std::string& name, const std::string& wanted, unsigned mode) {
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
      if (rc == 0) {
        std::string stored(static_cast<const char*>(v.data), v.size);
        std::free(v.data);
        if (stored == wanted) return;
        const std::string legacy = without_enum_names(wanted);
        if (legacy == wanted || stored != legacy)
          throw type_mismatch("smisk::ipc: the dict " + env_->lease().home() + "/" + name +
                              " was created as\n" + stored + "and is now opened as\n" + wanted);
        // Written before enum tags named the enum: upgraded to the current description.
      } else if (is_retryable(rc)) {
        continue;
      } else if (rc != DB_NOTFOUND) {
        raise("DB->get", rc, "meta");
      }
      DBT w = make_dbt(wanted);
      rc = robust::call_guarded(e, [&] { return meta->put(meta, txn.get(), &k, &w, 0); });
      if (rc == 0) rc = txn.commit();
      if (rc == 0) return;
      if (!is_retryable(rc)) raise("DB->put", rc, "meta");
    }
  }

  std::shared_ptr<environment> env_;
  unsigned generation_;
  bsddb::access_method method_;
  DB* db_ = nullptr;
  mutable std::shared_mutex cursor_mutex_;
  std::mutex shutdown_mutex_;
  std::atomic<bool> closed_{false};
};

/// Runs one libdb call on the database's environment under the fault guard (see
/// robust::call_guarded): a fault on structures a dead process left half made panics the
/// environment and returns DB_RUNRECOVERY, which the caller handles as any other.
template <class F>
inline int guarded(const database& d, F&& f) noexcept {
  return robust::call_guarded(d.env().handle(), std::forward<F>(f));
}

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
  /// home opens a new environment (running recovery if no other process has yet).
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
    for (auto& entry : recovering_leases_) entry.second->leave();
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
                            "and is now opened as\n" + wanted);
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
    if (env->generation() != fork_generation()) return;
    env->mark_broken();
    auto it = environments_.find(env->home());
    if (it == environments_.end() || it->second.lock() != env) return;  // already done
    environments_.erase(it);
    broken_epochs_[env->home()] = env->epoch();
    // Keep this process's membership of the home across the reopen: were the lease released
    // here, a temporary home would look abandoned and be wiped.
    recovering_leases_[env->home()] = env->lease_ptr();
    std::vector<std::shared_ptr<database>> dbs;
    for (auto d = databases_.begin(); d != databases_.end();) {
      auto db = d->second.lock();
      if (db && &db->env() == env.get()) {
        dbs.push_back(std::move(db));
        d = databases_.erase(d);
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

  /// Opens the environment of a home under its gate. The first process in runs recovery; a
  /// process whose environment broke runs it if no other process has since (the epoch in the
  /// lock file tells); anyone else joins and runs failchk.
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
    const auto state = lease->read_epoch();
    std::uint64_t epoch = state.epoch;
    auto broke = broken_epochs_.find(loc.home);
    // A process that died while it created or recovered the environment left its regions half
    // made: joining them would wait (libdb retries for 18 s) and then fail. Recover instead.
    bool recover = (first && lease->alone_at_open()) || state.interrupted ||
                   (broke != broken_epochs_.end() && broke->second == epoch);
    std::shared_ptr<environment> env;
    if (!recover) {
      // Without region files, this process creates the environment.
      struct stat st;
      const bool creating = ::stat((loc.home + "/__db.001").c_str(), &st) != 0;
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
      retire_regions(loc.home);
      env = std::make_shared<environment>(lease, o, true, epoch);
      lease->write_epoch(epoch, false);
    }
    leases_[loc.home] = lease;
    recovering_leases_.erase(loc.home);
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
  std::map<std::string, std::weak_ptr<environment>> environments_;
  std::map<std::string, std::weak_ptr<database>> databases_;
  std::map<std::string, std::string> formats_;
  std::map<std::string, std::weak_ptr<home_lease>> leases_;
  std::map<std::string, std::uint64_t> broken_epochs_;
  std::map<std::string, std::shared_ptr<home_lease>> recovering_leases_;
};

}  // namespace smisk::ipc::detail::bdb
