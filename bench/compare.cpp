// shared_dict against the raw Berkeley DB C API, LMDB, Boost.Interprocess and libmemcached, side
// by side in one run.
//
// Workloads (12-byte keys "key:%08d", 100-byte values, keys in random order; every answer is
// checked inside the timed loop, so a wrong answer cannot be fast):
//   set, get (hit), get (miss), erase          one process
//   mix 50/50, mix 90/10 (get/set)             two processes forked after the store was created,
//                                              each opening its own handles; total ops/s
//   counter                                    two processes incrementing one key; it must end
//                                              at exactly 2 x the increments
// Systems (Berkeley DB group):
//   shared_dict        smisk::ipc::shared_dict<std::string, std::string> (and <.., int64_t> for
//                      the counter), default options
//   raw BDB same       the C API with exactly shared_dict's environment (flags, cache, lock
//                      detector, lock table sizes, thread tracking, log settings, a checkpoint
//                      by log volume by a background thread, the "data"/"meta" sub-database
//                      layout, hash), auto-commit writes, DB_TXN_WRITE_NOSYNC, increment = txn +
//                      get(DB_RMW) + put
//   raw BDB unsafe     DB_INIT_MPOOL | DB_INIT_LOCK | DB_THREAD, no transactions (Berkeley DB's
//                      fastest mode; page splits can deadlock and leave the database corrupt);
//                      increment = cursor DB_SET|DB_RMW + put(DB_CURRENT)
//   raw BDB same+patch "raw BDB same flags" with smisk-ipc's robust-mutex patch installed
//                      (detail/robust_mutex.hpp): splits the wrapper's cost into the patch and
//                      the rest
//   LMDB               MDB_WRITEMAP | MDB_NOSYNC (survives a process crash, like shared_dict's
//                      default), one read transaction reset/renewed per get
//   Boost.Interprocess boost::interprocess::map in managed_shared_memory under one
//                      interprocess_mutex (not robust: a process killed inside hangs the others)
// Systems (memcached group, against a real memcached on loopback, with fewer keys):
//   shared_dict mc     shared_dict<std::string, std::string, memcached::backend>
//   raw libmemcached   memcached_set / get / delete / increment
//
// Each system runs in its own process (forked from a coordinator that never touches Berkeley DB),
// so that the robust-mutex patch shared_dict installs in its process never affects the raw
// systems. Rounds are interleaved: in every round each system gets a fresh store, and the systems
// take turns phase by phase (their order rotates from round to round). Each cell of the table is
// the median over rounds and, in parentheses, the median of the per-round ratios to the reference
// system. Every measurement also records how many CPUs other processes kept busy meanwhile
// (/proc/stat minus our processes and the memcached server named by --memcached-pid); a round
// where that exceeded 0.3 CPUs is disturbed, and while --max-seconds (default 200) allows, more
// rounds are run so that the table is made of undisturbed ones (it says so).
//
//   compare [--rounds N] [--keys N] [--mix-ops N] [--counter-ops N] [--mc-keys N]
//           [--mc-mix-ops N] [--mc-counter-ops N] [--memcached HOST:PORT] [--memcached-pid PID]
//           [--details] [--no-pin] [--max-seconds N] [--systems a,b,...] [--ops N]
// --systems keeps only the systems named (the reference systems always run); --details adds the
// spread over rounds and how evenly the two workers of a two-process phase progressed.
// --ops N is a smoke run: N keys, N ops per process everywhere, one round. The memcached
// server is --memcached, else 127.0.0.1 and the port in $SMISK_IPC_MEMCACHED_PORT_FILE (ctest's
// fixture), else the memcached workloads are skipped. Exits 1 if any check failed. The two workers
// of a two-process phase are pinned to different CPUs unless --no-pin.
#include <db.h>
#include <lmdb.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/containers/map.hpp>
#include <boost/interprocess/containers/string.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/sync/interprocess_mutex.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>
#include <boost/version.hpp>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <smisk/ipc/bsddb.hpp>
#include <smisk/ipc/detail/bdb_env_config.hpp>
#include <smisk/ipc/shared_dict.hpp>

#ifdef SMISK_BENCH_MEMCACHED
#include <libmemcached-1.0/memcached.h>

#include <smisk/ipc/memcached.hpp>
#endif

namespace {

namespace ipc = smisk::ipc;
namespace bip = boost::interprocess;
using steady = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& what) { throw std::runtime_error(what); }

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now().time_since_epoch())
      .count();
}

// ---- the data ----------------------------------------------------------------------------------

/// keys[0, n) are stored, keys[n, 2n) never are (the misses); values[i] belongs to keys[i].
struct dataset {
  std::vector<std::string> keys;
  std::vector<std::string> values;
  [[nodiscard]] int size() const { return static_cast<int>(values.size()); }
};

dataset make_dataset(int n) {
  dataset d;
  d.keys.reserve(2 * static_cast<std::size_t>(n));
  for (int i = 0; i < 2 * n; ++i) {
    char k[16];
    std::snprintf(k, sizeof k, "key:%08d", i);
    d.keys.emplace_back(k, 12);
  }
  for (int i = 0; i < n; ++i) {
    std::string v(100, ' ');
    std::snprintf(v.data(), 16, "val:%08d:", i);
    for (std::size_t j = 13; j < v.size(); ++j)
      v[j] = static_cast<char>('a' + (static_cast<std::size_t>(i) * 7 + j * 13) % 26);
    d.values.push_back(std::move(v));
  }
  return d;
}

std::vector<int> shuffled(int n, int lo, std::uint64_t seed) {
  std::vector<int> order(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = lo + i;
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

/// A small fast generator for the mixes (the same for every system).
struct xorshift {
  std::uint64_t s;
  std::uint64_t operator()() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

const std::string counter_key = "counter:0001";  // 12 bytes too

std::int64_t parse_i64(const char* p, std::size_t n) {
  std::int64_t v = 0;
  auto r = std::from_chars(p, p + n, v);
  if (r.ec != std::errc() || r.ptr != p + n) die("counter value is not a number");
  return v;
}

void remove_tree(const std::string& dir) {
  // Only our own directories under /dev/shm or /tmp, named smisk-ipc-bench*.
  if (dir.find("smisk-ipc-bench") == std::string::npos) return;
  std::string cmd = "rm -rf '" + dir + "'";
  if (std::system(cmd.c_str()) != 0)
    std::fprintf(stderr, "warning: cannot remove %s\n", dir.c_str());
}

std::string bench_root() {
  struct stat st;
  if (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)) return "/dev/shm";
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}

// ---- shared_dict, Berkeley DB backend
// ------------------------------------------------------------

class dict_bdb {
 public:
  explicit dict_bdb(const std::string& dir)
      : data_(options(dir, "data")), counter_(options(dir, "counter")) {}
  /// After fork(): the dict opens this process's own handles at its first call; make that call
  /// now, outside the timed loop.
  void join() {
    (void)data_.contains(counter_key);
    (void)counter_.contains(counter_key);
  }
  void leave() {}
  bool set(const std::string& k, const std::string& v) {
    data_.set(k, v);
    return true;
  }
  int get(const std::string& k, const std::string& expected) const {
    std::optional<std::string> v = data_.get(k);
    if (!v) return 0;
    return *v == expected ? 1 : -1;
  }
  bool erase(const std::string& k) { return data_.erase(k); }
  void counter_reset() { counter_.set(counter_key, 0); }
  std::int64_t increment() { return counter_.increment(counter_key); }
  std::int64_t counter_value() const { return counter_.get(counter_key).value_or(-1); }

 private:
  static ipc::bsddb::options options(const std::string& dir, const char* name) {
    ipc::bsddb::options o;
    o.homedir = dir;
    o.name = name;
    return o;
  }
  ipc::shared_dict<std::string, std::string> data_;
  ipc::shared_dict<std::string, std::int64_t> counter_;
};

// ---- the raw Berkeley DB C API
// ----------------------------------------------------------------------

extern "C" int raw_is_alive(DB_ENV*, pid_t pid, db_threadid_t, u_int32_t) {
  return pid == ::getpid() || ::kill(pid, 0) == 0 || errno == EPERM ? 1 : 0;
}

void bdb_check(int rc, const char* what) {
  if (rc != 0) die(std::string(what) + ": " + db_strerror(rc));
}

/// smisk-ipc's own retry policy, so that contention is handled alike (the raw systems run in
/// processes of their own: its counter in the library's stats is not read there).
using raw_backoff = smisk::ipc::detail::bdb::backoff;

inline DBT dbt(const void* p, std::size_t n) {
  DBT d;
  std::memset(&d, 0, sizeof d);
  d.data = const_cast<void*>(p);
  d.size = static_cast<u_int32_t>(n);
  return d;
}

/// mode same: shared_dict's environment (detail/bdb_env_config.hpp's configure_environment, as
/// detail::bdb::environment calls it), database's sub-databases, note_write's checkpoints.
/// mode unsafe: locking only. mode patched: same, with smisk-ipc's robust-mutex patch.
enum class raw_mode { same, unsafe, patched };

/// Whether this process is the "raw BDB same+patch" baseline.
inline bool& patched_scope() {
  static bool on = false;
  return on;
}
/// Makes every libdb call of the calling thread count as one of the library's (see raw_bdb).
inline void enter_patched_scope() {
  static DB_ENV* const any_env = reinterpret_cast<DB_ENV*>(&patched_scope);
  if (patched_scope()) ipc::detail::robust::current_env = any_env;
}

class raw_bdb {
 public:
  raw_bdb(const std::string& dir, raw_mode mode) : dir_(dir), mode_(mode) {
    if (mode_ == raw_mode::patched) {
      // The patch acts only inside the library's own libdb calls (robust::current_env): this
      // baseline's threads count as such for the whole process.
      ipc::detail::robust::install();
      patched_scope() = true;
      enter_patched_scope();
    }
    ::mkdir(dir_.c_str(), 0700);
    open(true);
    put_meta(data_file);
    put_meta(counter_file);
  }
  raw_bdb(const raw_bdb&) = delete;
  raw_bdb& operator=(const raw_bdb&) = delete;
  ~raw_bdb() {
    close();
    if (creator_pid_ == ::getpid()) remove_tree(dir_);
  }
  /// In a child of fork(): opens this process's own environment and databases (the parent's
  /// handles are left alone, as Berkeley DB requires).
  void join() {
    env_ = nullptr;
    db_ = counter_ = nullptr;
    writes_ = 0;
    open(false);
  }
  void leave() { close(); }

  bool set(const std::string& k, const std::string& v) {
    DBT kd = dbt(k.data(), k.size()), vd = dbt(v.data(), v.size());
    for (raw_backoff retry;; retry()) {
      int rc = db_->put(db_, nullptr, &kd, &vd, 0);
      if (rc == 0) {
        note_write();
        return true;
      }
      if (rc != DB_LOCK_DEADLOCK && rc != DB_LOCK_NOTGRANTED) return false;
    }
  }
  int get(const std::string& k, const std::string& expected) {
    DBT kd = dbt(k.data(), k.size());
    DBT vd;
    std::memset(&vd, 0, sizeof vd);
    vd.flags = DB_DBT_USERMEM;
    vd.data = buffer_;
    vd.ulen = sizeof buffer_;
    for (raw_backoff retry;; retry()) {
      int rc = db_->get(db_, nullptr, &kd, &vd, 0);
      if (rc == DB_NOTFOUND) return 0;
      if (rc == 0)
        return std::string_view(static_cast<char*>(vd.data), vd.size) == expected ? 1 : -1;
      if (rc != DB_LOCK_DEADLOCK && rc != DB_LOCK_NOTGRANTED) return -1;
    }
  }
  bool erase(const std::string& k) {
    DBT kd = dbt(k.data(), k.size());
    for (raw_backoff retry;; retry()) {
      int rc = db_->del(db_, nullptr, &kd, 0);
      if (rc == 0) {
        note_write();
        return true;
      }
      if (rc != DB_LOCK_DEADLOCK && rc != DB_LOCK_NOTGRANTED) return false;
    }
  }
  void counter_reset() {
    DBT kd = dbt(counter_key.data(), counter_key.size()), vd = dbt("0", 1);
    bdb_check(counter_->put(counter_, nullptr, &kd, &vd, 0), "DB->put");
  }
  std::int64_t increment() {
    return mode_ == raw_mode::unsafe ? increment_cursor() : increment_txn();
  }
  std::int64_t counter_value() {
    DBT kd = dbt(counter_key.data(), counter_key.size());
    DBT vd;
    std::memset(&vd, 0, sizeof vd);
    vd.flags = DB_DBT_USERMEM;
    vd.data = buffer_;
    vd.ulen = sizeof buffer_;
    int rc = counter_->get(counter_, nullptr, &kd, &vd, 0);
    return rc == 0 ? parse_i64(buffer_, vd.size) : -1;
  }

 private:
  static constexpr const char* data_file = "data";
  static constexpr const char* counter_file = "counter";

  [[nodiscard]] bool transactional() const { return mode_ != raw_mode::unsafe; }

  void open(bool create) {
    bdb_check(::db_env_create(&env_, 0), "db_env_create");
    // detail::bdb::environment's configuration, value for value (unsafe: its locking part only);
    // the cache is the default option's.
    ipc::detail::bdb::env_config config;
    config.transactions = transactional();
    config.is_alive = &raw_is_alive;
    const ipc::detail::bdb::env_setup setup = ipc::detail::bdb::configure_environment(env_, config);
    bdb_check(setup.rc, setup.failed);
    const u_int32_t flags = setup.open_flags | (transactional() && create ? DB_RECOVER : 0u);
    bdb_check(env_->open(env_, dir_.c_str(), flags, 0600), "DB_ENV->open");
    if (transactional()) {
      if (!create) bdb_check(env_->failchk(env_, 0), "DB_ENV->failchk");
      checkpoint_bytes_ = ipc::detail::bdb::checkpoint_interval_of(dir_);
    }
    if (create) creator_pid_ = ::getpid();
    db_ = open_db(data_file, "data");
    counter_ = open_db(counter_file, "data");
  }

  DB* open_db(const char* file, const char* sub) {
    DB* db = nullptr;
    bdb_check(::db_create(&db, env_, 0), "db_create");
    u_int32_t flags = DB_CREATE | DB_THREAD | (transactional() ? DB_AUTO_COMMIT : 0u);
    bdb_check(db->open(db, nullptr, file, sub, DB_HASH, flags, 0600), "DB->open");
    return db;
  }

  /// The "meta" sub-database next to "data", as shared_dict lays a file out.
  void put_meta(const char* file) {
    DB* meta = nullptr;
    bdb_check(::db_create(&meta, env_, 0), "db_create");
    u_int32_t flags = DB_CREATE | DB_THREAD | (transactional() ? DB_AUTO_COMMIT : 0u);
    bdb_check(meta->open(meta, nullptr, file, "meta", DB_BTREE, flags, 0600), "DB->open meta");
    const std::string key = "format", value = "smisk-ipc 1\nkey str\nvalue str\nmethod hash\n";
    DBT kd = dbt(key.data(), key.size()), vd = dbt(value.data(), value.size());
    bdb_check(meta->put(meta, nullptr, &kd, &vd, 0), "DB->put meta");
    meta->close(meta, 0);
  }

  void close() {
    if (counter_) counter_->close(counter_, 0);
    if (db_) db_->close(db_, 0);
    if (env_) env_->close(env_, 0);
    counter_ = db_ = nullptr;
    env_ = nullptr;
  }

  /// detail::bdb::environment's checkpoints: when detail::bdb::checkpoint_due says so (by log
  /// volume, every checkpoint_interval() of the home's free space), in the writing thread.
  void note_write() {
    if (!transactional()) return;
    DB_ENV* e = env_;
    if (ipc::detail::bdb::checkpoint_due(
            writes_++, [e](DB_LOG_STAT** st) { return e->log_stat(e, st, 0); }, checkpoint_bytes_))
      e->txn_checkpoint(e, static_cast<u_int32_t>(checkpoint_bytes_ >> 10), 0, 0);
  }

  std::int64_t increment_txn() {
    DBT kd = dbt(counter_key.data(), counter_key.size());
    for (raw_backoff retry;; retry()) {
      DB_TXN* txn = nullptr;
      int rc = env_->txn_begin(env_, nullptr, &txn, 0);
      if (rc != 0) die(std::string("txn_begin: ") + db_strerror(rc));
      DBT vd;
      std::memset(&vd, 0, sizeof vd);
      vd.flags = DB_DBT_USERMEM;
      vd.data = buffer_;
      vd.ulen = sizeof buffer_;
      rc = counter_->get(counter_, txn, &kd, &vd, DB_RMW);
      std::int64_t value = 0;
      if (rc == 0) value = parse_i64(buffer_, vd.size);
      if (rc == 0 || rc == DB_NOTFOUND) {
        ++value;
        char out[24];
        auto r = std::to_chars(out, out + sizeof out, value);
        DBT nd = dbt(out, static_cast<std::size_t>(r.ptr - out));
        rc = counter_->put(counter_, txn, &kd, &nd, 0);
      }
      if (rc == 0) {
        rc = txn->commit(txn, 0);
        if (rc == 0) {
          note_write();
          return value;
        }
      } else {
        txn->abort(txn);
      }
      if (rc != DB_LOCK_DEADLOCK && rc != DB_LOCK_NOTGRANTED)
        die(std::string("increment: ") + db_strerror(rc));
    }
  }

  std::int64_t increment_cursor() {
    DBT kd = dbt(counter_key.data(), counter_key.size());
    for (raw_backoff retry;; retry()) {
      DBC* c = nullptr;
      bdb_check(counter_->cursor(counter_, nullptr, &c, 0), "DB->cursor");
      DBT vd;
      std::memset(&vd, 0, sizeof vd);
      vd.flags = DB_DBT_USERMEM;
      vd.data = buffer_;
      vd.ulen = sizeof buffer_;
      int rc = c->get(c, &kd, &vd, DB_SET | DB_RMW);
      std::int64_t value = 0;
      if (rc == 0) {
        value = parse_i64(buffer_, vd.size) + 1;
        char out[24];
        auto r = std::to_chars(out, out + sizeof out, value);
        DBT nd = dbt(out, static_cast<std::size_t>(r.ptr - out));
        rc = c->put(c, &kd, &nd, DB_CURRENT);
      }
      int close_rc = c->close(c);
      if (rc == 0) rc = close_rc;
      if (rc == 0) return value;
      if (rc != DB_LOCK_DEADLOCK && rc != DB_LOCK_NOTGRANTED)
        die(std::string("increment: ") + db_strerror(rc));
    }
  }

  std::string dir_;
  raw_mode mode_;
  pid_t creator_pid_ = 0;
  DB_ENV* env_ = nullptr;
  DB* db_ = nullptr;
  DB* counter_ = nullptr;
  std::uint64_t writes_ = 0;
  std::uint64_t checkpoint_bytes_ = ipc::detail::bdb::checkpoint_interval(0);
  char buffer_[512];
};

// ---- LMDB ---------------------------------------------------------------------------------------

void mdb_check(int rc, const char* what) {
  if (rc != 0) die(std::string(what) + ": " + mdb_strerror(rc));
}

class lmdb_store {
 public:
  explicit lmdb_store(const std::string& dir) : dir_(dir) {
    ::mkdir(dir_.c_str(), 0700);
    creator_pid_ = ::getpid();
    open();
  }
  lmdb_store(const lmdb_store&) = delete;
  lmdb_store& operator=(const lmdb_store&) = delete;
  ~lmdb_store() {
    close();
    if (creator_pid_ == ::getpid()) remove_tree(dir_);
  }
  void join() {
    env_ = nullptr;  // the parent's MDB_env is not used in a child
    read_ = nullptr;
    open();
  }
  void leave() { close(); }

  bool set(const std::string& k, const std::string& v) {
    MDB_txn* t = nullptr;
    if (mdb_txn_begin(env_, nullptr, 0, &t) != 0) return false;
    MDB_val kv{k.size(), const_cast<char*>(k.data())}, vv{v.size(), const_cast<char*>(v.data())};
    if (mdb_put(t, dbi_, &kv, &vv, 0) != 0) {
      mdb_txn_abort(t);
      return false;
    }
    return mdb_txn_commit(t) == 0;
  }
  int get(const std::string& k, const std::string& expected) {
    if (mdb_txn_renew(read_) != 0) return -1;
    MDB_val kv{k.size(), const_cast<char*>(k.data())}, vv;
    int rc = mdb_get(read_, dbi_, &kv, &vv);
    int result = rc == MDB_NOTFOUND                                                         ? 0
                 : rc != 0                                                                  ? -1
                 : std::string_view(static_cast<char*>(vv.mv_data), vv.mv_size) == expected ? 1
                                                                                            : -1;
    mdb_txn_reset(read_);
    return result;
  }
  bool erase(const std::string& k) {
    MDB_txn* t = nullptr;
    if (mdb_txn_begin(env_, nullptr, 0, &t) != 0) return false;
    MDB_val kv{k.size(), const_cast<char*>(k.data())};
    if (mdb_del(t, dbi_, &kv, nullptr) != 0) {
      mdb_txn_abort(t);
      return false;
    }
    return mdb_txn_commit(t) == 0;
  }
  void counter_reset() {
    if (!set(counter_key, "0")) die("lmdb counter reset");
  }
  std::int64_t increment() {
    MDB_txn* t = nullptr;
    mdb_check(mdb_txn_begin(env_, nullptr, 0, &t), "mdb_txn_begin");
    MDB_val kv{counter_key.size(), const_cast<char*>(counter_key.data())}, vv;
    std::int64_t value = 0;
    int rc = mdb_get(t, dbi_, &kv, &vv);
    if (rc == 0) value = parse_i64(static_cast<char*>(vv.mv_data), vv.mv_size);
    ++value;
    char out[24];
    auto r = std::to_chars(out, out + sizeof out, value);
    MDB_val nv{static_cast<std::size_t>(r.ptr - out), out};
    rc = mdb_put(t, dbi_, &kv, &nv, 0);
    if (rc != 0) {
      mdb_txn_abort(t);
      mdb_check(rc, "mdb_put");
    }
    mdb_check(mdb_txn_commit(t), "mdb_txn_commit");
    return value;
  }
  std::int64_t counter_value() {
    MDB_txn* t = nullptr;
    mdb_check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &t), "mdb_txn_begin");
    MDB_val kv{counter_key.size(), const_cast<char*>(counter_key.data())}, vv;
    std::int64_t value = -1;
    if (mdb_get(t, dbi_, &kv, &vv) == 0)
      value = parse_i64(static_cast<char*>(vv.mv_data), vv.mv_size);
    mdb_txn_abort(t);
    return value;
  }

 private:
  void open() {
    mdb_check(mdb_env_create(&env_), "mdb_env_create");
    mdb_check(mdb_env_set_mapsize(env_, std::size_t{1} << 30), "mdb_env_set_mapsize");
    mdb_check(mdb_env_open(env_, dir_.c_str(), MDB_WRITEMAP | MDB_NOSYNC, 0600), "mdb_env_open");
    MDB_txn* t = nullptr;
    mdb_check(mdb_txn_begin(env_, nullptr, 0, &t), "mdb_txn_begin");
    mdb_check(mdb_dbi_open(t, nullptr, 0, &dbi_), "mdb_dbi_open");
    mdb_check(mdb_txn_commit(t), "mdb_txn_commit");
    mdb_check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &read_), "mdb_txn_begin");
    mdb_txn_reset(read_);
  }
  void close() {
    if (read_) mdb_txn_abort(read_);
    if (env_) mdb_env_close(env_);
    read_ = nullptr;
    env_ = nullptr;
  }

  std::string dir_;
  pid_t creator_pid_ = 0;
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  MDB_txn* read_ = nullptr;
};

// ---- Boost.Interprocess
// ---------------------------------------------------------------------------

class boost_store {
  using segment = bip::managed_shared_memory;
  using char_alloc = bip::allocator<char, segment::segment_manager>;
  using shm_string = bip::basic_string<char, std::char_traits<char>, char_alloc>;
  struct less_bytes {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      return std::string_view(a.data(), a.size()) < std::string_view(b.data(), b.size());
    }
  };
  using pair_alloc =
      bip::allocator<std::pair<const shm_string, shm_string>, segment::segment_manager>;
  using shm_map = bip::map<shm_string, shm_string, less_bytes, pair_alloc>;
  struct state {
    explicit state(segment::segment_manager* m) : map(less_bytes(), pair_alloc(m)) {}
    bip::interprocess_mutex mutex;
    shm_map map;
  };
  using guard = bip::scoped_lock<bip::interprocess_mutex>;

 public:
  explicit boost_store(const std::string& name, std::size_t bytes) : name_(name) {
    bip::shared_memory_object::remove(name_.c_str());
    creator_pid_ = ::getpid();
    segment_ = std::make_unique<segment>(bip::create_only, name_.c_str(), bytes);
    state_ = segment_->construct<state>("state")(segment_->get_segment_manager());
  }
  boost_store(const boost_store&) = delete;
  boost_store& operator=(const boost_store&) = delete;
  ~boost_store() {
    if (creator_pid_ == ::getpid()) {
      segment_.reset();
      bip::shared_memory_object::remove(name_.c_str());
    }
  }
  void join() {
    (void)segment_.release();  // the parent's mapping; the child maps the segment anew
    segment_ = std::make_unique<segment>(bip::open_only, name_.c_str());
    state_ = segment_->find<state>("state").first;
    if (!state_) die("boost: no state in the segment");
  }
  void leave() { segment_.reset(); }

  bool set(const std::string& k, const std::string& v) {
    guard lock(state_->mutex);
    auto it = state_->map.find(k);
    if (it != state_->map.end()) {
      it->second.assign(v.data(), v.data() + v.size());
    } else {
      char_alloc a(segment_->get_segment_manager());
      state_->map.emplace(shm_string(k.data(), k.size(), a), shm_string(v.data(), v.size(), a));
    }
    return true;
  }
  int get(const std::string& k, const std::string& expected) {
    guard lock(state_->mutex);
    auto it = state_->map.find(k);
    if (it == state_->map.end()) return 0;
    return std::string_view(it->second.data(), it->second.size()) == expected ? 1 : -1;
  }
  bool erase(const std::string& k) {
    guard lock(state_->mutex);
    auto it = state_->map.find(k);
    if (it == state_->map.end()) return false;
    state_->map.erase(it);
    return true;
  }
  void counter_reset() { set(counter_key, "0"); }
  std::int64_t increment() {
    guard lock(state_->mutex);
    auto it = state_->map.find(counter_key);
    if (it == state_->map.end()) die("boost: no counter");
    std::int64_t value = parse_i64(it->second.data(), it->second.size()) + 1;
    char out[24];
    auto r = std::to_chars(out, out + sizeof out, value);
    it->second.assign(out, r.ptr);
    return value;
  }
  std::int64_t counter_value() {
    guard lock(state_->mutex);
    auto it = state_->map.find(counter_key);
    return it == state_->map.end() ? -1 : parse_i64(it->second.data(), it->second.size());
  }

 private:
  std::string name_;
  pid_t creator_pid_ = 0;
  std::unique_ptr<segment> segment_;
  state* state_ = nullptr;
};

// ---- memcached
// ------------------------------------------------------------------------------------

#ifdef SMISK_BENCH_MEMCACHED
class dict_mc {
 public:
  dict_mc(const std::string& node, const std::string& ns)
      : data_(options(node, ns)), counter_(options(node, ns + ".counter")) {}
  void join() {
    (void)data_.contains(counter_key);
    (void)counter_.contains(counter_key);
  }
  void leave() {}
  bool set(const std::string& k, const std::string& v) {
    data_.set(k, v);
    return true;
  }
  int get(const std::string& k, const std::string& expected) const {
    std::optional<std::string> v = data_.get(k);
    if (!v) return 0;
    return *v == expected ? 1 : -1;
  }
  bool erase(const std::string& k) { return data_.erase(k); }
  void counter_reset() { counter_.set(counter_key, 0); }
  std::int64_t increment() { return counter_.increment(counter_key); }
  std::int64_t counter_value() const { return counter_.get(counter_key).value_or(-1); }

 private:
  static ipc::memcached::options options(const std::string& node, const std::string& ns) {
    ipc::memcached::options o;
    o.nodes = {node};
    o.name = ns;
    return o;
  }
  ipc::shared_dict<std::string, std::string, ipc::memcached::backend> data_;
  ipc::shared_dict<std::string, std::int64_t, ipc::memcached::backend> counter_;
};

/// libmemcached as a user would call it, configured like the backend's handles (text protocol,
/// TCP_NODELAY, the same timeouts). Keys get a per-run prefix so that runs do not see each other.
class raw_mc {
 public:
  raw_mc(const std::string& node, const std::string& prefix) : node_(node), prefix_(prefix) {
    connect();
  }
  raw_mc(const raw_mc&) = delete;
  raw_mc& operator=(const raw_mc&) = delete;
  ~raw_mc() {
    if (mc_ && owner_ == ::getpid()) memcached_free(mc_);
  }
  void join() { connect(); }  // the parent's connection is not used (nor closed) in a child
  void leave() {
    memcached_free(mc_);
    mc_ = nullptr;
  }
  bool set(const std::string& k, const std::string& v) {
    std::string key = prefix_ + k;
    return memcached_set(mc_, key.data(), key.size(), v.data(), v.size(), 0, 0) ==
           MEMCACHED_SUCCESS;
  }
  int get(const std::string& k, const std::string& expected) {
    std::string key = prefix_ + k;
    std::size_t length = 0;
    std::uint32_t flags = 0;
    memcached_return_t rc;
    char* v = memcached_get(mc_, key.data(), key.size(), &length, &flags, &rc);
    if (v == nullptr) return rc == MEMCACHED_NOTFOUND ? 0 : -1;
    int result = std::string_view(v, length) == expected ? 1 : -1;
    std::free(v);
    return result;
  }
  bool erase(const std::string& k) {
    std::string key = prefix_ + k;
    return memcached_delete(mc_, key.data(), key.size(), 0) == MEMCACHED_SUCCESS;
  }
  void counter_reset() {
    std::string key = prefix_ + counter_key;
    if (memcached_set(mc_, key.data(), key.size(), "0", 1, 0, 0) != MEMCACHED_SUCCESS)
      die("memcached counter reset");
  }
  std::int64_t increment() {
    std::string key = prefix_ + counter_key;
    std::uint64_t value = 0;
    memcached_return_t rc = memcached_increment(mc_, key.data(), key.size(), 1, &value);
    if (rc != MEMCACHED_SUCCESS)
      die(std::string("memcached_increment: ") + memcached_strerror(mc_, rc));
    return static_cast<std::int64_t>(value);
  }
  std::int64_t counter_value() {
    std::string key = prefix_ + counter_key;
    std::size_t length = 0;
    std::uint32_t flags = 0;
    memcached_return_t rc;
    char* v = memcached_get(mc_, key.data(), key.size(), &length, &flags, &rc);
    if (v == nullptr) return -1;
    std::int64_t value = parse_i64(v, length);
    std::free(v);
    return value;
  }

 private:
  void connect() {
    mc_ = memcached_create(nullptr);
    owner_ = ::getpid();
    if (!mc_) die("memcached_create");
    memcached_behavior_set(mc_, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
    memcached_behavior_set(mc_, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, 1000);
    memcached_behavior_set(mc_, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 1000);
    auto colon = node_.rfind(':');
    std::string host = node_.substr(0, colon);
    auto port = static_cast<in_port_t>(std::stoi(node_.substr(colon + 1)));
    if (memcached_server_add(mc_, host.c_str(), port) != MEMCACHED_SUCCESS)
      die("memcached_server_add " + node_);
  }
  std::string node_;
  std::string prefix_;
  memcached_st* mc_ = nullptr;
  pid_t owner_ = 0;
};
#endif

// ---- phases -------------------------------------------------------------------------------------

enum phase : int {
  p_set,
  p_get,
  p_miss,
  p_erase,
  p_mix50,
  p_mix90,
  p_counter,
  p_count,
  p_populate = 100,
  p_quit = 101
};
const char* const phase_names[p_count] = {"set",       "get (hit)", "get (miss)", "erase",
                                          "mix 50/50", "mix 90/10", "counter"};

struct command {
  int phase;
  int keys;  // the store holds keys [0, keys)
  int ops;   // per worker process (mixes, counter)
  std::uint64_t seed;
};

struct result {
  double seconds = 0;
  std::int64_t ops = 0;
  std::int64_t failures = 0;  // wrong answers (each one a failed check)
  double slowest_share = 0;   // two-process phases: the faster worker's time / the phase's time
  double other_load = 0;      // CPUs that other processes kept busy meanwhile (0.5: half a CPU)
  char error[240] = {};
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

/// The memcached server's PID (--memcached-pid), whose CPU time belongs to the workload.
pid_t memcached_pid = 0;

/// CPU seconds the memcached server has used (0 when its PID is not known).
double memcached_cpu_seconds() {
  if (memcached_pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(memcached_pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {  // fields 14 and 15: utime, stime
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

/// CPU seconds of the work measured: this process's, and the memcached server's.
double own_and_server_cpu_seconds() { return own_cpu_seconds() + memcached_cpu_seconds(); }

/// The CPUs that processes other than ours kept busy during `wall` seconds, given the machine's
/// and our own CPU time over that interval: a measure of how much a figure can be trusted.
/// -1 when the interval is too short for /proc/stat's 10 ms ticks.
double other_load(double machine_busy, double ours, double wall) {
  return wall >= 0.1 ? std::max(0.0, machine_busy - ours) / wall : -1;
}

/// What two forked workers share with their parent (an anonymous shared mapping).
struct worker_block {
  std::atomic<int> ready;
  std::atomic<int> go;
  std::int64_t go_ns;
  struct {
    std::int64_t ops, failures, end_ns, last_value;
    double cpu;  // CPU seconds from the start signal to the end of the work
    char error[200];
  } w[2];
};

void copy_error(char* out, std::size_t n, const char* what) { std::snprintf(out, n, "%s", what); }

template <class S>
result run_single(S& s, const dataset& d, const command& c) {
  result r;
  std::int64_t fails = 0;
  const int n = c.keys;
  std::vector<int> order =
      shuffled(n, c.phase == p_miss ? n : 0, c.seed * 31 + static_cast<std::uint64_t>(c.phase));
  const auto& keys = d.keys;
  const auto& values = d.values;
  static const std::string none;
  const double busy0 = machine_busy_seconds(), cpu0 = own_and_server_cpu_seconds();
  std::int64_t t0 = now_ns();
  switch (c.phase) {
    case p_set:
      for (int i : order)
        fails += !s.set(keys[static_cast<std::size_t>(i)], values[static_cast<std::size_t>(i)]);
      break;
    case p_get:
      for (int i : order)
        fails += s.get(keys[static_cast<std::size_t>(i)], values[static_cast<std::size_t>(i)]) != 1;
      break;
    case p_miss:
      for (int i : order) fails += s.get(keys[static_cast<std::size_t>(i)], none) != 0;
      break;
    case p_erase:
      for (int i : order) fails += !s.erase(keys[static_cast<std::size_t>(i)]);
      break;
    default:
      break;
  }
  r.seconds = static_cast<double>(now_ns() - t0) / 1e9;
  r.other_load =
      other_load(machine_busy_seconds() - busy0, own_and_server_cpu_seconds() - cpu0, r.seconds);
  r.ops = n;
  r.failures = fails;
  return r;
}

/// Whether two-process phases pin worker w to CPU w (--no-pin turns it off).
bool pin_workers = true;

/// Pins the calling process to one CPU, so that the two workers of a phase always run on
/// different cores, as two busy processes of a 2-core machine do, whatever else the machine runs.
void pin_to_cpu(int w) {
  long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  if (cpus < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(w % static_cast<int>(cpus), &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

/// Forks two workers that join the store (their own handles) and run `work(s, worker)` at the
/// same moment; the phase lasts from the start signal until the slower one is done.
template <class S, class Work>
result run_two(S& s, worker_block* b, Work&& work) {
  result r;
  b->ready.store(0);
  b->go.store(0);
  std::memset(b->w, 0, sizeof b->w);
  std::fflush(nullptr);
  pid_t pids[2] = {-1, -1};
  for (int w = 0; w < 2; ++w) {
    pid_t pid = ::fork();
    if (pid < 0) die("fork failed");
    if (pid == 0) {
      int status = 0;
      try {
        if (pin_workers) pin_to_cpu(w);
        s.join();
        b->ready.fetch_add(1);
        while (b->go.load() == 0) ::sched_yield();
        const double cpu0 = own_cpu_seconds();
        work(s, w, b->w[w]);
        b->w[w].end_ns = now_ns();
        s.leave();
        b->w[w].cpu = own_cpu_seconds() - cpu0;
      } catch (const std::exception& e) {
        copy_error(b->w[w].error, sizeof b->w[w].error, e.what());
        b->w[w].end_ns = now_ns();
        status = 1;
      }
      std::fflush(nullptr);
      std::exit(status);  // runs the dict's exit handler, which closes this child's handles
    }
    pids[w] = pid;
  }
  auto deadline = steady::now() + std::chrono::seconds(60);
  while (b->ready.load() < 2) {
    if (steady::now() > deadline) break;
    int status;
    bool dead = false;
    for (pid_t p : pids)
      if (::waitpid(p, &status, WNOHANG) == p) dead = true;
    if (dead) break;
    ::usleep(100);
  }
  const double busy0 = machine_busy_seconds(), cpu0 = own_and_server_cpu_seconds();
  b->go_ns = now_ns();
  b->go.store(1);
  bool ok = true;
  for (pid_t p : pids) {
    int status = 0;
    if (::waitpid(p, &status, 0) != p || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = false;
  }
  std::int64_t end = 0;
  for (auto& w : b->w) {
    r.ops += w.ops;
    r.failures += w.failures;
    end = std::max(end, w.end_ns);
    if (w.error[0] && !r.error[0]) copy_error(r.error, sizeof r.error, w.error);
  }
  if (!ok && !r.error[0]) copy_error(r.error, sizeof r.error, "a worker process failed");
  r.seconds = static_cast<double>(end - b->go_ns) / 1e9;
  // Measured until both workers exited: their CPU time covers their work, not their exit.
  const double wall = static_cast<double>(now_ns() - b->go_ns) / 1e9;
  r.other_load = other_load(machine_busy_seconds() - busy0,
                            b->w[0].cpu + b->w[1].cpu + own_and_server_cpu_seconds() - cpu0, wall);
  std::int64_t fast = std::min(b->w[0].end_ns, b->w[1].end_ns) - b->go_ns;
  r.slowest_share = r.seconds > 0 ? static_cast<double>(fast) / 1e9 / r.seconds : 0;
  return r;
}

template <class S>
result run_mix(S& s, const dataset& d, const command& c, worker_block* b, int get_percent) {
  return run_two(s, b, [&](S& store, int w, auto& out) {
    xorshift rng{c.seed * 2654435761u + static_cast<std::uint64_t>(w) * 97 + 1};
    const auto n = static_cast<std::uint64_t>(c.keys);
    std::int64_t fails = 0;
    for (int i = 0; i < c.ops; ++i) {
      std::uint64_t x = rng();
      std::size_t k = static_cast<std::size_t>(x % n);
      if (static_cast<int>((x >> 32) % 100) < get_percent)
        fails += store.get(d.keys[k], d.values[k]) != 1;
      else
        fails += !store.set(d.keys[k], d.values[k]);
    }
    out.ops = c.ops;
    out.failures = fails;
  });
}

template <class S>
result run_counter(S& s, const command& c, worker_block* b) {
  s.counter_reset();
  result r = run_two(s, b, [&](S& store, int, auto& out) {
    std::int64_t fails = 0, last = 0;
    const std::int64_t most = 2 * static_cast<std::int64_t>(c.ops);
    for (int i = 0; i < c.ops; ++i) {
      std::int64_t v = store.increment();
      // Each process sees its own increments in order, never a value out of range.
      fails += v <= last || v > most;
      last = v;
    }
    out.ops = c.ops;
    out.failures = fails;
    out.last_value = last;
  });
  std::int64_t final_value = s.counter_value();
  if (final_value != 2 * static_cast<std::int64_t>(c.ops)) {
    ++r.failures;
    if (!r.error[0])
      std::snprintf(r.error, sizeof r.error, "counter ended at %" PRId64 ", not %" PRId64,
                    final_value, 2 * static_cast<std::int64_t>(c.ops));
  }
  return r;
}

template <class S>
void populate(S& s, const dataset& d, int n) {
  for (int i = 0; i < n; ++i)
    if (!s.set(d.keys[static_cast<std::size_t>(i)], d.values[static_cast<std::size_t>(i)]))
      die("populate: a set failed");
}

// ---- runners: one process per system and round ------------------------------------------------

bool read_full(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t got = ::read(fd, c, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    c += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}
bool write_full(int fd, const void* p, std::size_t n) {
  const auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t put = ::write(fd, c, n);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    c += put;
    n -= static_cast<std::size_t>(put);
  }
  return true;
}

template <class S>
[[noreturn]] void runner_loop(S& s, const dataset& d, int in, int out) {
  auto* block = static_cast<worker_block*>(::mmap(
      nullptr, sizeof(worker_block), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (block == MAP_FAILED) die("mmap failed");
  new (block) worker_block{};
  result ready;
  write_full(out, &ready, sizeof ready);
  command c;
  while (read_full(in, &c, sizeof c)) {
    if (c.phase == p_quit) break;
    result r;
    try {
      switch (c.phase) {
        case p_set:
        case p_get:
        case p_miss:
        case p_erase:
          r = run_single(s, d, c);
          break;
        case p_populate:
          populate(s, d, c.keys);
          break;
        case p_mix50:
          r = run_mix(s, d, c, block, 50);
          break;
        case p_mix90:
          r = run_mix(s, d, c, block, 90);
          break;
        case p_counter:
          r = run_counter(s, c, block);
          break;
        default:
          die("unknown phase");
      }
    } catch (const std::exception& e) {
      copy_error(r.error, sizeof r.error, e.what());
    }
    if (!write_full(out, &r, sizeof r)) break;
  }
  ::close(in);
  ::close(out);
  std::fflush(nullptr);
  throw 0;  // unwound by runner_main, which destroys the store and exits
}

struct runner {
  std::string system;
  pid_t pid = -1;
  int to = -1;
  int from = -1;
  bool failed = false;
};

/// Forks a runner that builds its store with `make()` and then serves commands.
template <class Make>
runner spawn(const std::string& system, const dataset& d, Make make) {
  int down[2], up[2];
  if (::pipe(down) != 0 || ::pipe(up) != 0) die("pipe failed");
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) die("fork failed");
  if (pid == 0) {
    ::close(down[1]);
    ::close(up[0]);
    int status = 0;
    try {
      auto store = make();
      try {
        runner_loop(*store, d, down[0], up[1]);
      } catch (int) {
      }
    } catch (const std::exception& e) {
      result r;
      copy_error(r.error, sizeof r.error, e.what());
      write_full(up[1], &r, sizeof r);
      status = 1;
    }
    std::fflush(nullptr);
    std::exit(status);
  }
  ::close(down[0]);
  ::close(up[1]);
  runner r;
  r.system = system;
  r.pid = pid;
  r.to = down[1];
  r.from = up[0];
  result hello;
  if (!read_full(r.from, &hello, sizeof hello) || hello.error[0]) {
    std::fprintf(stderr, "%s: could not open its store: %s\n", system.c_str(),
                 hello.error[0] ? hello.error : "the runner died");
    r.failed = true;
  }
  return r;
}

/// Sends a command and waits for the result (at most `limit`; a runner that takes longer is
/// killed, with the workers it forked, by PID).
result ask(runner& r, const command& c, std::chrono::seconds limit) {
  result res;
  if (r.failed) {
    copy_error(res.error, sizeof res.error, "the runner failed earlier");
    return res;
  }
  if (!write_full(r.to, &c, sizeof c)) {
    r.failed = true;
    copy_error(res.error, sizeof res.error, "the runner is gone");
    return res;
  }
  struct pollfd p = {r.from, POLLIN, 0};
  int ready = ::poll(&p, 1, static_cast<int>(limit.count() * 1000));
  if (ready <= 0 || !read_full(r.from, &res, sizeof res)) {
    std::snprintf(res.error, sizeof res.error, "%s", ready <= 0 ? "timed out" : "the runner died");
    r.failed = true;
    ::kill(r.pid, SIGKILL);
  }
  return res;
}

void finish(runner& r) {
  command q{p_quit, 0, 0, 0};
  if (!r.failed) write_full(r.to, &q, sizeof q);
  ::close(r.to);
  ::close(r.from);
  int status = 0;
  ::waitpid(r.pid, &status, 0);
}

// ---- the coordinator
// -----------------------------------------------------------------------------

struct settings {
  int rounds = 5;
  int keys = 100000;
  int mix_ops = 100000;
  int counter_ops = 20000;
  int mc_keys = 10000;
  int mc_mix_ops = 10000;
  int mc_counter_ops = 20000;
  bool details = false;
  int max_seconds = 200;  // extra rounds (replacing disturbed ones) only within this
  std::string memcached;
  std::vector<std::string> only;
};

struct cell {
  std::vector<double> rates;   // ops/s per round
  std::vector<double> ratios;  // to the group's reference, per round
  std::vector<double> fairness;
  std::vector<double> other;  // other processes' load during each measurement, in CPUs
  std::int64_t failures = 0;
  std::vector<std::string> errors;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

std::string human(double ops) {
  char b[32];
  if (ops >= 1e6)
    std::snprintf(b, sizeof b, "%.2fM", ops / 1e6);
  else if (ops >= 1e3)
    std::snprintf(b, sizeof b, "%.0fk", ops / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f", ops);
  return b;
}

struct group {
  std::string title;
  std::string reference;  // the system ratios are taken against
  std::vector<std::string> systems;
  int keys, mix_ops, counter_ops;
  std::map<std::pair<int, std::string>, cell> cells;
  int rounds_run = 0;   // rounds measured
  int rounds_used = 0;  // rounds the table is made of
  bool only_clean = false;
};

using factory = std::function<runner(const dataset&, int round)>;

/// A round is disturbed when other processes kept more than this many CPUs busy during one of
/// its measurements.
constexpr double disturbed_load = 0.3;

/// The results of one round: every system, every phase, back to back.
struct round_record {
  std::map<std::pair<int, std::string>, result> results;
  bool clean = true;
};

round_record run_round(const group& g, const std::map<std::string, factory>& factories,
                       const dataset& d, int round) {
  round_record rec;
  std::vector<runner> runners;
  for (std::size_t i = 0; i < g.systems.size(); ++i) {
    // Rotate the order from round to round.
    const std::string& name = g.systems[(i + static_cast<std::size_t>(round)) % g.systems.size()];
    runners.push_back(factories.at(name)(d, round));
  }
  auto seed = static_cast<std::uint64_t>(round + 1);
  auto phase_of = [&](int p) {
    for (auto& r : runners) {
      if (p == p_populate) {
        result res = ask(r, command{p_populate, g.keys, 0, seed}, std::chrono::seconds(300));
        if (res.error[0]) std::fprintf(stderr, "%s: populate: %s\n", r.system.c_str(), res.error);
        continue;
      }
      int ops = p == p_counter ? g.counter_ops : g.mix_ops;
      result res = ask(r, command{p, g.keys, ops, seed}, std::chrono::seconds(300));
      if (res.other_load > disturbed_load) rec.clean = false;
      rec.results[{p, r.system}] = res;
    }
  };
  for (int p : {p_set, p_get, p_miss, p_erase}) phase_of(p);
  phase_of(p_populate);
  for (int p : {p_mix50, p_mix90, p_counter}) phase_of(p);
  for (auto& r : runners) finish(r);
  return rec;
}

/// Runs `rounds` rounds; while some were disturbed by other processes (see disturbed_load) and
/// `deadline` allows, runs more, until `rounds` clean ones are in. The table is made of the clean
/// rounds if there are at least min(rounds, 3) of them, else of all. A failed check in any round
/// counts.
void run_group(group& g, const std::map<std::string, factory>& factories, const dataset& d,
               int rounds, steady::time_point deadline) {
  std::vector<round_record> done;
  int clean = 0;
  for (int round = 0;; ++round) {
    bool more =
        round < rounds || (clean < rounds && steady::now() < deadline && round < 3 * rounds);
    if (!more) break;
    done.push_back(run_round(g, factories, d, round));
    clean += done.back().clean;
    std::fprintf(stderr, "  %s: round %d done (%s; %d clean of %d)\n", g.title.c_str(), round + 1,
                 done.back().clean ? "clean" : "disturbed by other processes", clean, round + 1);
  }
  g.rounds_run = static_cast<int>(done.size());
  g.only_clean = clean >= std::min(rounds, 3);
  for (const auto& rec : done) {
    for (const auto& [key, res] : rec.results) {
      cell& c = g.cells[key];
      if (res.error[0]) {
        c.errors.emplace_back(res.error);
        ++c.failures;
      }
      c.failures += res.failures;
    }
    if (g.only_clean && !rec.clean) continue;
    ++g.rounds_used;
    for (const auto& [key, res] : rec.results) {
      if (res.error[0] || res.seconds <= 0) continue;
      cell& c = g.cells[key];
      c.rates.push_back(static_cast<double>(res.ops) / res.seconds);
      if (key.first >= p_mix50) c.fairness.push_back(res.slowest_share);
      if (res.other_load >= 0) c.other.push_back(res.other_load);
      // The ratio within the round (the systems ran back to back).
      auto ref = rec.results.find({key.first, g.reference});
      if (ref != rec.results.end() && !ref->second.error[0] && ref->second.seconds > 0) {
        double ref_rate = static_cast<double>(ref->second.ops) / ref->second.seconds;
        c.ratios.push_back(static_cast<double>(res.ops) / res.seconds / ref_rate);
      }
    }
  }
}

/// One table: a row per workload, a column per system; each cell is the median ops/s and, in
/// parentheses, the median of the per-round ratios to the group's reference system.
void print_group(const group& g) {
  std::printf(
      "\n%s: %d keys; mixes %d ops and counter %d increments per process, 2 processes; median "
      "of %d %srounds (%d run); (ratio) to %s\n\n",
      g.title.c_str(), g.keys, g.mix_ops, g.counter_ops, g.rounds_used,
      g.only_clean ? "undisturbed " : "", g.rounds_run, g.reference.c_str());
  std::printf("| workload |");
  for (const auto& s : g.systems) std::printf(" %s |", s.c_str());
  std::printf("\n|---|");
  for (std::size_t i = 0; i < g.systems.size(); ++i) std::printf("---:|");
  std::printf("\n");
  for (int p = 0; p < p_count; ++p) {
    std::printf("| %s |", phase_names[p]);
    for (const auto& s : g.systems) {
      auto it = g.cells.find({p, s});
      if (it == g.cells.end() || it->second.rates.empty()) {
        std::printf(" failed |");
        continue;
      }
      const cell& c = it->second;
      std::string text = human(median(c.rates));
      if (s != g.reference && !c.ratios.empty()) {
        char r[32];
        std::snprintf(r, sizeof r, " (%.2f)", median(c.ratios));
        text += r;
      }
      if (c.failures) text += " CHECK FAILED";
      std::printf(" %s |", text.c_str());
    }
    std::printf("\n");
  }
}

/// The spread over rounds, and for two-process phases how evenly the two workers progressed.
void print_details(const group& g) {
  std::printf(
      "\n%s, details: min..max ops/s over rounds; fairness (two-process phases): the faster "
      "worker's time / the phase's time, median (1.00: both finished together); other load: the "
      "most CPUs that other processes kept busy during one of the rounds\n\n",
      g.title.c_str());
  std::printf(
      "| workload | system | min..max | fairness | other load |\n|---|---|---|---:|---:|\n");
  for (int p = 0; p < p_count; ++p) {
    for (const auto& s : g.systems) {
      auto it = g.cells.find({p, s});
      if (it == g.cells.end() || it->second.rates.empty()) continue;
      const cell& c = it->second;
      std::string spread = human(*std::min_element(c.rates.begin(), c.rates.end())) + ".." +
                           human(*std::max_element(c.rates.begin(), c.rates.end()));
      char fair[16] = "-";
      if (!c.fairness.empty()) std::snprintf(fair, sizeof fair, "%.2f", median(c.fairness));
      double other = c.other.empty() ? 0 : *std::max_element(c.other.begin(), c.other.end());
      std::printf("| %s | %s | %s | %s | %.2f |\n", phase_names[p], s.c_str(), spread.c_str(), fair,
                  other);
    }
  }
}

/// How busy the rest of the machine was while this group was measured.
void print_noise(const group& g) {
  std::vector<double> all;
  for (const auto& [key, c] : g.cells) all.insert(all.end(), c.other.begin(), c.other.end());
  std::printf(
      "\n%d of %d rounds were disturbed (other processes kept more than %.2f CPUs busy "
      "during one of their measurements)%s.",
      g.rounds_run - (g.only_clean ? g.rounds_used : 0), g.rounds_run, disturbed_load,
      g.only_clean ? " and are left out" : "; too few undisturbed rounds: all are shown");
  if (!all.empty())
    std::printf(" Other load during the measurements shown: median %.2f, at most %.2f CPUs.",
                median(all), *std::max_element(all.begin(), all.end()));
  std::printf("\n");
}

/// What the run ran on, for the record.
void print_environment(const settings& s) {
  char date[32] = "?";
  std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  std::string cpu = "?";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);)
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  struct utsname u;
  std::string kernel = ::uname(&u) == 0 ? std::string(u.sysname) + " " + u.release : "?";
  std::printf("%s; %ld CPUs (%s); %s\n", date, ::sysconf(_SC_NPROCESSORS_ONLN), cpu.c_str(),
              kernel.c_str());
  std::printf("%s; LMDB %d.%d.%d; Boost %d.%d", db_version(nullptr, nullptr, nullptr),
              MDB_VERSION_MAJOR, MDB_VERSION_MINOR, MDB_VERSION_PATCH, BOOST_VERSION / 100000,
              BOOST_VERSION / 100 % 1000);
#ifdef SMISK_BENCH_MEMCACHED
  std::printf("; libmemcached %s", LIBMEMCACHED_VERSION_STRING);
#endif
  std::printf("\nstores on %s; two-process phases %s\n", bench_root().c_str(),
              pin_workers ? "pin worker w to CPU w" : "are not pinned");
  (void)s;
}

std::string memcached_from_env() {
  const char* file = std::getenv("SMISK_IPC_MEMCACHED_PORT_FILE");
  if (!file || !*file) return {};
  std::ifstream in(file);
  int port = 0;
  if (!(in >> port) || port <= 0) return {};
  return "127.0.0.1:" + std::to_string(port);
}

int int_arg(const char* v) {
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  if (!end || *end || n <= 0 || n > 100000000) die(std::string("not a positive count: ") + v);
  return static_cast<int>(n);
}

bool wanted(const settings& s, const std::string& system) {
  if (s.only.empty()) return true;
  return std::find(s.only.begin(), s.only.end(), system) != s.only.end();
}

}  // namespace

int main(int argc, char** argv) try {
  settings s;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--rounds")
      s.rounds = int_arg(next());
    else if (a == "--keys")
      s.keys = int_arg(next());
    else if (a == "--mix-ops")
      s.mix_ops = int_arg(next());
    else if (a == "--counter-ops")
      s.counter_ops = int_arg(next());
    else if (a == "--mc-keys")
      s.mc_keys = int_arg(next());
    else if (a == "--mc-mix-ops")
      s.mc_mix_ops = int_arg(next());
    else if (a == "--mc-counter-ops")
      s.mc_counter_ops = int_arg(next());
    else if (a == "--memcached")
      s.memcached = next();
    else if (a == "--memcached-pid")
      memcached_pid = static_cast<pid_t>(int_arg(next()));
    else if (a == "--details")
      s.details = true;
    else if (a == "--max-seconds")
      s.max_seconds = int_arg(next());
    else if (a == "--no-pin")
      pin_workers = false;
    else if (a == "--systems") {
      std::string list = next();
      for (std::size_t p = 0; p <= list.size();) {
        std::size_t q = list.find(',', p);
        if (q == std::string::npos) q = list.size();
        if (q > p) s.only.push_back(list.substr(p, q - p));
        p = q + 1;
      }
    } else if (a == "--ops") {
      int n = int_arg(next());
      s.rounds = 1;
      s.max_seconds = 0;
      s.keys = s.mix_ops = s.counter_ops = s.mc_keys = s.mc_mix_ops = s.mc_counter_ops = n;
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--rounds N] [--keys N] [--mix-ops N] [--counter-ops N] [--mc-keys N] "
          "[--mc-mix-ops N] [--mc-counter-ops N] [--memcached HOST:PORT] [--memcached-pid PID] "
          "[--details] [--no-pin] [--max-seconds N] [--systems a,b,...] [--ops N]\n",
          argv[0]);
      return 2;
    }
  }
  if (s.memcached.empty()) s.memcached = memcached_from_env();

  print_environment(s);
  const std::string root = bench_root() + "/smisk-ipc-bench." + std::to_string(::getpid());
  ::mkdir(root.c_str(), 0700);
  auto start = steady::now();
  std::int64_t failures = 0;

  // Berkeley DB group.
  const std::string raw_same = "raw BDB same flags", raw_unsafe = "raw BDB unsafe",
                    raw_patched = "raw BDB same+patch", dict = "shared_dict", lmdb = "LMDB",
                    boost = "Boost.Interprocess";
  std::map<std::string, factory> f;
  auto dir = [&](const char* what, int round) {
    return root + "/" + what + "." + std::to_string(round);
  };
  f[dict] = [&](const dataset& d, int round) {
    return spawn(dict, d, [&] { return std::make_unique<dict_bdb>(dir("dict", round)); });
  };
  f[raw_same] = [&](const dataset& d, int round) {
    return spawn(raw_same, d,
                 [&] { return std::make_unique<raw_bdb>(dir("raw", round), raw_mode::same); });
  };
  f[raw_patched] = [&](const dataset& d, int round) {
    return spawn(raw_patched, d, [&] {
      return std::make_unique<raw_bdb>(dir("patched", round), raw_mode::patched);
    });
  };
  f[raw_unsafe] = [&](const dataset& d, int round) {
    return spawn(raw_unsafe, d,
                 [&] { return std::make_unique<raw_bdb>(dir("unsafe", round), raw_mode::unsafe); });
  };
  f[lmdb] = [&](const dataset& d, int round) {
    return spawn(lmdb, d, [&] { return std::make_unique<lmdb_store>(dir("lmdb", round)); });
  };
  f[boost] = [&](const dataset& d, int round) {
    std::string name =
        "smisk-ipc-bench." + std::to_string(::getpid()) + "." + std::to_string(round);
    std::size_t bytes =
        std::max<std::size_t>(std::size_t{8} << 20, static_cast<std::size_t>(d.size()) * 600);
    return spawn(boost, d, [&] { return std::make_unique<boost_store>(name, bytes); });
  };

  group bdb;
  bdb.title = "Berkeley DB group";
  bdb.reference = raw_same;
  bdb.keys = s.keys;
  bdb.mix_ops = s.mix_ops;
  bdb.counter_ops = s.counter_ops;
  for (const auto& name : {dict, raw_same, raw_patched, raw_unsafe, lmdb, boost}) {
    if (wanted(s, name) || name == raw_same) bdb.systems.push_back(name);
  }
  {
    dataset d = make_dataset(s.keys);
    std::fprintf(stderr, "Berkeley DB group: %zu systems, %d rounds\n", bdb.systems.size(),
                 s.rounds);
    run_group(bdb, f, d, s.rounds,
              start + std::chrono::duration_cast<steady::duration>(
                          std::chrono::duration<double>(0.55 * s.max_seconds)));
  }
  print_group(bdb);
  print_noise(bdb);
  if (s.details) print_details(bdb);
  for (auto& [key, c] : bdb.cells) failures += c.failures;

  group mc;
  bool have_mc = false;
#ifdef SMISK_BENCH_MEMCACHED
  const std::string dict_mc_name = "shared_dict memcached", raw_mc_name = "raw libmemcached";
  if (!s.memcached.empty()) {
    have_mc = true;
    f[dict_mc_name] = [&](const dataset& d, int round) {
      std::string ns =
          "smisk-ipc-bench." + std::to_string(::getpid()) + "." + std::to_string(round);
      return spawn(dict_mc_name, d, [&] { return std::make_unique<dict_mc>(s.memcached, ns); });
    };
    f[raw_mc_name] = [&](const dataset& d, int round) {
      std::string prefix = "b" + std::to_string(::getpid()) + "." + std::to_string(round) + ":";
      return spawn(raw_mc_name, d, [&] { return std::make_unique<raw_mc>(s.memcached, prefix); });
    };
    mc.title = "memcached group, memcached at " + s.memcached;
    mc.reference = raw_mc_name;
    mc.keys = s.mc_keys;
    mc.mix_ops = s.mc_mix_ops;
    mc.counter_ops = s.mc_counter_ops;
    mc.systems = {dict_mc_name, raw_mc_name};
    dataset d = make_dataset(s.mc_keys);
    std::fprintf(stderr, "memcached group: 2 systems, %d rounds\n", s.rounds);
    run_group(mc, f, d, s.rounds,
              start + std::chrono::duration_cast<steady::duration>(
                          std::chrono::duration<double>(0.95 * s.max_seconds)));
    print_group(mc);
    print_noise(mc);
    if (s.details) print_details(mc);
    for (auto& [key, c] : mc.cells) failures += c.failures;
  }
#endif
  if (!have_mc)
    std::printf(
        "\nmemcached group: skipped (no server: pass --memcached HOST:PORT or set "
        "SMISK_IPC_MEMCACHED_PORT_FILE)\n");

  // The targets of issue 6.
  auto ratio = [](const group& g, int p, const std::string& sys) {
    auto it = g.cells.find({p, sys});
    return it == g.cells.end() || it->second.ratios.empty() ? 0.0 : median(it->second.ratios);
  };
  auto rate = [](const group& g, int p, const std::string& sys) {
    auto it = g.cells.find({p, sys});
    return it == g.cells.end() || it->second.rates.empty() ? 0.0 : median(it->second.rates);
  };
  std::printf("\nTargets\n\n");
  if (std::find(bdb.systems.begin(), bdb.systems.end(), dict) != bdb.systems.end()) {
    std::printf("- shared_dict / raw BDB same flags >= 0.90:");
    for (int p : {p_set, p_get, p_miss, p_erase, p_mix50, p_mix90}) {
      double r = ratio(bdb, p, dict);
      std::printf(" %s %.3f%s;", phase_names[p], r, r >= 0.90 ? "" : " (MISSED)");
    }
    std::printf("\n");
    double c = rate(bdb, p_counter, dict);
    std::printf("- contended counter >= 100k/s: shared_dict %s/s%s (raw BDB same flags %s/s",
                human(c).c_str(), c >= 100000 ? "" : " (MISSED)",
                human(rate(bdb, p_counter, raw_same)).c_str());
#ifdef SMISK_BENCH_MEMCACHED
    if (have_mc)
      std::printf(", memcached incr %s/s", human(rate(mc, p_counter, raw_mc_name)).c_str());
#endif
    std::printf(")\n");
  }
#ifdef SMISK_BENCH_MEMCACHED
  if (have_mc) {
    std::printf("- shared_dict memcached / raw libmemcached >= 0.90:");
    for (int p = 0; p < p_count; ++p) {
      double r = ratio(mc, p, dict_mc_name);
      std::printf(" %s %.3f%s;", phase_names[p], r, r >= 0.90 ? "" : " (MISSED)");
    }
    std::printf("\n");
  }
#endif
  std::printf("\nChecks: %s. Wall time %.0f s.\n",
              failures == 0 ? "every answer was right" : "SOME CHECKS FAILED",
              std::chrono::duration<double>(steady::now() - start).count());
  for (const group* g : {&bdb, &mc})
    for (const auto& [key, c] : g->cells)
      for (const auto& e : c.errors)
        std::printf("  error: %s, %s: %s\n", phase_names[key.first], key.second.c_str(), e.c_str());
  remove_tree(root);
  return failures == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "compare: %s\n", e.what());
  return 1;
}
