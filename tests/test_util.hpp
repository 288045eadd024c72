// Helpers shared by the smisk-ipc tests: temporary directories, forked child
// processes that report back through their exit status, pipes for hand-offs
// between processes, and small file-system queries.
//
// Children never return into GoogleTest: whatever the child body does, the
// child leaves with _exit(). A child fails (non-zero exit code, a message on
// stderr) when its body throws or when a GoogleTest assertion (EXPECT_*,
// ASSERT_*) fails inside it, so plain gtest assertions can be used in child
// bodies. A child that must end like a normal program (atexit handlers, static
// destructors) calls exit_child_normally(), which keeps that failure report.
#ifndef SMISK_TEST_UTIL_HPP
#define SMISK_TEST_UTIL_HPP

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace smisk_test {

using namespace std::chrono_literals;

/// Default time a parent waits for its children before killing them.
inline constexpr std::chrono::milliseconds default_child_timeout = 60s;

/// Exit codes of a forked child (see run_in_child).
enum child_exit_code : int {
  child_ok = 0,
  child_assertion_failed = 101,  // a gtest assertion failed inside the child
  child_exception = 102,         // the child body threw a std::exception
  child_unknown_exception = 103  // the child body threw something else
};

[[noreturn]] inline void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// ---------------------------------------------------------------------------
// File system

/// Where temporary dicts of a test live: tmpfs as in production (the default home is on
/// /dev/shm), else /tmp.
inline std::string temp_base();

/// True if something (file, directory, symlink, even a dangling one) is at path.
inline bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

/// lstat() of path, or nullopt if nothing is there.
inline std::optional<struct stat> lstat_path(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return std::nullopt;
  return st;
}

inline bool is_directory(const std::string& path) {
  auto st = lstat_path(path);
  return st && S_ISDIR(st->st_mode);
}

inline std::string temp_base() { return is_directory("/dev/shm") ? "/dev/shm" : "/tmp"; }

inline bool is_symlink(const std::string& path) {
  auto st = lstat_path(path);
  return st && S_ISLNK(st->st_mode);
}

inline bool is_regular_file(const std::string& path) {
  auto st = lstat_path(path);
  return st && S_ISREG(st->st_mode);
}

/// Sorted names of the entries of a directory, without "." and "..".
/// @throws std::system_error if the directory cannot be read.
inline std::vector<std::string> list_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw_errno("opendir " + dir);
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

/// Entries of dir for printing in failure messages: "[a, b, c]" or "<absent>".
inline std::string describe_dir(const std::string& dir) {
  if (!path_exists(dir)) return "<absent>";
  if (!is_directory(dir)) return "<not a directory>";
  std::string out = "[";
  for (const auto& n : list_dir(dir)) out += (out.size() > 1 ? ", " : "") + n;
  return out + "]";
}

/// Whole content of a file. @throws std::system_error if it cannot be read.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno("open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Creates or replaces a file with content. @throws std::system_error.
inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw_errno("create " + path);
  out << content;
  if (!out.flush()) throw_errno("write " + path);
}

/// Removes path and everything below it, never following symlinks. Makes
/// directories writable first so that tests which chmod'ed them still clean up.
inline void remove_tree(const std::string& path) noexcept {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    ::chmod(path.c_str(), 0700);
    if (DIR* d = ::opendir(path.c_str())) {
      std::vector<std::string> names;
      while (struct dirent* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name != "." && name != "..") names.push_back(std::move(name));
      }
      ::closedir(d);
      for (const auto& n : names) remove_tree(path + "/" + n);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

namespace detail {
// The temp_dirs alive in this process, so that a firing watchdog can remove
// them before it ends the process.
struct live_temp_dirs {
  std::mutex mutex;
  std::vector<std::string> paths;

  static live_temp_dirs& instance() {
    static auto* dirs = new live_temp_dirs;  // never destroyed: usable during exit
    return *dirs;
  }
  void add(const std::string& path) {
    std::lock_guard<std::mutex> lock(mutex);
    paths.push_back(path);
  }
  void remove(const std::string& path) {
    std::lock_guard<std::mutex> lock(mutex);
    paths.erase(std::remove(paths.begin(), paths.end(), path), paths.end());
  }
  // Best effort, from a watchdog about to end the process.
  void remove_all_trees() {
    std::unique_lock<std::mutex> lock(mutex, std::try_to_lock);
    if (!lock.owns_lock()) return;
    for (const auto& p : paths) remove_tree(p);
  }
};
}  // namespace detail

/// A fresh directory made with mkdtemp under /tmp (or base), removed with all
/// its content when the object is destroyed by the process that created it
/// (a forked child that leaves through std::exit never removes it), or when a
/// watchdog ends the process.
class temp_dir {
 public:
  explicit temp_dir(const std::string& base = "/tmp", const std::string& prefix = "smisk-ipc-test-")
      : owner_(::getpid()) {
    std::string pattern = base + "/" + prefix + "XXXXXX";
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) throw_errno("mkdtemp " + pattern);
    path_ = buf.data();
    detail::live_temp_dirs::instance().add(path_);
  }
  ~temp_dir() {
    if (::getpid() != owner_) return;
    detail::live_temp_dirs::instance().remove(path_);
    remove_tree(path_);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  /// The directory, without a trailing slash.
  const std::string& path() const { return path_; }
  /// path() + "/" + name (name may contain slashes; nothing is created).
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
  pid_t owner_;
};

// ---------------------------------------------------------------------------
// Child processes

namespace detail {
// In a forked child: how many gtest results the current test had when the child started, so
// that only the child's own failures count.
inline int child_parts_before = 0;

inline const ::testing::TestResult* current_result() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return info != nullptr ? info->result() : nullptr;
}
}  // namespace detail

/// In a forked child: child_assertion_failed if a gtest assertion failed in this child so far,
/// else child_ok.
inline int child_failure_code() {
  const ::testing::TestResult* result = detail::current_result();
  if (result == nullptr) return child_ok;
  for (int i = detail::child_parts_before; i < result->total_part_count(); ++i) {
    if (result->GetTestPartResult(i).failed()) {
      std::fprintf(stderr, "[child %d] a gtest assertion failed in the child (see above)\n",
                   static_cast<int>(::getpid()));
      return child_assertion_failed;
    }
  }
  return child_ok;
}

/// In a forked child: leaves through std::exit() (so atexit handlers and static destructors
/// run, as in a program that ends normally), with child_failure_code() as the exit code.
[[noreturn]] inline void exit_child_normally() {
  const int code = child_failure_code();
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(code);
}

/// Runs body in the current (forked) process and leaves with _exit(): 0 if the
/// body returned without a gtest failure, a child_exit_code otherwise. Never returns.
[[noreturn]] inline void run_in_child(const std::function<void()>& body) noexcept {
  int code = child_ok;
  const ::testing::TestResult* result = detail::current_result();
  detail::child_parts_before = result != nullptr ? result->total_part_count() : 0;
  try {
    body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[child %d] uncaught exception: %s\n", static_cast<int>(::getpid()),
                 e.what());
    code = child_exception;
  } catch (...) {
    std::fprintf(stderr, "[child %d] uncaught non-std exception\n", static_cast<int>(::getpid()));
    code = child_unknown_exception;
  }
  if (code == child_ok) code = child_failure_code();
  std::fflush(stdout);
  std::fflush(stderr);
  ::_exit(code);
}

/// Forks one child that runs body and then _exit()s (see run_in_child). The
/// child is killed if the test process dies. Returns the child's pid.
/// @throws std::system_error if fork fails.
inline pid_t fork_child(const std::function<void()>& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(child_unknown_exception);
    run_in_child(body);
  }
  return pid;
}

/// Forks n children; child i runs body(i). If a fork fails, the children
/// already started are killed and reaped, and std::system_error is thrown.
inline std::vector<pid_t> fork_children(int n, const std::function<void(int index)>& body) {
  std::vector<pid_t> pids;
  pids.reserve(static_cast<std::size_t>(n));
  try {
    for (int i = 0; i < n; ++i) pids.push_back(fork_child([&body, i] { body(i); }));
  } catch (...) {
    for (pid_t p : pids) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
    throw;
  }
  return pids;
}

/// How a child ended.
struct child_status {
  pid_t pid = -1;
  bool exited = false;  // left through exit/_exit; exit_code is valid
  int exit_code = -1;
  bool signaled = false;  // killed by a signal; term_signal is valid
  int term_signal = 0;
  bool timed_out = false;  // did not end in time and was SIGKILLed by the waiter

  /// Exited with code 0 in time.
  bool ok() const { return exited && exit_code == 0 && !timed_out; }
  /// Killed by sig (for children a test killed on purpose).
  bool killed_by(int sig) const { return signaled && term_signal == sig; }

  std::string describe() const {
    std::ostringstream out;
    out << "child " << pid << ": ";
    if (timed_out) out << "timed out and was killed";
    if (exited) {
      out << "exited with code " << exit_code;
      switch (exit_code) {
        case child_assertion_failed:
          out << " (gtest assertion failed in child)";
          break;
        case child_exception:
          out << " (uncaught exception, see stderr)";
          break;
        case child_unknown_exception:
          out << " (uncaught non-std exception)";
          break;
        default:
          break;
      }
    } else if (signaled) {
      if (timed_out) out << ", ";
      out << "killed by signal " << term_signal << " (" << ::strsignal(term_signal) << ")";
    }
    return out.str();
  }
};

inline child_status status_from_wait(pid_t pid, int wstatus) {
  child_status s;
  s.pid = pid;
  if (WIFEXITED(wstatus)) {
    s.exited = true;
    s.exit_code = WEXITSTATUS(wstatus);
  } else if (WIFSIGNALED(wstatus)) {
    s.signaled = true;
    s.term_signal = WTERMSIG(wstatus);
  }
  return s;
}

/// Waits for all pids until the common deadline. Children still running then
/// are SIGKILLed, reaped, marked timed_out, and the current test fails.
/// With SMISK_TEST_STACKS=1 (or 2) in the environment, prints every thread's stack of a process
/// (and of this one, once) with gdb: what a child that hangs is waiting for. A debugging aid only.
inline void dump_stacks(pid_t pid) {
  const char* on = std::getenv("SMISK_TEST_STACKS");
  if (!on || (std::string(on) != "1" && std::string(on) != "2")) return;  // 2: see crash_test
  static bool self_done = false;
  auto run = [](pid_t p) {
    std::string cmd = "gdb -p " + std::to_string(p) +
                      " -batch -nx -ex 'thread apply all bt' -ex 'thread apply all -q -s frame "
                      "function ___pthread_mutex_lock' -ex 'thread apply all -q -s print "
                      "mutex->__data' 2>/dev/null | grep -E '^(#|Thread|\\$|  )' >&2";
    std::fprintf(stderr, "---- stacks of %d ----\n", static_cast<int>(p));
    std::fflush(stderr);
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "(gdb failed)\n");
  };
  if (!self_done) {
    self_done = true;
    run(::getpid());
    if (const char* home = std::getenv("SMISK_TEST_STACKS_HOME")) {
      std::string cmd = std::string("ls -li ") + home + " >&2; cat " + home +
                        "/smisk-ipc.lock >&2; timeout 5 db5.3_stat -h " + home + " -Clo -x >&2";
      if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "(db5.3_stat failed)\n");
    }
  }
  if (pid == ::getpid()) return;  // done above
  run(pid);
  std::string maps = "grep -E '__db|smisk-ipc' /proc/" + std::to_string(pid) + "/maps >&2";
  if (std::system(maps.c_str()) != 0) std::fprintf(stderr, "(no maps)\n");
}

/// Returns one status per pid, in the order of pids.
inline std::vector<child_status> wait_children(
    const std::vector<pid_t>& pids, std::chrono::milliseconds timeout = default_child_timeout) {
  std::vector<child_status> out(pids.size());
  std::vector<bool> done(pids.size(), false);
  std::size_t remaining = pids.size();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto nap = 1ms;
  while (remaining > 0) {
    bool progress = false;
    for (std::size_t i = 0; i < pids.size(); ++i) {
      if (done[i]) continue;
      int ws = 0;
      const pid_t r = ::waitpid(pids[i], &ws, WNOHANG);
      if (r == pids[i] || (r < 0 && errno != EINTR)) {
        out[i] = r == pids[i] ? status_from_wait(pids[i], ws) : child_status{};
        out[i].pid = pids[i];
        done[i] = true;
        --remaining;
        progress = true;
      }
    }
    if (remaining == 0) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      for (std::size_t i = 0; i < pids.size(); ++i)
        if (!done[i]) dump_stacks(pids[i]);
      for (std::size_t i = 0; i < pids.size(); ++i) {
        if (done[i]) continue;
        ::kill(pids[i], SIGKILL);
        int ws = 0;
        while (::waitpid(pids[i], &ws, 0) < 0 && errno == EINTR) {
        }
        out[i] = status_from_wait(pids[i], ws);
        out[i].timed_out = true;
        ADD_FAILURE() << "child " << pids[i] << " did not finish within " << timeout.count()
                      << " ms and was killed with SIGKILL";
      }
      break;
    }
    if (!progress) {
      std::this_thread::sleep_for(nap);
      nap = std::min(nap * 2, std::chrono::milliseconds(20));
    } else {
      nap = 1ms;
    }
  }
  return out;
}

/// wait_children for one child.
inline child_status wait_child(pid_t pid,
                               std::chrono::milliseconds timeout = default_child_timeout) {
  return wait_children({pid}, timeout).front();
}

/// SIGKILLs a child and reaps it.
inline child_status kill_child(pid_t pid, int sig = SIGKILL) {
  ::kill(pid, sig);
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  return status_from_wait(pid, ws);
}

/// Success if every child exited with code 0 in time; else lists the others.
inline ::testing::AssertionResult all_ok(const std::vector<child_status>& statuses) {
  std::string bad;
  for (const auto& s : statuses)
    if (!s.ok()) bad += "\n  " + s.describe();
  if (bad.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "some children failed:" << bad;
}

inline ::testing::AssertionResult all_ok(const child_status& status) {
  return all_ok(std::vector<child_status>{status});
}

/// Forks n children running body(index) and waits for them (see wait_children).
inline std::vector<child_status> run_children(
    int n, const std::function<void(int index)>& body,
    std::chrono::milliseconds timeout = default_child_timeout) {
  return wait_children(fork_children(n, body), timeout);
}

/// Forks one child running body and waits for it.
inline child_status run_child(const std::function<void()>& body,
                              std::chrono::milliseconds timeout = default_child_timeout) {
  return wait_child(fork_child(body), timeout);
}

// ---------------------------------------------------------------------------
// Hand-offs between processes

/// A one-way pipe for tokens between processes. Create it before fork(); any
/// process may send, any may wait. Reads and writes of one byte are atomic, so
/// several children can share one pipe.
class signal_pipe {
 public:
  signal_pipe() {
    if (::pipe(fds_) != 0) throw_errno("pipe");
  }
  ~signal_pipe() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  signal_pipe(const signal_pipe&) = delete;
  signal_pipe& operator=(const signal_pipe&) = delete;

  /// Writes count tokens c. @throws std::system_error.
  void send(char c = '!', int count = 1) const {
    for (int i = 0; i < count; ++i) {
      ssize_t r;
      do {
        r = ::write(fds_[1], &c, 1);
      } while (r < 0 && errno == EINTR);
      if (r != 1) throw_errno("write to signal_pipe");
    }
  }

  /// Reads count tokens; returns them, or nullopt if they did not all arrive
  /// within timeout (the tokens read so far are lost).
  std::optional<std::string> receive(
      int count = 1, std::chrono::milliseconds timeout = default_child_timeout) const {
    std::string got;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (static_cast<int>(got.size()) < count) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fds_[0], POLLIN, 0};
      const int pr = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
      if (pr < 0 && errno != EINTR) throw_errno("poll signal_pipe");
      if (pr <= 0) continue;
      char c;
      const ssize_t r = ::read(fds_[0], &c, 1);
      if (r == 1) {
        got.push_back(c);
      } else if (r == 0) {
        return std::nullopt;  // cannot happen while we hold the write end
      } else if (errno != EINTR && errno != EAGAIN) {
        throw_errno("read signal_pipe");
      }
    }
    return got;
  }

  /// Reads every token that arrives until none has come for `quiet`; returns them.
  std::string drain(std::chrono::milliseconds quiet = 200ms) const {
    std::string got;
    for (;;) {
      pollfd p{fds_[0], POLLIN, 0};
      const int pr = ::poll(&p, 1, static_cast<int>(quiet.count()));
      if (pr < 0 && errno == EINTR) continue;
      if (pr < 0) throw_errno("poll signal_pipe");
      if (pr == 0) return got;
      char buf[4096];
      const ssize_t r = ::read(fds_[0], buf, sizeof buf);
      if (r > 0)
        got.append(buf, static_cast<std::size_t>(r));
      else if (r == 0)
        return got;
      else if (errno != EINTR && errno != EAGAIN)
        throw_errno("read signal_pipe");
    }
  }

  /// receive(count, timeout) succeeded.
  bool wait(int count = 1, std::chrono::milliseconds timeout = default_child_timeout) const {
    return receive(count, timeout).has_value();
  }

 private:
  int fds_[2] = {-1, -1};
};

/// A barrier for `parties` children, coordinated by the parent. Create it
/// before fork(). Each child calls arrive_and_wait(); the parent calls
/// release_when_all_arrived(), which returns once every child has arrived and
/// lets them all go on.
/// Single use: the parent's release tokens are not tied to a round, so a
/// child that arrives a second time could take a token meant for a slow child
/// of the first round. Use one barrier per phase.
class process_barrier {
 public:
  explicit process_barrier(int parties) : parties_(parties) {}

  /// In a child: announce arrival, then block until the parent releases.
  /// Returns false on timeout.
  bool arrive_and_wait(std::chrono::milliseconds timeout = default_child_timeout) const {
    arrived_.send('a');
    return released_.wait(1, timeout);
  }

  /// In the parent: wait until all parties arrived, then release them all.
  /// Returns false (and releases nobody) on timeout.
  bool release_when_all_arrived(std::chrono::milliseconds timeout = default_child_timeout) const {
    if (!arrived_.wait(parties_, timeout)) return false;
    released_.send('r', parties_);
    return true;
  }

 private:
  int parties_;
  signal_pipe arrived_;
  signal_pipe released_;
};

// ---------------------------------------------------------------------------
// Time limits inside the test process

/// Ends the whole test process (exit code 124) with a message if it is still
/// alive after `limit`, so that a hang in the library gives a clear failure
/// rather than a ctest timeout. Before that it removes the process's live
/// temp_dirs; its children die with it (fork_child sets PR_SET_PDEATHSIG).
/// Destroying the watchdog disarms it.
class watchdog {
 public:
  watchdog(std::chrono::milliseconds limit, std::string what)
      : what_(std::move(what)), owner_(::getpid()), thread_([this, limit] {
          started_.store(true);
          std::unique_lock<std::mutex> lock(mutex_);
          if (!cv_.wait_for(lock, limit, [this] { return disarmed_; })) {
            std::fprintf(stderr, "\nWATCHDOG: %s did not finish within %lld ms; aborting test\n",
                         what_.c_str(), static_cast<long long>(limit.count()));
            std::fflush(stdout);
            std::fflush(stderr);
            dump_stacks(::getpid());  // with SMISK_TEST_STACKS=1
            if (::getpid() == owner_) detail::live_temp_dirs::instance().remove_all_trees();
            ::_exit(124);
          }
        }) {
    // Returns once the thread runs: a fork() right after must not catch its start-up inside
    // the allocator (GCC 12's ASan does not lock the allocator around fork()).
    while (!started_.load()) std::this_thread::yield();
  }
  ~watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      disarmed_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;

 private:
  std::string what_;
  pid_t owner_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool disarmed_ = false;
  std::atomic<bool> started_{false};
  std::thread thread_;
};

}  // namespace smisk_test

#endif  // SMISK_TEST_UTIL_HPP
