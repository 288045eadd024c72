// What governs contended increments on Berkeley DB: 2 processes x N increments of one key, on the
// raw C API, one variant at a time, each in a fresh process and a fresh environment on /dev/shm.
// Every variant must end with the counter at exactly 2 x N (checked; a variant that loses
// increments is reported as such).
//
// The baseline is what shared_dict does (detail/bdb_env_config.hpp's configure_environment, as
// detail/bdb_env.hpp calls it, + bsddb.hpp): DB_INIT_MPOOL | DB_INIT_LOCK | DB_INIT_LOG |
// DB_INIT_TXN | DB_THREAD, 32 MiB cache, set_lk_detect(DB_LOCK_DEFAULT), lock table sizes,
// thread tracking, 2 MiB log files removed automatically, DB_TXN_WRITE_NOSYNC, hash,
// checkpoints by log volume in the writing thread, the robust-mutex patch, and one transaction
// per increment: get(DB_RMW), put, commit, retried with the library's backoff.
//
// The rows marked "puts" are not increments: two processes store random keys (plain auto-commit
// puts, shared_dict's set()), which shows what bounds two processes that write at the same time
// without touching the same key: libdb's region mutexes (log, transactions), on which glibc puts a
// waiter to sleep at once. The "spin" rows emulate a short spin before that sleep (see
// spin_tries below).
//
//   counter_experiment [--ops N] [--rounds N] [--only SUBSTRING] [--no-pin]
// The two workers are pinned to different CPUs (unless --no-pin), so that they contend the way
// two busy processes of a 2-core machine do, whatever else the machine runs.
#include <db.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <smisk/ipc/bsddb_options.hpp>
#include <smisk/ipc/detail/bdb_env.hpp>
#include <smisk/ipc/detail/bdb_env_config.hpp>
#include <smisk/ipc/detail/robust_mutex.hpp>

// ---- "spin before sleeping" in libdb's mutex acquisition ----------------------------------------
//
// libdb's region mutexes (log, transaction and lock regions) are process-shared pthread mutexes
// held for well under a microsecond, and glibc puts a thread that finds one held to sleep at once
// (futex), so that every collision between two busy processes costs a wake-up across cores. To
// measure what a short spin would give, this program interposes pthread_mutex_lock (libdb's calls
// without the robust-mutex patch) and pthread_mutex_timedlock (what the patch's replacement calls
// when the lock is busy): when spin_tries is not 0, they try the lock that many times, with a
// short pause in between, before they sleep. Only the variants that set spin_tries do this.
namespace {
std::atomic<int> spin_tries{0};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

template <class F>
F next_symbol(const char* name) {
  void* p = ::dlsym(RTLD_NEXT, name);
  F f;
  std::memcpy(&f, &p, sizeof f);
  return f;
}

/// 0 or EBUSY after spinning; anything else is the trylock's own answer.
int spin_first(pthread_mutex_t* m) {
  int tries = spin_tries.load(std::memory_order_relaxed);
  for (int i = 0; i < tries; ++i) {
    int rc = ::pthread_mutex_trylock(m);
    if (rc != EBUSY) return rc;
    for (int j = 0; j < 4; ++j) cpu_relax();
  }
  return EBUSY;
}
}  // namespace

extern "C" int pthread_mutex_lock(pthread_mutex_t* m) {
  using fn = int (*)(pthread_mutex_t*);
  static std::atomic<fn> real{nullptr};  // no function-local static guard: it may take a mutex
  fn f = real.load(std::memory_order_acquire);
  if (!f) real.store(f = next_symbol<fn>("pthread_mutex_lock"), std::memory_order_release);
  if (spin_tries.load(std::memory_order_relaxed) != 0) {
    int rc = spin_first(m);
    if (rc != EBUSY) return rc;
  }
  return f(m);
}

extern "C" int pthread_mutex_timedlock(pthread_mutex_t* m, const struct timespec* until) {
  using fn = int (*)(pthread_mutex_t*, const struct timespec*);
  static std::atomic<fn> real{nullptr};
  fn f = real.load(std::memory_order_acquire);
  if (!f) real.store(f = next_symbol<fn>("pthread_mutex_timedlock"), std::memory_order_release);
  if (spin_tries.load(std::memory_order_relaxed) != 0) {
    int rc = spin_first(m);
    if (rc != EBUSY) return rc;
  }
  return f(m, until);
}

namespace {

using steady = std::chrono::steady_clock;
namespace bdb = smisk::ipc::detail::bdb;
using smisk::ipc::bsddb::durability_level;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now().time_since_epoch())
      .count();
}

[[noreturn]] void die(const std::string& what) { throw std::runtime_error(what); }
void check(int rc, const char* what) {
  if (rc != 0) die(std::string(what) + ": " + db_strerror(rc));
}

extern "C" int alive(DB_ENV*, pid_t pid, db_threadid_t, u_int32_t) {
  return pid == ::getpid() || ::kill(pid, 0) == 0 || errno == EPERM ? 1 : 0;
}

/// How an increment is done.
enum class op_kind {
  txn_rmw,         // txn_begin; get(DB_RMW); put; commit            (shared_dict)
  txn_plain,       // txn_begin; get (read lock); put (upgrade); commit
  txn_cursor,      // txn_begin; cursor get(DB_SET|DB_RMW); put(DB_CURRENT); commit
  txn_named_lock,  // txn_begin; lock_get(key object, WRITE, txn locker); get; put; commit
  cursor_only,     // no transactions: cursor get(DB_SET|DB_RMW); put(DB_CURRENT)
  cds_cursor,      // DB_INIT_CDB: DB_WRITECURSOR cursor get; put(DB_CURRENT)
  random_put,      // not an increment: an auto-commit put of a random one of 100,000 keys
};

/// How a conflict (DB_LOCK_DEADLOCK, DB_LOCK_NOTGRANTED) is retried.
enum class retry_kind { library, spin };

/// An outer lock held around the whole transaction.
enum class outer_kind { none, robust_mutex, spin_robust_mutex };

struct variant {
  std::string name;
  op_kind op = op_kind::txn_rmw;
  bool txn = true;
  bool cds = false;
  bool patch = true;
  bool btree = false;
  durability_level durability = durability_level::process_crash;  // the commit's log write
  bool log_in_memory = false;
  u_int32_t tas_spins = 0;  // 0: leave the default
  u_int32_t lk_detect = DB_LOCK_DEFAULT;
  u_int32_t txn_begin_flags = 0;
  int nowait_tries = 0;           // DB_TXN_NOWAIT for the first tries only, then a waiting txn
  db_timeout_t lock_timeout = 0;  // microseconds; 0: none
  u_int32_t lock_get_flags = 0;
  retry_kind retry = retry_kind::library;
  outer_kind outer = outer_kind::none;
  int processes = 2;
  int mutex_spins = 0;  // spin_tries for libdb's mutexes (see the top)
};

// ---- the outer lock: robust process-shared mutexes in a file of the home ----------------------

constexpr int stripes = 64;
struct stripe_table {
  pthread_mutex_t m[stripes];
};

stripe_table* map_stripes(const std::string& home, bool create) {
  std::string path = home + "/stripes";
  int fd = ::open(path.c_str(), O_RDWR | (create ? O_CREAT : 0) | O_CLOEXEC, 0600);
  if (fd < 0) die("open stripes");
  if (create && ::ftruncate(fd, sizeof(stripe_table)) != 0) die("ftruncate");
  void* p = ::mmap(nullptr, sizeof(stripe_table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) die("mmap stripes");
  auto* t = static_cast<stripe_table*>(p);
  if (create) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    for (auto& m : t->m) pthread_mutex_init(&m, &a);
    pthread_mutexattr_destroy(&a);
  }
  return t;
}

void outer_lock(pthread_mutex_t* m, bool spin) {
  if (spin) {
    // Spin (about 20-50 us at most) before sleeping: the holder's transaction takes a few
    // microseconds, far less than a sleep/wake-up hand-off between cores.
    for (int i = 0; i < 4000; ++i) {
      int rc = pthread_mutex_trylock(m);
      if (rc == 0) return;
      if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        return;
      }
      for (int j = 0; j < 8; ++j) cpu_relax();
    }
  }
  int rc = pthread_mutex_lock(m);
  if (rc == EOWNERDEAD) pthread_mutex_consistent(m);
}

// ---- one increment
// ----------------------------------------------------------------------------------

class backoff {
 public:
  explicit backoff(retry_kind k) : kind_(k) {}
  void operator()() {
    ++tries_;
    if (kind_ == retry_kind::spin) {
      for (int j = 0; j < 16; ++j) cpu_relax();
      return;
    }
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
  [[nodiscard]] int tries() const { return tries_; }

 private:
  retry_kind kind_;
  int tries_ = 0;
};

const char key_bytes[] = "counter:0001";

inline DBT dbt(const void* p, std::size_t n) {
  DBT d;
  std::memset(&d, 0, sizeof d);
  d.data = const_cast<void*>(p);
  d.size = static_cast<u_int32_t>(n);
  return d;
}

std::int64_t parse(const char* p, std::size_t n) {
  std::int64_t v = 0;
  auto r = std::from_chars(p, p + n, v);
  if (r.ec != std::errc() || r.ptr != p + n) die("not a number");
  return v;
}

/// Whether this process runs a variant with the robust-mutex patch.
inline bool& patched_scope() {
  static bool on = false;
  return on;
}
/// Makes every libdb call of the calling thread count as one of the library's.
inline void enter_patched_scope() {
  static DB_ENV* const any_env = reinterpret_cast<DB_ENV*>(&patched_scope);
  if (patched_scope()) smisk::ipc::detail::robust::current_env = any_env;
}

struct handles {
  std::uint64_t checkpoint_bytes = smisk::ipc::detail::bdb::checkpoint_interval(0);
  DB_ENV* env = nullptr;
  DB* db = nullptr;
  stripe_table* stripes = nullptr;
  std::int64_t retries = 0;
  std::uint64_t writes = 0;
  std::uint64_t rng = 0;
  std::int64_t done = 0;

  /// After a committed write: a checkpoint, in the writing thread, when the library would take
  /// one (detail::bdb::checkpoint_due).
  void note_write() {
    DB_ENV* e = env;
    if (smisk::ipc::detail::bdb::checkpoint_due(
            writes++, [e](DB_LOG_STAT** st) { return e->log_stat(e, st, 0); }, checkpoint_bytes))
      e->txn_checkpoint(e, static_cast<u_int32_t>(checkpoint_bytes >> 10), 0, 0);
  }
};

constexpr int put_keys = 100000;
const std::string put_value(100, 'v');

/// random_put: one auto-commit put (the library's set()), retried like the library does.
std::int64_t random_put(const variant& v, handles& h) {
  h.rng ^= h.rng << 13;
  h.rng ^= h.rng >> 7;
  h.rng ^= h.rng << 17;
  char key[16];
  std::snprintf(key, sizeof key, "key:%08d", static_cast<int>(h.rng % put_keys));
  DBT k = dbt(key, 12), d = dbt(put_value.data(), put_value.size());
  for (backoff retry(retry_kind::library);; retry(), ++h.retries) {
    int rc = h.db->put(h.db, nullptr, &k, &d, 0);
    if (rc == 0) {
      if (v.txn) h.note_write();
      return ++h.done;
    }
    if (rc != DB_LOCK_DEADLOCK && rc != DB_LOCK_NOTGRANTED)
      die(std::string("put: ") + db_strerror(rc));
  }
}

bool retryable(int rc) { return rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED; }

std::int64_t increment(const variant& v, handles& h) {
  if (v.op == op_kind::random_put) return random_put(v, h);
  DBT k = dbt(key_bytes, sizeof key_bytes - 1);
  char buf[64];
  pthread_mutex_t* outer = nullptr;
  if (v.outer != outer_kind::none) {
    outer = &h.stripes->m[0];  // the key's stripe (one key here)
    outer_lock(outer, v.outer == outer_kind::spin_robust_mutex);
  }
  struct unlock_outer {
    pthread_mutex_t* m;
    ~unlock_outer() {
      if (m) pthread_mutex_unlock(m);
    }
  } unlock{outer};
  for (backoff retry(v.retry);; retry(), ++h.retries) {
    DBT d;
    std::memset(&d, 0, sizeof d);
    d.flags = DB_DBT_USERMEM;
    d.data = buf;
    d.ulen = sizeof buf;
    std::int64_t value = 0;
    int rc = 0;
    if (!v.txn) {
      DBC* c = nullptr;
      check(h.db->cursor(h.db, nullptr, &c, v.cds ? DB_WRITECURSOR : 0), "DB->cursor");
      rc = c->get(c, &k, &d, v.cds ? DB_SET : (DB_SET | DB_RMW));
      if (rc == 0) {
        value = parse(buf, d.size) + 1;
        char out[24];
        auto r = std::to_chars(out, out + sizeof out, value);
        DBT n = dbt(out, static_cast<std::size_t>(r.ptr - out));
        rc = c->put(c, &k, &n, DB_CURRENT);
      }
      int close_rc = c->close(c);
      if (rc == 0) rc = close_rc;
      if (rc == 0) return value;
      if (!retryable(rc)) die(std::string("increment: ") + db_strerror(rc));
      continue;
    }
    DB_TXN* t = nullptr;
    u_int32_t begin_flags = v.txn_begin_flags;
    if (retry.tries() < v.nowait_tries) begin_flags |= DB_TXN_NOWAIT;
    check(h.env->txn_begin(h.env, nullptr, &t, begin_flags), "txn_begin");
    DB_LOCK lock;
    DBC* c = nullptr;
    if (v.op == op_kind::txn_named_lock) {
      DBT obj = dbt(key_bytes, sizeof key_bytes - 1);
      rc = h.env->lock_get(h.env, t->id(t), v.lock_get_flags, &obj, DB_LOCK_WRITE, &lock);
    }
    if (rc == 0) {
      if (v.op == op_kind::txn_cursor) {
        rc = h.db->cursor(h.db, t, &c, 0);
        if (rc == 0) rc = c->get(c, &k, &d, DB_SET | DB_RMW);
      } else {
        rc = h.db->get(h.db, t, &k, &d, v.op == op_kind::txn_rmw ? DB_RMW : 0);
      }
    }
    if (rc == 0) {
      value = parse(buf, d.size) + 1;
      char out[24];
      auto r = std::to_chars(out, out + sizeof out, value);
      DBT n = dbt(out, static_cast<std::size_t>(r.ptr - out));
      rc = c ? c->put(c, &k, &n, DB_CURRENT) : h.db->put(h.db, t, &k, &n, 0);
    }
    if (c) {
      int close_rc = c->close(c);
      if (rc == 0) rc = close_rc;
    }
    if (rc == 0) {
      rc = t->commit(t, 0);  // releases the named lock too (it belongs to the transaction)
      if (rc == 0) {
        h.note_write();
        return value;
      }
    } else {
      t->abort(t);
    }
    if (!retryable(rc)) die(std::string("increment: ") + db_strerror(rc));
  }
}

// ---- environments
// -------------------------------------------------------------------------------------

handles open_env(const variant& v, const std::string& home, bool create) {
  handles h;
  check(::db_env_create(&h.env, 0), "db_env_create");
  DB_ENV* e = h.env;
  u_int32_t flags = 0;
  if (v.cds) {
    // Concurrent Data Store: none of shared_dict's environment but the cache.
    const std::size_t cache = bdb::env_config{}.cache_bytes;
    check(e->set_cachesize(e, 0, static_cast<u_int32_t>(cache), 1), "set_cachesize");
    flags = DB_CREATE | DB_INIT_MPOOL | DB_THREAD | DB_INIT_CDB;
  } else {
    // The baseline: shared_dict's environment (without transactions: its locking part).
    bdb::env_config config;
    config.transactions = v.txn;
    config.durability = v.durability;
    config.is_alive = &alive;
    const bdb::env_setup setup = bdb::configure_environment(e, config);
    check(setup.rc, setup.failed);
    flags = setup.open_flags;
    // The variations, over the baseline.
    if (v.lk_detect != DB_LOCK_DEFAULT) check(e->set_lk_detect(e, v.lk_detect), "set_lk_detect");
    if (v.txn && v.log_in_memory) {
      // The log in memory instead of files: set_lg_max(0) is libdb's default for in-memory logs.
      check(e->set_lg_bsize(e, 8u << 20), "set_lg_bsize");
      check(e->set_lg_max(e, 0), "set_lg_max");
      check(e->log_set_config(e, DB_LOG_AUTO_REMOVE, 0), "log_set_config");
      check(e->log_set_config(e, DB_LOG_IN_MEMORY, 1), "log_set_config");
    }
    if (v.txn && v.lock_timeout)
      check(e->set_timeout(e, v.lock_timeout, DB_SET_LOCK_TIMEOUT), "set_timeout");
    if (v.txn && create) flags |= DB_RECOVER;
  }
  if (v.tas_spins) check(e->mutex_set_tas_spins(e, v.tas_spins), "mutex_set_tas_spins");
  check(e->open(e, home.c_str(), flags, 0600), "DB_ENV->open");
  h.checkpoint_bytes = smisk::ipc::detail::bdb::checkpoint_interval_of(home);
  if (v.txn && !create) check(e->failchk(e, 0), "failchk");
  check(::db_create(&h.db, e, 0), "db_create");
  u_int32_t db_flags = DB_CREATE | DB_THREAD | (v.txn ? DB_AUTO_COMMIT : 0u);
  check(h.db->open(h.db, nullptr, "counter", "data", v.btree ? DB_BTREE : DB_HASH, db_flags, 0600),
        "DB->open");
  if (v.outer != outer_kind::none) h.stripes = map_stripes(home, create);
  return h;
}

void close_env(handles& h) {
  h.db->close(h.db, 0);
  h.env->close(h.env, 0);
}

// ---- one run: a fresh process, environment and counter ------------------------------------------

struct shared_block {
  std::atomic<int> ready;
  std::atomic<int> go;
  std::int64_t go_ns;
  std::int64_t end_ns[8];
  std::int64_t retries[8];
  std::int64_t wrong[8];
  std::int64_t final_value;
  double cpu[8];  // CPU seconds each worker used from the start signal to its exit
  double busy;    // CPU seconds the whole machine used meanwhile (/proc/stat)
  std::int64_t done_ns;
  char error[200];
};

/// CPU seconds the processes of the whole machine have used (all CPUs), from /proc/stat.
double machine_busy_seconds() {
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return 0;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                     steal = 0;
  int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system,
                      &idle, &iowait, &irq, &softirq, &steal);
  std::fclose(f);
  if (n < 4) return 0;
  // Interrupt and softirq time (loopback networking, among others) is left out: it is not any
  // process's, and the memcached workloads cause it themselves.
  (void)irq;
  (void)softirq;
  return static_cast<double>(user + nice + system + steal) /
         static_cast<double>(::sysconf(_SC_CLK_TCK));
}

/// CPU seconds this process has used.
double own_cpu_seconds() {
  struct rusage u;
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

struct outcome {
  double rate = 0;     // increments/s, both processes together
  double fair = 0;     // the faster process's time / the slower's
  double retries = 0;  // conflicts retried per increment
  bool exact = false;  // the counter ended at processes x ops
  double other = 0;    // CPUs that other processes kept busy meanwhile (0.5: half a CPU)
  std::string error;
};

/// Pins the calling process to one CPU (worker w on CPU w), so that two workers always run on
/// different cores, as two busy processes of a 2-core machine do, whatever else the machine runs.
void pin_to_cpu(int w) {
  long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  if (cpus < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(w % static_cast<int>(cpus), &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

outcome run_once(const variant& v, int ops, const std::string& home, bool pin) {
  auto* b = static_cast<shared_block*>(::mmap(nullptr, sizeof(shared_block), PROT_READ | PROT_WRITE,
                                              MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (b == MAP_FAILED) die("mmap");
  new (b) shared_block{};
  std::fflush(nullptr);
  pid_t owner = ::fork();  // a fresh process: the robust-mutex patch is per process and permanent
  if (owner == 0) {
    int status = 0;
    try {
      if (v.patch) {
        // The patch acts only inside the library's own libdb calls: every libdb call of this
        // process counts as one (robust::current_env).
        smisk::ipc::detail::robust::install();
        patched_scope() = true;
        enter_patched_scope();
      }
      spin_tries.store(v.mutex_spins);
      ::mkdir(home.c_str(), 0700);
      handles h = open_env(v, home, true);
      DBT k = dbt(key_bytes, sizeof key_bytes - 1), d = dbt("0", 1);
      check(h.db->put(h.db, nullptr, &k, &d, 0), "DB->put");
      if (v.op == op_kind::random_put) {
        for (int i = 0; i < put_keys; ++i) {
          char key[16];
          std::snprintf(key, sizeof key, "key:%08d", i);
          DBT pk = dbt(key, 12), pd = dbt(put_value.data(), put_value.size());
          check(h.db->put(h.db, nullptr, &pk, &pd, 0), "DB->put");
        }
      }
      pid_t workers[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
      for (int w = 0; w < v.processes; ++w) {
        std::fflush(nullptr);
        workers[w] = ::fork();
        if (workers[w] == 0) {
          int ws = 0;
          try {
            if (pin) pin_to_cpu(w);
            handles mine = open_env(v, home, false);  // this process's own handles
            mine.rng = 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(w + 1);
            b->ready.fetch_add(1);
            while (b->go.load() == 0) ::sched_yield();
            const double cpu0 = own_cpu_seconds();
            std::int64_t last = 0;
            for (int i = 0; i < ops; ++i) {
              std::int64_t x = increment(v, mine);
              if (x <= last || x > static_cast<std::int64_t>(v.processes) * ops) ++b->wrong[w];
              last = x;
            }
            b->end_ns[w] = now_ns();
            b->retries[w] = mine.retries;
            close_env(mine);
            b->cpu[w] = own_cpu_seconds() - cpu0;
          } catch (const std::exception& e) {
            std::snprintf(b->error, sizeof b->error, "%s", e.what());
            b->end_ns[w] = now_ns();
            ws = 1;
          }
          std::_Exit(ws);
        }
      }
      while (b->ready.load() < v.processes) ::usleep(50);
      const double busy0 = machine_busy_seconds();
      b->go_ns = now_ns();
      b->go.store(1);
      for (int w = 0; w < v.processes; ++w) {
        int ws = 0;
        ::waitpid(workers[w], &ws, 0);
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) status = 1;
      }
      b->done_ns = now_ns();
      b->busy = machine_busy_seconds() - busy0;
      DBT got;
      std::memset(&got, 0, sizeof got);
      got.flags = DB_DBT_MALLOC;
      if (h.db->get(h.db, nullptr, &k, &got, 0) == 0) {
        b->final_value = parse(static_cast<char*>(got.data), got.size);
        std::free(got.data);
      }
      close_env(h);
    } catch (const std::exception& e) {
      std::snprintf(b->error, sizeof b->error, "%s", e.what());
      status = 1;
    }
    std::_Exit(status);
  }
  int status = 0;
  ::waitpid(owner, &status, 0);
  outcome o;
  o.error = b->error;
  if (o.error.empty() && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) o.error = "failed";
  std::int64_t slow = 0, fast = INT64_MAX;
  std::int64_t retries = 0;
  for (int w = 0; w < v.processes; ++w) {
    slow = std::max(slow, b->end_ns[w] - b->go_ns);
    fast = std::min(fast, b->end_ns[w] - b->go_ns);
    retries += b->retries[w];
  }
  std::int64_t total = static_cast<std::int64_t>(v.processes) * ops;
  o.rate = slow > 0 ? static_cast<double>(total) / (static_cast<double>(slow) / 1e9) : 0;
  o.fair = slow > 0 ? static_cast<double>(fast) / static_cast<double>(slow) : 0;
  o.retries = static_cast<double>(retries) / static_cast<double>(total);
  o.exact = v.op == op_kind::random_put || b->final_value == total;
  double ours = 0;
  for (int w = 0; w < v.processes; ++w) ours += b->cpu[w];
  double wall = static_cast<double>(b->done_ns - b->go_ns) / 1e9;
  o.other = wall > 0 ? std::max(0.0, b->busy - ours) / wall : 0;
  for (int w = 0; w < v.processes; ++w) o.exact = o.exact && b->wrong[w] == 0;
  ::munmap(b, sizeof(shared_block));
  std::string cmd = "rm -rf '" + home + "'";
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "cannot remove %s\n", home.c_str());
  return o;
}

std::vector<variant> variants() {
  std::vector<variant> out;
  auto add = [&](const std::string& name, const std::function<void(variant&)>& change) {
    variant v;
    v.name = name;
    change(v);
    out.push_back(v);
  };
  add("shared_dict today: txn, get(DB_RMW)+put, WRITE_NOSYNC, hash, patch", [](variant&) {});
  add("  same, 1 process (no contention)", [](variant& v) { v.processes = 1; });
  add("  without the robust-mutex patch", [](variant& v) { v.patch = false; });
  add("  mutex_set_tas_spins(1)", [](variant& v) { v.tas_spins = 1; });
  add("  mutex_set_tas_spins(10000)", [](variant& v) { v.tas_spins = 10000; });
  add("  set_lk_detect(DB_LOCK_YOUNGEST)", [](variant& v) { v.lk_detect = DB_LOCK_YOUNGEST; });
  add("  set_lk_detect(DB_LOCK_MINWRITE)", [](variant& v) { v.lk_detect = DB_LOCK_MINWRITE; });
  add("  lock timeout 50 us (DB_SET_LOCK_TIMEOUT), retry", [](variant& v) { v.lock_timeout = 50; });
  add("  get without DB_RMW (read lock, upgrade at put)",
      [](variant& v) { v.op = op_kind::txn_plain; });
  add("  cursor DB_SET|DB_RMW + put(DB_CURRENT)", [](variant& v) { v.op = op_kind::txn_cursor; });
  add("  btree", [](variant& v) { v.btree = true; });
  add("  DB_TXN_NOSYNC (no log write at commit)",
      [](variant& v) { v.durability = durability_level::none; });
  add("  DB_LOG_IN_MEMORY", [](variant& v) {
    v.log_in_memory = true;
    v.durability = durability_level::system_crash;
  });
  add("  named lock: lock_get(key, WRITE) in the txn",
      [](variant& v) { v.op = op_kind::txn_named_lock; });
  add("  named lock, DB_LOCK_NOWAIT, library backoff", [](variant& v) {
    v.op = op_kind::txn_named_lock;
    v.lock_get_flags = DB_LOCK_NOWAIT;
  });
  add("  DB_TXN_NOWAIT, library backoff", [](variant& v) { v.txn_begin_flags = DB_TXN_NOWAIT; });
  add("  DB_TXN_NOWAIT, spin retry", [](variant& v) {
    v.txn_begin_flags = DB_TXN_NOWAIT;
    v.retry = retry_kind::spin;
  });
  add("  DB_TXN_NOWAIT for 8 tries, then a waiting txn", [](variant& v) { v.nowait_tries = 8; });
  add("  spin 100 tries in libdb's mutex lock", [](variant& v) { v.mutex_spins = 100; });
  add("  DB_TXN_NOWAIT, library backoff, spin 100 in mutex lock", [](variant& v) {
    v.txn_begin_flags = DB_TXN_NOWAIT;
    v.mutex_spins = 100;
  });
  add("  DB_TXN_NOWAIT for 8 tries, spin 100 in mutex lock", [](variant& v) {
    v.nowait_tries = 8;
    v.mutex_spins = 100;
  });
  add("  + robust pthread mutex per key around the txn",
      [](variant& v) { v.outer = outer_kind::robust_mutex; });
  add("  + spinning robust mutex per key around the txn",
      [](variant& v) { v.outer = outer_kind::spin_robust_mutex; });
  add("  + spinning robust mutex, DB_TXN_NOSYNC", [](variant& v) {
    v.outer = outer_kind::spin_robust_mutex;
    v.durability = durability_level::none;
  });
  add("  DB_TXN_NOWAIT for 16 tries, then a waiting txn", [](variant& v) { v.nowait_tries = 16; });
  add("  DB_TXN_NOWAIT for 16 tries, spin 100 in mutex lock", [](variant& v) {
    v.nowait_tries = 16;
    v.mutex_spins = 100;
  });
  add("4 processes (2 per core): shared_dict today", [](variant& v) { v.processes = 4; });
  add("  4 processes: DB_TXN_NOWAIT, library backoff", [](variant& v) {
    v.processes = 4;
    v.txn_begin_flags = DB_TXN_NOWAIT;
  });
  add("  4 processes: DB_TXN_NOWAIT for 8 tries, then waiting", [](variant& v) {
    v.processes = 4;
    v.nowait_tries = 8;
  });
  add("  4 processes: DB_TXN_NOWAIT for 8 tries, spin 100 in mutex lock", [](variant& v) {
    v.processes = 4;
    v.nowait_tries = 8;
    v.mutex_spins = 100;
  });
  add("  4 processes: DB_TXN_NOWAIT for 16 tries, then waiting", [](variant& v) {
    v.processes = 4;
    v.nowait_tries = 16;
  });
  add("  4 processes: DB_TXN_NOWAIT for 16 tries, spin 100 in mutex lock", [](variant& v) {
    v.processes = 4;
    v.nowait_tries = 16;
    v.mutex_spins = 100;
  });
  add("  4 processes: DB_TXN_NOWAIT, library backoff, spin 100 in mutex lock", [](variant& v) {
    v.processes = 4;
    v.txn_begin_flags = DB_TXN_NOWAIT;
    v.mutex_spins = 100;
  });
  add("  4 processes: + robust pthread mutex per key", [](variant& v) {
    v.processes = 4;
    v.outer = outer_kind::robust_mutex;
  });
  add("  4 processes: + spinning robust mutex per key", [](variant& v) {
    v.processes = 4;
    v.outer = outer_kind::spin_robust_mutex;
  });
  add("puts of random keys (no key contention): shared_dict's environment",
      [](variant& v) { v.op = op_kind::random_put; });
  add("  puts: 1 process", [](variant& v) {
    v.op = op_kind::random_put;
    v.processes = 1;
  });
  add("  puts: without the robust-mutex patch", [](variant& v) {
    v.op = op_kind::random_put;
    v.patch = false;
  });
  add("  puts: DB_TXN_NOSYNC", [](variant& v) {
    v.op = op_kind::random_put;
    v.durability = durability_level::none;
  });
  add("  puts: DB_LOG_IN_MEMORY", [](variant& v) {
    v.op = op_kind::random_put;
    v.log_in_memory = true;
    v.durability = durability_level::system_crash;
  });
  add("  puts: spin 100 tries in libdb's mutex lock", [](variant& v) {
    v.op = op_kind::random_put;
    v.mutex_spins = 100;
  });
  add("  puts: spin 1000 tries in libdb's mutex lock", [](variant& v) {
    v.op = op_kind::random_put;
    v.mutex_spins = 1000;
  });
  add("  puts: spin 1000 tries, without the patch", [](variant& v) {
    v.op = op_kind::random_put;
    v.mutex_spins = 1000;
    v.patch = false;
  });
  add("  puts: unsafe, locking only (no txn)", [](variant& v) {
    v.op = op_kind::random_put;
    v.txn = false;
  });
  add("unsafe: locking only, cursor DB_RMW (no txn)", [](variant& v) {
    v.txn = false;
    v.op = op_kind::cursor_only;
  });
  add("unsafe: DB_INIT_CDB, DB_WRITECURSOR", [](variant& v) {
    v.txn = false;
    v.cds = true;
    v.op = op_kind::cds_cursor;
  });
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty()      ? 0
         : v.size() % 2 ? v[v.size() / 2]
                        : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) try {
  int ops = 20000, rounds = 3;
  bool pin = true;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--ops" && i + 1 < argc)
      ops = std::atoi(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc)
      rounds = std::atoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc)
      only = argv[++i];
    else if (a == "--no-pin")
      pin = false;
    else {
      std::fprintf(stderr, "usage: %s [--ops N] [--rounds N] [--only SUBSTRING] [--no-pin]\n",
                   argv[0]);
      return 2;
    }
  }
  std::vector<variant> all = variants();
  if (!only.empty())
    all.erase(
        std::remove_if(all.begin(), all.end(),
                       [&](const variant& v) { return v.name.find(only) == std::string::npos; }),
        all.end());
  std::string root = "/dev/shm/smisk-ipc-bench-counter." + std::to_string(::getpid());
  ::mkdir(root.c_str(), 0700);
  std::vector<std::vector<outcome>> results(all.size());
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < all.size(); ++i) {  // interleaved: every variant once per round
      results[i].push_back(run_once(all[i], ops, root + "/" + std::to_string(i), pin));
      std::fprintf(stderr, ".");
    }
    std::fprintf(stderr, " round %d of %d\n", r + 1, rounds);
  }
  ::rmdir(root.c_str());
  std::printf(
      "%d increments of one key per process, 2 processes unless the row says otherwise%s; "
      "median of %d rounds\n\n",
      ops, pin ? " (process w pinned to CPU w mod 2)" : "", rounds);
  std::printf("| variant | incr/s | min..max | retries/incr | fairness | other load | exact |\n");
  std::printf("|---|---:|---|---:|---:|---:|---|\n");
  int bad = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    std::vector<double> rates, fair, retries;
    double other = 0;
    bool exact = true;
    std::string error;
    for (const auto& o : results[i]) {
      if (!o.error.empty()) error = o.error;
      exact = exact && o.exact && o.error.empty();
      rates.push_back(o.rate);
      fair.push_back(o.fair);
      retries.push_back(o.retries);
      other = std::max(other, o.other);
    }
    if (!exact) ++bad;
    std::printf("| %s | %.0fk | %.0fk..%.0fk | %.2f | %.2f | %.2f | %s%s%s |\n",
                all[i].name.c_str(), median(rates) / 1e3,
                *std::min_element(rates.begin(), rates.end()) / 1e3,
                *std::max_element(rates.begin(), rates.end()) / 1e3, median(retries), median(fair),
                other, exact ? "yes" : "NO", error.empty() ? "" : ": ", error.c_str());
  }
  std::printf(
      "\nfairness: the faster process's time / the slower one's (1.00 = both finished "
      "together)\nother load: the most CPUs that other processes of the machine kept busy "
      "during a round (from /proc/stat; 0.00 = the machine was ours)\n");
  return bad == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "counter_experiment: %s\n", e.what());
  return 1;
}
