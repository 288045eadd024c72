// smisk-ipc: process, file and lock helpers (POSIX/Linux).
// SPDX-License-Identifier: MIT
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../error.hpp"

namespace smisk::ipc::detail {

[[noreturn]] inline void throw_errno(const std::string& what, const char* origin, int err = errno) {
  throw engine_error("smisk::ipc: " + what + ": " + std::strerror(err), err, origin);
}

/// Counts fork()s that this process is a child of; Berkeley DB and libmemcached handles opened
/// in an earlier generation belong to the parent and must not be used (or closed) here.
inline std::atomic<unsigned>& fork_generation_counter() noexcept {
  static std::atomic<unsigned> counter{0};
  return counter;
}

/// Under AddressSanitizer, fork() waits until the library's own threads (watchdog, checkpoint
/// thread) are between two pieces of work. GCC 12's libasan does not lock its allocator around
/// fork(), so a fork while another thread is inside malloc leaves the child's allocator locked
/// for ever (a forked child then hangs at its first allocation). The library's threads hold this
/// lock shared while they work; fork() takes it exclusively. Without ASan, glibc's malloc is
/// fork-safe and nothing waits.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool fork_waits_for_library_threads = true;
#else
inline constexpr bool fork_waits_for_library_threads = false;
#endif
inline pthread_rwlock_t& library_threads_gate() noexcept {
  static pthread_rwlock_t gate = PTHREAD_RWLOCK_INITIALIZER;
  return gate;
}
/// Held by a library thread while it works (a no-op without ASan).
class library_work {
 public:
  library_work() noexcept {
    if constexpr (fork_waits_for_library_threads) ::pthread_rwlock_rdlock(&library_threads_gate());
  }
  ~library_work() {
    if constexpr (fork_waits_for_library_threads) ::pthread_rwlock_unlock(&library_threads_gate());
  }
  library_work(const library_work&) = delete;
  library_work& operator=(const library_work&) = delete;
};

/// Starts a library thread and returns once it runs its own code: a thread's start-up
/// allocates (under ASan, inside its allocator), and a fork() from the creating thread right after
/// must not catch it there (see fork_waits_for_library_threads).
template <class F>
std::thread start_library_thread(F&& body) {
  std::atomic<bool> running{false};
  std::thread t([&running, body = std::forward<F>(body)]() mutable {
    running.store(true, std::memory_order_release);  // the last use of `running`
    body();
  });
  while (!running.load(std::memory_order_acquire)) std::this_thread::yield();
  return t;
}

inline void on_fork_prepare() noexcept {
  if constexpr (fork_waits_for_library_threads) ::pthread_rwlock_wrlock(&library_threads_gate());
}
inline void on_fork_parent() noexcept {
  if constexpr (fork_waits_for_library_threads) ::pthread_rwlock_unlock(&library_threads_gate());
}
inline void on_fork_child() noexcept {
  // The child's only thread is not the parent's writer (another thread id): a fresh lock.
  if constexpr (fork_waits_for_library_threads)
    (void)::pthread_rwlock_init(&library_threads_gate(), nullptr);
  fork_generation_counter().fetch_add(1);
}
inline unsigned fork_generation() noexcept {
  static const bool registered = [] {
    ::pthread_atfork(&on_fork_prepare, &on_fork_parent, &on_fork_child);
    return true;
  }();
  (void)registered;
  return fork_generation_counter().load(std::memory_order_relaxed);
}

/// A mutex that fork() cannot leave locked in the child: the prepare handler takes every
/// fork_safe_mutex of the process (so that nothing they guard is half changed when the address
/// space is copied), the parent releases them and the child re-initialises them. For the
/// library's short critical sections only: one must never be held while taking another, while
/// waiting for anything, or while constructing or destroying a fork_safe_mutex (fork() would wait
/// for it, or deadlock).
class fork_safe_mutex {
 public:
  fork_safe_mutex() noexcept {
    list_lock guard;
    next_ = head();
    if (next_) next_->prev_ = this;
    head() = this;
  }
  ~fork_safe_mutex() {
    list_lock guard;
    if (prev_) prev_->next_ = next_;
    if (next_) next_->prev_ = prev_;
    if (head() == this) head() = next_;
  }
  fork_safe_mutex(const fork_safe_mutex&) = delete;
  fork_safe_mutex& operator=(const fork_safe_mutex&) = delete;

  void lock() noexcept { (void)::pthread_mutex_lock(&mutex_); }
  bool try_lock() noexcept { return ::pthread_mutex_trylock(&mutex_) == 0; }
  void unlock() noexcept { (void)::pthread_mutex_unlock(&mutex_); }

 private:
  static pthread_mutex_t& list_mutex() noexcept {
    static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    return m;
  }
  static fork_safe_mutex*& head() noexcept {
    static fork_safe_mutex* first = nullptr;
    return first;
  }
  struct list_lock {
    list_lock() noexcept {
      register_handlers();
      (void)::pthread_mutex_lock(&list_mutex());
    }
    ~list_lock() { (void)::pthread_mutex_unlock(&list_mutex()); }
  };
  static void register_handlers() noexcept {
    static const bool registered = [] {
      (void)fork_generation();  // the generation counter's handler first: its child runs first
      ::pthread_atfork(&prepare, &parent, &child);
      return true;
    }();
    (void)registered;
  }
  static void prepare() noexcept {
    (void)::pthread_mutex_lock(&list_mutex());
    for (fork_safe_mutex* m = head(); m; m = m->next_) m->lock();
  }
  static void parent() noexcept {
    for (fork_safe_mutex* m = head(); m; m = m->next_) m->unlock();
    (void)::pthread_mutex_unlock(&list_mutex());
  }
  static void child() noexcept {
    // The child's only thread is not the one that locked them (another thread id).
    for (fork_safe_mutex* m = head(); m; m = m->next_)
      (void)::pthread_mutex_init(&m->mutex_, nullptr);
    (void)::pthread_mutex_init(&list_mutex(), nullptr);
  }

  pthread_mutex_t mutex_ = PTHREAD_MUTEX_INITIALIZER;
  fork_safe_mutex* prev_ = nullptr;
  fork_safe_mutex* next_ = nullptr;
};

/// A file descriptor that closes itself.
class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~unique_fd() { reset(); }
  [[nodiscard]] int get() const noexcept { return fd_; }
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

/// Open-file-description locks (F_OFD_SETLK): they belong to the open file, not the process, so
/// they exclude threads as well as processes, a child inherits them with the descriptor, and the
/// kernel drops them when the last descriptor closes, also when a process is killed.
enum class lock_kind : short { shared = F_RDLCK, exclusive = F_WRLCK, none = F_UNLCK };

inline bool ofd_lock(int fd, off_t byte, lock_kind kind, bool wait) {
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = static_cast<short>(kind);
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  for (;;) {
    if (::fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) == 0) return true;
    if (errno == EINTR) continue;
    if (!wait && (errno == EAGAIN || errno == EACCES)) return false;
    throw_errno("cannot lock the home's lock file", "fcntl(F_OFD_SETLK)");
  }
}

inline std::string sanitize_name(const std::string& s) {
  std::string out;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    out += ok ? c : '_';
  }
  if (out.empty() || out[0] == '.') out.insert(0, "p");
  return out;
}

/// The running program's file name ("myapp"), for default names. Read once per process: it
/// does not change, and a child of fork() must not depend on anything a parent thread may hold.
inline std::string program_name();
inline std::string read_program_name() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string path = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string("program");
  auto slash = path.rfind('/');
  if (slash != std::string::npos) path.erase(0, slash + 1);
  const std::string deleted = " (deleted)";
  if (path.size() > deleted.size() &&
      path.compare(path.size() - deleted.size(), deleted.size(), deleted) == 0) {
    path.resize(path.size() - deleted.size());
  }
  return sanitize_name(path);
}

inline std::string program_name() {
  static const std::string name = read_program_name();
  return name;
}

/// The effective user's name, or its uid when it has none. Looked up once per effective uid: the
/// name service may take locks that a fork() from another thread leaves held in the child.
inline std::string user_name();
inline std::string look_up_user_name(uid_t uid) {
  struct passwd pw;
  struct passwd* result = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &result) == 0 && result && result->pw_name)
    return sanitize_name(result->pw_name);
  return std::to_string(uid);
}
inline std::string user_name() {
  static fork_safe_mutex mutex;
  static uid_t cached_uid = static_cast<uid_t>(-1);
  static std::string cached;
  const uid_t uid = ::geteuid();
  {
    std::lock_guard<fork_safe_mutex> lock(mutex);
    if (uid == cached_uid) return cached;
  }
  std::string name = look_up_user_name(uid);  // not under the mutex: it may wait
  std::lock_guard<fork_safe_mutex> lock(mutex);
  cached_uid = uid;
  cached = name;
  return name;
}

/// The directory for temporary homes: /dev/shm where it is a usable directory, else $TMPDIR,
/// else /tmp.
inline std::string temp_root() {
  struct stat st;
  if (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && ::access("/dev/shm", W_OK | X_OK) == 0)
    return "/dev/shm";
  const char* tmp = std::getenv("TMPDIR");
  if (tmp && *tmp) return tmp;
  return "/tmp";
}

inline std::string dirname_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

inline std::string basename_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

/// The one spelling of a home directory path, so that "d/h", "d//h", "d/./h", "x/../d/h" and
/// "h" (from d) name the same home of the process (homes are keyed by it): absolute; the longest
/// part of it that exists resolved by realpath(), except its last component, kept as written (a
/// symlink there must still be seen, and refused); the rest (directories still to be made)
/// without empty and "." components, and ".." taken lexically (nothing there is a symlink yet).
inline std::string canonical_home(std::string home) {
  if (home.empty()) return home;
  if (home[0] != '/') {
    char cwd[4096];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return home;
    home = std::string(cwd) + "/" + home;
  }
  while (home.size() > 1 && home.back() == '/') home.pop_back();
  if (home == "/") return home;
  const std::string last = basename_of(home);
  if (last == "." || last == "..") {  // names an existing directory, or one of the missing part
    if (char* real = ::realpath(home.c_str(), nullptr)) {
      home = real;
      std::free(real);
      return home;
    }
  }
  // From the parent up, the first directory that realpath() resolves; below it, the components
  // as written (bottom first).
  std::vector<std::string> below{last};
  std::string resolved;
  for (std::string parent = dirname_of(home);; parent = dirname_of(parent)) {
    if (char* real = ::realpath(parent.c_str(), nullptr)) {
      resolved = real;
      std::free(real);
      break;
    }
    if (parent == "/") return home;  // cannot happen: "/" resolves
    below.push_back(basename_of(parent));
  }
  for (auto it = below.rbegin(); it != below.rend(); ++it) {
    if (it->empty() || *it == ".") continue;
    if (*it == "..") {
      resolved = dirname_of(resolved);
      continue;
    }
    if (resolved.back() != '/') resolved += '/';
    resolved += *it;
  }
  return resolved;
}

/// Checks that `dir` is a directory this user owns, not a symlink; `what` names it in errors.
inline void check_own_directory(const std::string& dir, const std::string& what) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) {
    int err = errno;
    throw home_error("smisk::ipc: cannot stat " + what + ": " + std::strerror(err), err, "lstat");
  }
  if (S_ISLNK(st.st_mode))
    throw home_error("smisk::ipc: refusing " + what + ": it is a symbolic link", ELOOP, "lstat");
  if (!S_ISDIR(st.st_mode))
    throw home_error("smisk::ipc: refusing " + what + ": it is not a directory", ENOTDIR, "lstat");
  if (st.st_uid != ::geteuid())
    throw home_error("smisk::ipc: refusing " + what + ": it is owned by uid " +
                         std::to_string(st.st_uid) + ", not by this user (uid " +
                         std::to_string(::geteuid()) + ")",
                     EPERM, "lstat");
}

/// Creates the parent directories of `home` that do not exist (mode 0700, from the top down),
/// each checked as the home is: one that is, or meanwhile became, a symlink, a file or another
/// user's is refused, and nothing is made inside it.
inline void make_parents(const std::string& home) {
  std::vector<std::string> missing;
  for (std::string p = dirname_of(home); p != "/" && p != "."; p = dirname_of(p)) {
    struct stat st;
    if (::lstat(p.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) break;  // the existing part, resolved by canonical_home
      // A file, or a symlink that realpath() could not follow: refused (throws).
      check_own_directory(p, "home directory " + home + ": " + p + " on the way");
    }
    missing.push_back(p);
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (::mkdir(it->c_str(), 0700) != 0 && errno != EEXIST) {
      int err = errno;
      throw home_error("smisk::ipc: cannot create " + *it + " (on the way to the home directory " +
                           home + "): " + std::strerror(err),
                       err, "mkdir");
    }
    check_own_directory(*it, "home directory " + home + ": " + *it + " on the way");
  }
}

/// Makes sure `home` is a directory this user owns and may write, creating it (mode 0700) and
/// any missing parent directories (see make_parents) if it does not exist. A symlink, a
/// non-directory or a directory owned by someone else is refused without touching it. @returns
/// true if it created the directory.
inline bool prepare_home(const std::string& home) {
  if (home.empty()) throw home_error("smisk::ipc: empty home directory path");
  bool created = false;
  int rc = ::mkdir(home.c_str(), 0700);
  if (rc != 0 && errno == ENOENT) {
    make_parents(home);
    rc = ::mkdir(home.c_str(), 0700);
  }
  if (rc == 0) {
    created = true;
  } else if (errno != EEXIST) {
    int err = errno;
    throw home_error("smisk::ipc: cannot create home directory " + home + ": " + std::strerror(err),
                     err, "mkdir");
  }
  check_own_directory(home, "home " + home);
  if (::access(home.c_str(), W_OK | X_OK) != 0) {
    int err = errno;
    throw home_error(
        "smisk::ipc: home directory " + home + " is not writable: " + std::strerror(err), err,
        "access");
  }
  return created;
}

/// The names in a directory (no "." and "..").
inline std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(std::move(n));
  }
  ::closedir(d);
  return names;
}

inline bool starts_with(const std::string& s, const char* prefix) {
  return s.rfind(prefix, 0) == 0;
}

}  // namespace smisk::ipc::detail
