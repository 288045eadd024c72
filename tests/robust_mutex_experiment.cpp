// Experiment: does smisk::ipc::detail::robust::install() turn "a process was SIGKILLed while
// holding one of Berkeley DB's region mutexes" from a hang of every other process into an error
// (DB_RUNRECOVERY) that recovery (DB_RECOVER) repairs?
//
// A plain program (not GoogleTest), raw Berkeley DB C API. Build:
//   g++ -std=c++17 -O2 -Wall -Wextra -Wpedantic -Iinclude tests/robust_mutex_experiment.cpp
//       -o robust_mutex_experiment -ldb-5.3 -pthread
//
// Modes (each runs in a process of its own, since install() is per process and permanent):
//   (none)                 all of the below, as child processes, with a summary; exits 0 when
//                          every expectation holds
//   --mode waiter          deterministic: a child holds libdb mutexes (an application mutex from
//                          DB_ENV->mutex_alloc, then every "lock region" mutex) while a parent
//                          thread blocks on them; the child is SIGKILLed; the waiter must return
//   --mode kill            random: a child hammers auto-commit puts/gets, parent threads do too,
//                          a failchk thread runs; the child is SIGKILLed after 1-20 ms; every
//                          round must finish (0 or DB_RUNRECOVERY, then DB_RECOVER)
//   --mode stress          no kills: 3 processes x 3 threads of mixed operations (many deadlocks);
//                          nothing may fail with the patch
//   --mode bench           1M uncontended DB->get with and without install(), in child processes
//   --no-install           do not call install() (to show the hang it prevents)
//   --rounds N             kill rounds (default 50)
//   --seed N               random seed (default: time)
//   --sync                 durable commits (default DB_TXN_NOSYNC)
//   --gdb                  on a hang, print every thread's stack (gdb -p)
//   --quiet                fewer lines per round
// Exit status: 0 as expected; 1 failed; 2 the watchdog saw a hang (expected with --no-install).

#include <db.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <smisk/ipc/detail/robust_mutex.hpp>

namespace robust = smisk::ipc::detail::robust;

// Under LeakSanitizer: Berkeley DB does not free a panicked environment's handles when it is
// closed ("BDB1581 File handles still open at environment close"); that is expected here.
extern "C" const char* __lsan_default_suppressions() { return "leak:libdb-5.3.so\n"; }

namespace {

// ---- options ---------------------------------------------------------------------------------

struct options {
  std::string mode;
  bool install = true;
  int rounds = 50;
  unsigned seed = 0;
  bool sync = false;
  bool gdb = false;
  bool quiet = false;
  int workers = 2;
};
options opt;

// ---- small helpers ---------------------------------------------------------------------------

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }
void remove_tree(const std::string& dir) {
  if (!dir.empty()) ::nftw(dir.c_str(), &remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

std::string make_temp_dir(const char* tag) {
  const char* base = std::getenv("TMPDIR");
  std::string templ =
      std::string(base && *base ? base : "/tmp") + "/robust_mutex_" + tag + "_XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) {
    std::perror("mkdtemp");
    std::exit(1);
  }
  return buf.data();
}

const char* rc_name(int rc) {
  switch (rc) {
    case 0:
      return "0";
    case DB_RUNRECOVERY:
      return "DB_RUNRECOVERY";
    case DB_LOCK_DEADLOCK:
      return "DB_LOCK_DEADLOCK";
    case DB_LOCK_NOTGRANTED:
      return "DB_LOCK_NOTGRANTED";
    case DB_NOTFOUND:
      return "DB_NOTFOUND";
    default:
      return db_strerror(rc);
  }
}

long gettid_() { return ::syscall(SYS_gettid); }

std::string wchan_of(long tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%ld/wchan", tid);
  FILE* f = std::fopen(path, "r");
  if (!f) return "?";
  char buf[128] = {0};
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  return buf;
}

// ---- Berkeley DB messages --------------------------------------------------------------------

std::mutex messages_mutex;
std::map<std::string, int> messages;  // error message (without the numbers) -> count

void note_message(const char* prefix, const char* msg) {
  std::string m = prefix;
  for (const char* p = msg; *p; ++p) {  // numbers (pids, ids, LSNs) vary: fold them to '#'
    if (p[0] == '0' && p[1] == 'x') {
      m += "0x#";
      for (p += 2; std::isxdigit(static_cast<unsigned char>(p[1])); ++p) {
      }
      continue;
    }
    bool digit = *p >= '0' && *p <= '9';
    if (!digit || m.empty() || m.back() != '#') m += digit ? '#' : *p;
  }
  if (m.find("Open file handle: ") != std::string::npos) m = m.substr(0, m.find(": /") + 2) + "...";
  std::lock_guard<std::mutex> lock(messages_mutex);
  ++messages[m];
}
void on_error(const DB_ENV*, const char*, const char* msg) { note_message("error: ", msg); }
void on_message(const DB_ENV*, const char* msg) { note_message("message: ", msg); }

void print_messages() {
  std::lock_guard<std::mutex> lock(messages_mutex);
  if (messages.empty()) return;
  std::printf("  Berkeley DB messages seen (count x message, numbers folded to #):\n");
  for (auto& [m, n] : messages) std::printf("    %5d x %s\n", n, m.c_str());
}

int is_alive(DB_ENV*, pid_t pid, db_threadid_t, u_int32_t) {
  if (pid == ::getpid()) return 1;
  return (::kill(pid, 0) == 0 || errno == EPERM) ? 1 : 0;
}

// ---- the watchdog ----------------------------------------------------------------------------

/// Each phase that must finish is armed with a deadline; if it passes, this reports the hang,
/// kills the child, removes the home and exits with status 2.
class watchdog {
 public:
  watchdog() : thread_([this] { run(); }) {}
  ~watchdog() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void arm(std::string phase, int ms = 5000) {
    std::lock_guard<std::mutex> lock(m_);
    phase_ = std::move(phase);
    deadline_ = now_ms() + ms;
    cv_.notify_all();
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(m_);
    deadline_ = 0;
  }
  std::atomic<pid_t> child{-1};
  std::string home;
  std::string summary;  // printed on a hang

 private:
  void run() {
    std::unique_lock<std::mutex> lock(m_);
    while (!stop_) {
      if (deadline_ != 0 && now_ms() >= deadline_) hang();
      cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
  }
  [[noreturn]] void hang() {
    std::printf("HANG: %s did not finish within its deadline (watchdog)\n", phase_.c_str());
    std::printf("  owner_died_count=%llu robust inits=%llu; %s\n",
                static_cast<unsigned long long>(robust::owner_died_count()),
                static_cast<unsigned long long>(robust::event_counts.robust_inits.load()),
                robust::status());
    if (!summary.empty()) std::printf("  %s\n", summary.c_str());
    std::fflush(stdout);
    if (opt.gdb) {
      char cmd[256];
      std::snprintf(cmd, sizeof cmd,
                    "gdb -q -p %d -batch -ex 'thread apply all bt' 2>/dev/null | "
                    "grep -E '^(Thread|#[0-9] )' | cut -c1-160",
                    static_cast<int>(::getpid()));
      if (std::system(cmd) != 0) std::printf("  (gdb failed)\n");
    }
    print_messages();
    std::fflush(stdout);
    if (std::getenv("RMX_HANG_PAUSE")) {  // for investigation: keep the process for gdb
      std::printf("  pausing (pid %d)\n", static_cast<int>(::getpid()));
      std::fflush(stdout);
      ::sleep(600);
    }
    pid_t c = child.load();
    if (c > 0) {
      ::kill(c, SIGKILL);
      ::waitpid(c, nullptr, 0);
    }
    remove_tree(home);
    std::_Exit(2);
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::string phase_;
  long long deadline_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

// ---- the environment -------------------------------------------------------------------------

struct handles {
  DB_ENV* env = nullptr;
  DB* db = nullptr;
};

int open_env(const std::string& home, bool recover, handles& h, bool create_db = true) {
  int rc = ::db_env_create(&h.env, 0);
  if (rc != 0) return rc;
  DB_ENV* e = h.env;
  e->set_errcall(e, &on_error);
  e->set_msgcall(e, &on_message);
  e->set_lk_detect(e, DB_LOCK_DEFAULT);
  e->set_thread_count(e, 64);
  e->set_isalive(e, &is_alive);
  e->mutex_set_increment(e, 200);  // room for DB_ENV->mutex_alloc in --mode waiter
  if (!opt.sync) e->set_flags(e, DB_TXN_NOSYNC, 1);
  u_int32_t flags = DB_CREATE | DB_INIT_MPOOL | DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_TXN |
                    DB_THREAD | (recover ? DB_RECOVER : 0u);
  rc = e->open(e, home.c_str(), flags, 0600);
  if (rc != 0) {
    e->close(e, 0);
    h.env = nullptr;
    return rc;
  }
  if (!create_db) return 0;
  rc = ::db_create(&h.db, e, 0);
  if (rc == 0)
    rc = h.db->open(h.db, nullptr, "data.db", nullptr, DB_BTREE,
                    DB_CREATE | DB_AUTO_COMMIT | DB_THREAD, 0600);
  if (rc != 0) {
    if (h.db) h.db->close(h.db, 0);
    h.db = nullptr;
    e->close(e, 0);
    h.env = nullptr;
  }
  return rc;
}

void close_env(handles& h) {
  if (h.db) h.db->close(h.db, 0);
  if (h.env) h.env->close(h.env, 0);
  h = handles{};
}

int put(DB* db, unsigned key, unsigned value) {
  char kbuf[16], vbuf[100];
  std::snprintf(kbuf, sizeof kbuf, "key%u", key);
  std::memset(vbuf, 'v', sizeof vbuf);
  std::snprintf(vbuf, sizeof vbuf, "value%u", value);
  DBT k, v;
  std::memset(&k, 0, sizeof k);
  std::memset(&v, 0, sizeof v);
  k.data = kbuf;
  k.size = static_cast<u_int32_t>(std::strlen(kbuf));
  v.data = vbuf;
  v.size = sizeof vbuf;
  return db->put(db, nullptr, &k, &v, 0);
}

int get(DB* db, unsigned key) {
  char kbuf[16], vbuf[256];
  std::snprintf(kbuf, sizeof kbuf, "key%u", key);
  DBT k, v;
  std::memset(&k, 0, sizeof k);
  std::memset(&v, 0, sizeof v);
  k.data = kbuf;
  k.size = static_cast<u_int32_t>(std::strlen(kbuf));
  v.data = vbuf;
  v.ulen = sizeof vbuf;
  v.flags = DB_DBT_USERMEM;
  return db->get(db, nullptr, &k, &v, 0);
}

/// Reads the whole database with a cursor: every record must be one that put() wrote.
/// Returns 0, or an error (EINVAL for a malformed record).
int check_contents(DB* db, unsigned* records = nullptr) {
  DBC* c = nullptr;
  int rc = db->cursor(db, nullptr, &c, 0);
  if (rc != 0) return rc;
  char kbuf[64], vbuf[256];
  DBT k, v;
  std::memset(&k, 0, sizeof k);
  std::memset(&v, 0, sizeof v);
  k.data = kbuf;
  k.ulen = sizeof kbuf;
  k.flags = DB_DBT_USERMEM;
  v.data = vbuf;
  v.ulen = sizeof vbuf;
  v.flags = DB_DBT_USERMEM;
  unsigned n = 0;
  while ((rc = c->get(c, &k, &v, DB_NEXT)) == 0) {
    ++n;
    if (k.size < 4 || std::memcmp(kbuf, "key", 3) != 0 || v.size != 100 ||
        std::memcmp(vbuf, "value", 5) != 0) {
      rc = EINVAL;
      break;
    }
  }
  c->close(c);
  if (records) *records = n;
  return rc == DB_NOTFOUND ? 0 : rc;
}

/// put then get, retrying deadlocks; returns the first other result.
int put_get(DB* db, unsigned key, unsigned value) {
  for (int tries = 0;; ++tries) {
    int rc = put(db, key, value);
    if (rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED) continue;
    if (rc != 0) return rc;
    rc = get(db, key);
    if (rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED) continue;
    return rc == DB_NOTFOUND ? 0 : rc;
  }
}

constexpr unsigned nkeys = 8;

/// The forked child: opens its own handle, says it is ready, hammers until killed.
[[noreturn]] void hammer_child(const std::string& home, int ready_fd, unsigned seed) {
  if (opt.install) robust::install();  // inherited already; a no-op
  handles h;
  int rc = open_env(home, false, h);
  if (rc != 0) {
    std::fprintf(stderr, "child: open: %s\n", rc_name(rc));
    std::_Exit(4);
  }
  char c = 1;
  if (::write(ready_fd, &c, 1) != 1) std::_Exit(5);
  std::minstd_rand rng(seed);
  for (unsigned i = 0;; ++i) {
    rc = put_get(h.db, static_cast<unsigned>(rng() % nkeys), i);
    if (rc == DB_RUNRECOVERY) std::_Exit(3);
    if (rc != 0) std::_Exit(6);
  }
}

bool wait_ready(int fd, int ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  fd_set set;
  FD_ZERO(&set);
  FD_SET(fd, &set);
  if (::select(fd + 1, &set, nullptr, nullptr, &tv) != 1) return false;
  char c;
  return ::read(fd, &c, 1) == 1;
}

// ---- --mode kill -----------------------------------------------------------------------------

int run_kill() {
  if (opt.install) robust::install();
  std::printf("kill rounds: install=%s seed=%u rounds=%d workers=%d %s\n  %s\n",
              opt.install ? "yes" : "NO", opt.seed, opt.rounds, opt.workers,
              opt.sync ? "sync" : "nosync", robust::status());
  std::string home = make_temp_dir("kill");
  watchdog wd;
  wd.home = home;
  handles h;
  wd.arm("initial open");
  int rc = open_env(home, false, h);
  wd.disarm();
  if (rc != 0) {
    std::printf("open: %s\n", rc_name(rc));
    return 1;
  }
  std::printf("  shared mutexes made robust so far: %llu\n",
              static_cast<unsigned long long>(robust::event_counts.robust_inits.load()));

  std::mt19937 rng(opt.seed);
  int clean = 0, recovered = 0, failchk_errors = 0, failed = 0;
  long long worker_ops_total = 0;
  for (int round = 1; round <= opt.rounds; ++round) {
    char summary[200];
    std::snprintf(summary, sizeof summary,
                  "so far: %d clean rounds, %d DB_RUNRECOVERY rounds (round %d)", clean, recovered,
                  round);
    wd.summary = summary;
    int pipefd[2];
    if (::pipe(pipefd) != 0) return 1;
    unsigned child_seed = static_cast<unsigned>(rng());
    std::fflush(stdout);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(pipefd[0]);
      hammer_child(home, pipefd[1], child_seed);
    }
    ::close(pipefd[1]);
    wd.child = pid;
    bool ready = wait_ready(pipefd[0], 5000);
    ::close(pipefd[0]);
    if (!ready) {
      std::printf("round %d: the child did not open the environment\n", round);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return 1;
    }

    // Parent threads work on the same keys meanwhile (so some are blocked on the child's mutexes
    // when it dies), and a failchk thread frees what dead processes held (as the library's
    // watchdog does every 200 ms).
    std::atomic<bool> stop{false}, stop_failchk{false};
    std::atomic<int> worker_runrecovery{0}, worker_other{0}, failchk_runrecovery{0};
    std::atomic<long long> worker_ops{0};
    std::vector<std::thread> threads;
    for (int w = 0; w < opt.workers; ++w)
      threads.emplace_back([&, w] {
        std::minstd_rand r(child_seed + 1000u * static_cast<unsigned>(w + 1));
        while (!stop.load()) {
          int x = put_get(h.db, static_cast<unsigned>(r() % nkeys), static_cast<unsigned>(w));
          if (x == DB_RUNRECOVERY) {
            ++worker_runrecovery;
            break;
          }
          if (x != 0) {
            ++worker_other;
            std::printf("  round %d: worker: %s\n", round, rc_name(x));
            break;
          }
          ++worker_ops;
        }
      });
    std::thread failchk_thread([&] {
      while (!stop_failchk.load()) {
        int x = h.env->failchk(h.env, 0);
        if (x == DB_RUNRECOVERY) {
          // The environment is broken (perhaps by another process): make the waits of this
          // process's threads in it fail, as the library's watchdog would.
          ++failchk_runrecovery;
          robust::abort_waits(home.c_str());
        } else if (x != 0) {
          ++failchk_errors;
          note_message("failchk returned: ", rc_name(x));
        }
        sleep_ms(10);
      }
    });

    int delay = 1 + static_cast<int>(rng() % 20);
    sleep_ms(delay);
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    wd.child = -1;
    bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;

    // Everyone in the parent must come back: let them run on a little, then stop them.
    wd.arm("round " + std::to_string(round) + ": parent threads after the child's death");
    sleep_ms(100);
    stop = true;
    for (auto& t : threads) t.join();
    stop_failchk = true;
    failchk_thread.join();
    wd.disarm();
    worker_ops_total += worker_ops.load();

    // The put/get the brief asks for, on the main thread.
    wd.arm("round " + std::to_string(round) + ": put/get after the child's death");
    int final_rc =
        (worker_runrecovery || failchk_runrecovery) ? DB_RUNRECOVERY : put_get(h.db, 0, 42);
    wd.disarm();
    bool runrecovery = final_rc == DB_RUNRECOVERY;
    if (final_rc != 0 && !runrecovery) {
      std::printf("round %d: put/get returned %s\n", round, rc_name(final_rc));
      ++failed;
    }
    if (worker_other) ++failed;
    if (!killed) std::printf("round %d: the child exited by itself (status %d)\n", round, status);

    if (runrecovery) {
      ++recovered;
      wd.arm("round " + std::to_string(round) + ": close + DB_RECOVER");
      close_env(h);
      rc = open_env(home, true, h);
      int after = rc == 0 ? put_get(h.db, 0, 43) : rc;
      if (after == 0) after = check_contents(h.db);
      wd.disarm();
      if (after != 0) {
        std::printf("round %d: recovery failed: %s\n", round, rc_name(after));
        return 1;
      }
    } else {
      ++clean;
    }
    if (!opt.quiet)
      std::printf(
          "  round %2d: kill after %2d ms: %s (workers: %lld ops, %d saw DB_RUNRECOVERY; "
          "failchk: %s) owner_died=%llu failed waits=%llu\n",
          round, delay, runrecovery ? "DB_RUNRECOVERY -> recovered" : "clean", worker_ops.load(),
          worker_runrecovery.load(), failchk_runrecovery ? "DB_RUNRECOVERY" : "ok",
          static_cast<unsigned long long>(robust::owner_died_count()),
          static_cast<unsigned long long>(robust::event_counts.waits_failed.load()));
  }
  // Finally recover once more and read everything back.
  close_env(h);
  unsigned records = 0;
  rc = open_env(home, true, h);
  if (rc == 0) rc = check_contents(h.db, &records);
  std::printf("  final DB_RECOVER + full scan: %s, %u records\n", rc_name(rc), records);
  if (rc != 0) ++failed;
  close_env(h);
  remove_tree(home);
  std::printf(
      "RESULT kill: install=%s rounds=%d clean=%d runrecovery+recovered=%d failed=%d "
      "owner_died_count=%llu not_recoverable=%llu self_deadlocks=%llu failed_waits=%llu "
      "destroy_errors_hidden=%llu cond_destroys=%llu parent worker ops=%lld "
      "failchk errors=%d\n",
      opt.install ? "yes" : "no", opt.rounds, clean, recovered, failed,
      static_cast<unsigned long long>(robust::owner_died_count()),
      static_cast<unsigned long long>(robust::event_counts.not_recoverable.load()),
      static_cast<unsigned long long>(robust::event_counts.self_deadlocks.load()),
      static_cast<unsigned long long>(robust::event_counts.waits_failed.load()),
      static_cast<unsigned long long>(robust::event_counts.destroy_errors.load()),
      static_cast<unsigned long long>(robust::event_counts.cond_destroys.load()), worker_ops_total,
      failchk_errors);
  print_messages();
  return failed ? 1 : 0;
}

// ---- --mode waiter ---------------------------------------------------------------------------

/// The ids of the mutexes whose DB_ENV->mutex_stat_print line names `what`.
std::vector<db_mutex_t> mutex_ids(DB_ENV* env, const char* what) {
  static std::vector<std::string>* lines = nullptr;
  std::vector<std::string> collected;
  lines = &collected;
  env->set_msgcall(env, [](const DB_ENV*, const char* m) {
    if (lines) lines->push_back(m);
  });
  env->mutex_stat_print(env, DB_STAT_ALL);
  env->set_msgcall(env, &on_message);
  lines = nullptr;
  std::vector<db_mutex_t> ids;
  std::string needle = std::string("], ") + what + " (alloc";
  for (auto& l : collected) {
    if (l.find(needle) == std::string::npos) continue;
    ids.push_back(static_cast<db_mutex_t>(std::strtoul(l.c_str(), nullptr, 10)));
  }
  return ids;
}

/// A child locks `ids` through DB_ENV->mutex_lock (libdb's own __db_pthread_mutex_lock) and
/// sleeps; a parent thread calls `waiter`, which must block; the child is SIGKILLed; `waiter`
/// must return. Returns its result, or exits through the watchdog.
int waiter_case(const char* name, const std::string& home, handles& h, watchdog& wd,
                const std::vector<db_mutex_t>& ids, const std::function<int()>& waiter) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) std::exit(1);
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    handles c;
    if (open_env(home, false, c, false) != 0) std::_Exit(4);
    for (db_mutex_t id : ids)
      if (c.env->mutex_lock(c.env, id) != 0) std::_Exit(5);
    char x = 1;
    if (::write(pipefd[1], &x, 1) != 1) std::_Exit(6);
    for (;;) ::pause();
  }
  ::close(pipefd[1]);
  wd.child = pid;
  if (!wait_ready(pipefd[0], 5000)) {
    std::printf("  %s: the child did not get the mutexes\n", name);
    std::exit(1);
  }
  ::close(pipefd[0]);
  std::atomic<int> result{-1};
  std::atomic<bool> done{false};
  std::atomic<long> tid{0};
  std::thread t([&] {
    tid = gettid_();
    result = waiter();
    done = true;
  });
  sleep_ms(300);
  bool blocked = !done.load();
  std::printf("  %s: waiter %s after 300 ms (wchan %s)\n", name,
              blocked ? "is blocked" : "already RETURNED", wchan_of(tid.load()).c_str());
  wd.arm(std::string(name) + ": the blocked waiter after the holder's SIGKILL");
  long long t0 = now_ms();
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  wd.child = -1;
  t.join();
  wd.disarm();
  std::printf("  %s: holder killed; the waiter returned %s after %lld ms; owner_died_count=%llu\n",
              name, rc_name(result.load()), now_ms() - t0,
              static_cast<unsigned long long>(robust::owner_died_count()));
  (void)h;
  return blocked ? result.load() : -1;
}

int run_waiter() {
  if (opt.install) robust::install();
  std::printf("waiter: install=%s\n  %s\n", opt.install ? "yes" : "NO", robust::status());
  std::string home = make_temp_dir("waiter");
  watchdog wd;
  wd.home = home;
  handles h;
  int rc = open_env(home, false, h);
  if (rc != 0) return 1;
  int failures = 0;

  // 1. An application mutex (DB_ENV->mutex_alloc: a process-shared pthread mutex in the region).
  db_mutex_t app = 0;
  rc = h.env->mutex_alloc(h.env, 0, &app);
  if (rc != 0) {
    std::printf("mutex_alloc: %s\n", rc_name(rc));
    return 1;
  }
  rc = waiter_case("application mutex", home, h, wd, {app},
                   [&] { return h.env->mutex_lock(h.env, app); });
  if (rc != DB_RUNRECOVERY) ++failures;
  // The environment has panicked: recover it (we are the only process now).
  wd.arm("close + DB_RECOVER after case 1");
  close_env(h);
  rc = open_env(home, true, h);
  if (rc == 0) rc = put_get(h.db, 1, 1);
  wd.disarm();
  std::printf("  after DB_RECOVER: put/get %s\n", rc_name(rc));
  if (rc != 0) return 1;

  // 2. Berkeley DB's own lock-region mutexes (what __lock_id/__lock_get take): a put blocks.
  std::vector<db_mutex_t> ids = mutex_ids(h.env, "lock region");
  std::printf("  lock-region mutex ids: %zu (%lu..%lu)\n", ids.size(),
              static_cast<unsigned long>(ids.empty() ? 0 : ids.front()),
              static_cast<unsigned long>(ids.empty() ? 0 : ids.back()));
  rc = waiter_case("lock-region mutexes", home, h, wd, ids, [&] { return put(h.db, 2, 2); });
  if (rc != DB_RUNRECOVERY) ++failures;
  wd.arm("close + DB_RECOVER after case 2");
  close_env(h);
  rc = open_env(home, true, h);
  if (rc == 0) rc = put_get(h.db, 2, 3);
  wd.disarm();
  std::printf("  after DB_RECOVER: put/get %s\n", rc_name(rc));
  if (rc != 0) ++failures;
  close_env(h);
  remove_tree(home);
  std::printf("RESULT waiter: install=%s failures=%d owner_died_count=%llu\n",
              opt.install ? "yes" : "no", failures,
              static_cast<unsigned long long>(robust::owner_died_count()));
  print_messages();
  return failures ? 1 : 0;
}

// ---- --mode stress ---------------------------------------------------------------------------

/// No kills: 3 processes x 3 threads of puts, gets, deletes and cursor scans on a few keys (so,
/// many deadlocks), plus a failchk thread in each, for a few seconds. With install() nothing may
/// fail: the robust, error-checking mutexes must not change Berkeley DB's normal behaviour.
int run_stress() {
  if (opt.install) robust::install();
  std::printf("stress: install=%s, 3 processes x 3 threads, 4 s\n  %s\n",
              opt.install ? "yes" : "NO", robust::status());
  std::string home = make_temp_dir("stress");
  watchdog wd;
  wd.home = home;
  handles h;
  if (open_env(home, false, h) != 0) return 1;
  std::vector<pid_t> pids;
  for (int p = 0; p < 3; ++p) {
    std::fflush(stdout);
    pid_t pid = ::fork();
    if (pid == 0) {
      handles c;
      if (open_env(home, false, c) != 0) std::_Exit(4);
      std::atomic<bool> stop{false};
      std::atomic<long> ops{0}, deadlocks{0}, errors{0};
      std::thread failchk([&] {
        while (!stop) {
          if (c.env->failchk(c.env, 0) != 0) ++errors;
          sleep_ms(20);
        }
      });
      std::vector<std::thread> ts;
      for (int t = 0; t < 3; ++t)
        ts.emplace_back([&, t] {
          std::minstd_rand r(
              static_cast<unsigned>(opt.seed + 17u * static_cast<unsigned>(p * 3 + t)));
          long long end = now_ms() + 4000;
          while (now_ms() < end) {
            unsigned key = static_cast<unsigned>(r() % 2000);  // many pages: deadlocks
            int rc;
            switch (r() % 5) {
              case 4: {  // two keys in one transaction, in random order: deadlocks
                DB_TXN* txn = nullptr;
                rc = c.env->txn_begin(c.env, nullptr, &txn, 0);
                if (rc != 0) break;
                unsigned other = static_cast<unsigned>(r() % 2000);
                for (unsigned k2 : {key, other}) {
                  char kbuf[16], vbuf[100] = "value";
                  std::snprintf(kbuf, sizeof kbuf, "key%u", k2);
                  DBT k, v;
                  std::memset(&k, 0, sizeof k);
                  std::memset(&v, 0, sizeof v);
                  k.data = kbuf;
                  k.size = static_cast<u_int32_t>(std::strlen(kbuf));
                  v.data = vbuf;
                  v.size = sizeof vbuf;
                  if ((rc = c.db->put(c.db, txn, &k, &v, 0)) != 0) break;
                }
                if (rc == 0)
                  rc = txn->commit(txn, 0);
                else
                  txn->abort(txn);
                break;
              }
              case 0:
                rc = put(c.db, key, key);
                break;
              case 1:
                rc = get(c.db, key);
                break;
              case 2: {
                char kbuf[16];
                std::snprintf(kbuf, sizeof kbuf, "key%u", key);
                DBT k;
                std::memset(&k, 0, sizeof k);
                k.data = kbuf;
                k.size = static_cast<u_int32_t>(std::strlen(kbuf));
                rc = c.db->del(c.db, nullptr, &k, 0);
                break;
              }
              default:
                rc = (r() % 50 == 0) ? check_contents(c.db) : get(c.db, key + 1);
                break;
            }
            if (rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED)
              ++deadlocks;
            else if (rc != 0 && rc != DB_NOTFOUND) {
              ++errors;
              std::fprintf(stderr, "stress: %s\n", rc_name(rc));
            }
            ++ops;
          }
        });
      for (auto& t : ts) t.join();
      stop = true;
      failchk.join();
      close_env(c);
      std::printf("  process %d: %ld ops, %ld deadlocks, %ld errors\n", p, ops.load(),
                  deadlocks.load(), errors.load());
      std::fflush(stdout);
      std::_Exit(errors ? 1 : 0);
    }
    pids.push_back(pid);
  }
  wd.arm("stress processes", 30000);
  int failures = 0;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
  }
  wd.disarm();
  int rc = check_contents(h.db);
  close_env(h);
  remove_tree(home);
  std::printf(
      "RESULT stress: install=%s failed processes=%d final scan=%s owner_died_count=%llu "
      "robust mutexes=%llu self_deadlocks=%llu failed_waits=%llu\n",
      opt.install ? "yes" : "no", failures, rc_name(rc),
      static_cast<unsigned long long>(robust::owner_died_count()),
      static_cast<unsigned long long>(robust::event_counts.robust_inits.load()),
      static_cast<unsigned long long>(robust::event_counts.self_deadlocks.load()),
      static_cast<unsigned long long>(robust::event_counts.waits_failed.load()));
  print_messages();
  return (failures || rc != 0) ? 1 : 0;
}

// ---- --mode bench ----------------------------------------------------------------------------

struct bench_result {
  double get_ns = 0;
  double mutex_ns = 0;
  unsigned long long robust_inits = 0;
  int ok = 0;
};

/// In a fresh child: optionally install(), then time 1M DB->get on one thread.
bench_result bench_once(bool install, long gets) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) std::exit(1);
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    bench_result r;
    if (install) robust::install();
    std::string home = make_temp_dir("bench");
    handles h;
    if (open_env(home, false, h) == 0) {
      for (unsigned k = 0; k < 1000; ++k) put(h.db, k, k);
      for (unsigned k = 0; k < 100000; ++k) get(h.db, k % 1000);  // warm up
      auto t0 = std::chrono::steady_clock::now();
      int bad = 0;
      for (long i = 0; i < gets; ++i) bad |= get(h.db, static_cast<unsigned>(i % 1000));
      auto t1 = std::chrono::steady_clock::now();
      r.get_ns =
          std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(gets);
      r.ok = bad == 0;
      close_env(h);
    }
    remove_tree(home);
    // The bare cost of a lock/unlock pair of a process-shared mutex as libdb gets it: plain, or
    // (installed) initialised and locked through the replacements (robust, error-checking).
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    if (install)
      smisk_ipc_robust_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    else
      pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_t m;
    pthread_mutex_init(&m, &a);
    int (*lock)(pthread_mutex_t*) = install ? &smisk_ipc_robust_mutex_lock : &pthread_mutex_lock;
    const long pairs = 20000000;
    auto t2 = std::chrono::steady_clock::now();
    for (long i = 0; i < pairs; ++i) {
      lock(&m);
      pthread_mutex_unlock(&m);
    }
    auto t3 = std::chrono::steady_clock::now();
    r.mutex_ns = std::chrono::duration<double, std::nano>(t3 - t2).count() / pairs;
    r.robust_inits = robust::event_counts.robust_inits.load();
    if (::write(pipefd[1], &r, sizeof r) != sizeof r) std::_Exit(1);
    std::_Exit(0);
  }
  ::close(pipefd[1]);
  bench_result r;
  if (::read(pipefd[0], &r, sizeof r) != sizeof r) r.ok = 0;
  ::close(pipefd[0]);
  ::waitpid(pid, nullptr, 0);
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run_bench() {
  const long gets = 1000000;
  const int trials = 9;
  std::vector<double> plain, robust_, ratio, mplain, mrobust;
  std::printf(
      "bench: %ld uncontended DB->get (btree, 1000 keys, non-transactional read in a "
      "transactional environment, one thread), %d alternating trials, each in a fresh process\n",
      gets, trials);
  for (int t = 0; t < trials; ++t) {
    bench_result a = bench_once(false, gets);
    bench_result b = bench_once(true, gets);
    if (!a.ok || !b.ok) {
      std::printf("bench failed\n");
      return 1;
    }
    std::printf(
        "  trial %d: without install %.1f ns/get, with install %.1f ns/get (ratio %.3f; "
        "%llu robust mutexes); pshared mutex lock+unlock: %.1f ns plain, %.1f ns robust\n",
        t + 1, a.get_ns, b.get_ns, b.get_ns / a.get_ns, b.robust_inits, a.mutex_ns, b.mutex_ns);
    plain.push_back(a.get_ns);
    robust_.push_back(b.get_ns);
    ratio.push_back(b.get_ns / a.get_ns);
    mplain.push_back(a.mutex_ns);
    mrobust.push_back(b.mutex_ns);
  }
  std::printf(
      "RESULT bench: median %.1f ns/get without, %.1f ns/get with install: ratio %.3f "
      "(median of per-trial ratios %.3f); lock+unlock pair %.1f vs %.1f ns\n",
      median(plain), median(robust_), median(robust_) / median(plain), median(ratio),
      median(mplain), median(mrobust));
  return 0;
}

// ---- the driver ------------------------------------------------------------------------------

int run_self(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string line;
  for (auto& a : args) line += " " + a;
  std::printf("\n==> robust_mutex_experiment%s\n", line.c_str());
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execv("/proc/self/exe", argv.data());
    std::_Exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run_all() {
  std::vector<std::string> common = {"--seed", std::to_string(opt.seed), "--rounds",
                                     std::to_string(opt.rounds)};
  if (opt.quiet) common.push_back("--quiet");
  if (opt.gdb) common.push_back("--gdb");
  if (opt.sync) common.push_back("--sync");
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), common.begin(), common.end());
    return a;
  };
  struct expectation {
    std::vector<std::string> args;
    int expected;
    const char* meaning;
  };
  std::vector<expectation> steps = {
      {with({"--mode", "stress"}), 0,
       "no kills: nothing fails with robust, error-checking mutexes"},
      {with({"--mode", "waiter"}), 0,
       "a blocked waiter returns DB_RUNRECOVERY when the holder dies"},
      {with({"--mode", "kill"}), 0, "every round finishes (0 or DB_RUNRECOVERY + DB_RECOVER)"},
      {with({"--mode", "waiter", "--no-install"}), 2, "without install(): the waiter hangs"},
      {with({"--mode", "kill", "--no-install"}), 2, "without install(): some round hangs"},
      {{"--mode", "bench"}, 0, "overhead"},
  };
  std::vector<std::string> report;
  bool ok = true;
  for (auto& s : steps) {
    int rc = run_self(s.args);
    std::string line;
    for (auto& a : s.args) line += a + " ";
    bool pass = rc == s.expected;
    ok = ok && pass;
    report.push_back(std::string(pass ? "PASS" : "FAIL") + " (exit " + std::to_string(rc) +
                     ", expected " + std::to_string(s.expected) + "): " + s.meaning + "  [" + line +
                     "]");
  }
  std::printf("\nSUMMARY\n");
  for (auto& r : report) std::printf("  %s\n", r.c_str());
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  opt.seed = static_cast<unsigned>(std::chrono::system_clock::now().time_since_epoch().count());
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(1);
      }
      return argv[++i];
    };
    if (a == "--mode")
      opt.mode = next();
    else if (a == "--no-install")
      opt.install = false;
    else if (a == "--rounds")
      opt.rounds = std::atoi(next().c_str());
    else if (a == "--seed")
      opt.seed = static_cast<unsigned>(std::strtoul(next().c_str(), nullptr, 10));
    else if (a == "--workers")
      opt.workers = std::atoi(next().c_str());
    else if (a == "--sync")
      opt.sync = true;
    else if (a == "--gdb")
      opt.gdb = true;
    else if (a == "--quiet")
      opt.quiet = true;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 1;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (opt.mode.empty()) return run_all();
  if (opt.mode == "kill") return run_kill();
  if (opt.mode == "waiter") return run_waiter();
  if (opt.mode == "bench") return run_bench();
  if (opt.mode == "stress") return run_stress();
  std::fprintf(stderr, "unknown mode %s\n", opt.mode.c_str());
  return 1;
}
