// Crash tests (issue 3): processes SIGKILLed at random while they write, a lock holder frozen by
// SIGSTOP, a home left by a fully crashed application, a deadlock storm of processes and threads
// with page splits, and fork() in every direction. What must hold is what the README's Guarantees
// promise: a process killed at any instant never blocks the others for more than 2 s, nothing
// acknowledged is lost, no deadlock reaches the caller, and the database verifies clean afterwards.
//
// Every test runs under a watchdog and every child is waited for with a timeout, so a hang in
// the library (a process killed inside a Berkeley DB mutex) is reported as a failure with a
// message, never as a stuck ctest.
//
// Built twice (tests/CMakeLists.txt): crash_test runs everything with a short chaos phase
// (10 s per dict kind, SMISK_CHAOS_SECONDS overrides it); crash_long_test is compiled with
// SMISK_CRASH_TEST_LONG and runs only the chaos tests, for at least 60 s each (label
// chaos_long). SMISK_CHAOS_SEED repeats a run's random choices (pauses, victims).
#include <signal.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using namespace std::chrono_literals;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;
using str_dict = ipc::shared_dict<std::string, std::string>;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::int64_t kStallLimitNs = 2'000'000'000;  // the bound the Guarantees promise

// ---------------------------------------------------------------------------
// Small helpers

/// CLOCK_MONOTONIC in ns: one clock for every process of the machine.
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double ms(std::int64_t ns) { return static_cast<double>(ns) / 1e6; }

void atomic_max(std::atomic<std::int64_t>& a, std::int64_t v) {
  std::int64_t cur = a.load(std::memory_order_relaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

static_assert(std::atomic<std::int64_t>::is_always_lock_free,
              "shared memory needs lock-free atomics");
static_assert(std::atomic<bool>::is_always_lock_free, "shared memory needs lock-free atomics");

/// A T in anonymous shared memory (MAP_SHARED | MAP_ANONYMOUS), made before fork() so that every
/// child sees the same object. Only lock-free atomics and plain bytes belong in T.
template <class T>
class shared_block {
 public:
  shared_block() {
    void* m = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw_errno("mmap");
    p_ = new (m) T();
  }
  ~shared_block() {
    p_->~T();
    ::munmap(p_, sizeof(T));
  }
  shared_block(const shared_block&) = delete;
  shared_block& operator=(const shared_block&) = delete;
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }

 private:
  T* p_ = nullptr;
};

/// Kills and reaps, when the test leaves (a failed ASSERT included), the children it started
/// that are still running or stopped, so that no worker blocked in the library outlives its test.
/// Children already reaped are skipped (waitpid says ECHILD).
class child_guard {
 public:
  child_guard() = default;
  child_guard(const child_guard&) = delete;
  child_guard& operator=(const child_guard&) = delete;
  ~child_guard() {
    for (pid_t p : pids_) {
      int ws = 0;
      if (::waitpid(p, &ws, WNOHANG) != 0) continue;  // reaped (ECHILD) or just ended
      ::kill(p, SIGKILL);
      while (::waitpid(p, &ws, 0) < 0 && errno == EINTR) {
      }
    }
  }
  pid_t add(pid_t p) {
    pids_.push_back(p);
    return p;
  }
  void add(const std::vector<pid_t>& ps) { pids_.insert(pids_.end(), ps.begin(), ps.end()); }

 private:
  std::vector<pid_t> pids_;
};

/// Errors seen by children: a count and the first message, in shared memory.
struct error_log {
  std::atomic<int> count{0};
  std::atomic<int> claimed{0};
  char first[512] = {};

  void record(const std::string& what) {
    count.fetch_add(1);
    if (claimed.exchange(1) == 0) {
      std::snprintf(first, sizeof first, "[pid %d] %s", static_cast<int>(::getpid()), what.c_str());
    }
  }
  std::string describe() const {
    return std::to_string(count.load()) + " error(s); first: " + (count.load() ? first : "-");
  }
};

ipc::bsddb::options dict_options(
    const std::string& home, const std::string& name, bool persistent,
    ipc::bsddb::access_method method = ipc::bsddb::access_method::hash) {
  ipc::bsddb::options o;
  o.homedir = home;
  o.name = name;
  o.persistent = persistent;
  o.method = method;
  return o;
}

const char* kind(bool persistent) { return persistent ? "persistent" : "temporary"; }

std::string persistence_name(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "persistent" : "temporary";
}

// ---------------------------------------------------------------------------
// The library's statistics, whatever fields `smisk::ipc::bsddb::statistics` has: a field is
// read only if it exists (detected at compile time), so the test keeps compiling while the
// crash-recovery work adds or renames counters.

#define SMISK_CRASH_TEST_STATS(X) \
  X(deadlock_retries)             \
  X(lock_timeouts)                \
  X(recoveries)                   \
  X(dead_processes_cleaned)       \
  X(dead_processes)               \
  X(failchk_runs)                 \
  X(failchk_errors)               \
  X(environments_abandoned)       \
  X(environments_opened)          \
  X(checkpoints)                  \
  X(stale_homes_cleaned)          \
  X(homes_removed)                \
  X(dead_mutex_owners)            \
  X(aborted_waits)                \
  X(libdb_faults)                 \
  X(lock_conflicts)               \
  X(writes_found_landed)          \
  X(writes_redone)

#define SMISK_CRASH_TEST_HAS_FIELD(field)                                           \
  template <class S, class = void>                                                  \
  struct has_stat_##field : std::false_type {};                                     \
  template <class S>                                                                \
  struct has_stat_##field<S, std::void_t<decltype(std::declval<const S&>().field)>> \
      : std::true_type {};
SMISK_CRASH_TEST_STATS(SMISK_CRASH_TEST_HAS_FIELD)
#undef SMISK_CRASH_TEST_HAS_FIELD

#define SMISK_CRASH_TEST_NAME(field) #field,
constexpr const char* kStatNames[] = {SMISK_CRASH_TEST_STATS(SMISK_CRASH_TEST_NAME)};
#undef SMISK_CRASH_TEST_NAME
constexpr int kStatCount = static_cast<int>(sizeof kStatNames / sizeof kStatNames[0]);

struct stat_values {
  std::uint64_t value[kStatCount] = {};
  bool present[kStatCount] = {};
};

template <class S>
stat_values read_stats(const S& s) {
  stat_values out;
  int i = 0;
#define SMISK_CRASH_TEST_READ(field)                    \
  if constexpr (has_stat_##field<S>::value) {           \
    out.value[i] = static_cast<std::uint64_t>(s.field); \
    out.present[i] = true;                              \
  }                                                     \
  ++i;
  SMISK_CRASH_TEST_STATS(SMISK_CRASH_TEST_READ)
#undef SMISK_CRASH_TEST_READ
  return out;
}

stat_values current_stats() { return read_stats(ipc::bsddb::stats()); }

/// The value of one statistic, if the library has that field.
[[maybe_unused]] std::optional<std::uint64_t> stat_value(const stat_values& s, const char* name) {
  for (int i = 0; i < kStatCount; ++i)
    if (s.present[i] && std::strcmp(kStatNames[i], name) == 0) return s.value[i];
  return std::nullopt;
}

/// Statistics summed over processes, in shared memory: each process adds what it did (the
/// difference to what it inherited at fork()).
struct shared_stats {
  std::atomic<std::int64_t> value[kStatCount] = {};
  std::atomic<bool> present[kStatCount] = {};

  void add_delta(const stat_values& now, const stat_values& base) {
    for (int i = 0; i < kStatCount; ++i) {
      if (!now.present[i]) continue;
      present[i].store(true);
      value[i].fetch_add(static_cast<std::int64_t>(now.value[i] - base.value[i]));
    }
  }
};

std::string format_stats(const stat_values& s) {
  std::string out;
  for (int i = 0; i < kStatCount; ++i)
    if (s.present[i]) out += std::string(" ") + kStatNames[i] + "=" + std::to_string(s.value[i]);
  return out.empty() ? " (no statistics)" : out;
}

std::string format_stats(const shared_stats& s) {
  std::string out;
  for (int i = 0; i < kStatCount; ++i)
    if (s.present[i].load())
      out += std::string(" ") + kStatNames[i] + "=" + std::to_string(s.value[i].load());
  return out.empty() ? " (no statistics)" : out;
}

// ---------------------------------------------------------------------------
// db5.3_verify

struct verify_result {
  int exit_code = -1;
  std::string output;
};

/// Runs `db5.3_verify -h home home/name` (bounded: a verifier that hangs is killed and the test
/// fails) and returns its exit code and output.
verify_result db_verify(const std::string& home, const std::string& name,
                        milliseconds timeout = 120s) {
  const char* tool =
      is_regular_file("/usr/bin/db5.3_verify") ? "/usr/bin/db5.3_verify" : "db5.3_verify";
  char out_path[] = "/tmp/smisk-ipc-verify-XXXXXX";
  const int fd = ::mkstemp(out_path);
  if (fd < 0) throw_errno("mkstemp");
  const std::string file = home + "/" + name;
  pid_t pid = fork_child([&] {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execlp(tool, tool, "-h", home.c_str(), file.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  });
  ::close(fd);
  const child_status st = wait_child(pid, timeout);
  verify_result r;
  r.output = read_file(out_path);
  ::unlink(out_path);
  if (st.timed_out)
    r.exit_code = -2;
  else if (st.exited)
    r.exit_code = st.exit_code;
  else
    r.output += "\n(db5.3_verify " + st.describe() + ")";
  return r;
}

#define EXPECT_VERIFIES(home, name)                                                               \
  do {                                                                                            \
    const verify_result vr_ = db_verify((home), (name));                                          \
    EXPECT_EQ(vr_.exit_code, 0) << "db5.3_verify -h " << (home) << " " << (home) << "/" << (name) \
                                << " (-2: timed out):\n"                                          \
                                << vr_.output;                                                    \
    std::printf("[ verify  ] db5.3_verify %s/%s: exit %d%s%s\n", (home).c_str(),                  \
                std::string(name).c_str(), vr_.exit_code, vr_.output.empty() ? "" : ": ",         \
                vr_.output.c_str());                                                              \
  } while (0)

// ===========================================================================
// 1. Chaos: workers SIGKILLed at random while they increment and set.

constexpr int kChaosWorkers = 6;

int chaos_seconds() {
  if (const char* s = std::getenv("SMISK_CHAOS_SECONDS")) {
    const int v = std::atoi(s);
    if (v > 0) return v;
  }
#ifdef SMISK_CRASH_TEST_LONG
  return 60;
#else
  return 10;
#endif
}

/// What a slot's workers acknowledged, across all the incarnations of the slot (a replacement
/// continues where the killed one stopped).
struct chaos_slot {
  std::atomic<std::int64_t> acked_increments{0};  // increment("counter") calls that returned
  std::atomic<std::int64_t> last_seq{-1};         // set("w<slot>:<seq>", seq) returned for 0..this
  std::atomic<std::int64_t> acked_ops{0};
  std::atomic<std::int64_t> heartbeat_ns{0};     // the slot's last acknowledged op (or the start)
  std::atomic<std::int64_t> started_ns{0};       // the running incarnation's fork (or the start)
  std::atomic<std::int64_t> max_gap_ns{0};       // between consecutive acknowledged ops
  std::atomic<std::int64_t> max_first_op_ns{0};  // incarnation start (opening included) to 1st ack
  std::atomic<int> incarnations{0};
  std::atomic<int> inherited_incarnations{0};
  std::atomic<int> stage{0};  // of the running incarnation: a chaos_stage
  stat_values stats_live;     // the running incarnation's statistics (delta since fork)
  shared_stats stats_done;    // the dead incarnations' statistics
};

/// Workers that are never killed, beside the chaos workers: each increments a key of its own,
/// and inserts and erases a flag of its own. Their operations are redone after every recovery
/// that the kills force on them, so the key counts exactly what they were told was applied only
/// if a redo never applies a write a second time (exactly-once, see
/// detail/bdb_landed_commits.hpp); and none may wait longer than the stall bound.
constexpr int kSteadyWorkers = 3;

struct steady_slot {
  std::atomic<std::int64_t> acked_increments{0};  // increment("steady<n>") calls that returned
  std::atomic<std::int64_t> wrong_results{0};     // an insert of its absent flag or an erase of its
                                                  // present one that returned false
  std::atomic<std::int64_t> landed{0};  // its writes_found_landed at the end (commits a break
                                        // interrupted that had landed: a redo would double them)
  std::atomic<std::int64_t> redone{0};  // its writes_redone at the end
  std::atomic<std::int64_t> heartbeat_ns{0};  // its last acknowledged op (or the start)
};

struct chaos_shared {
  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};
  error_log errors;
  chaos_slot slots[kChaosWorkers];
  steady_slot steady[kSteadyWorkers];
};

std::string steady_key(int n) { return "steady" + std::to_string(n); }
std::string steady_flag(int n) { return "steady" + std::to_string(n) + ":flag"; }

std::string chaos_key(int slot, std::int64_t seq) {
  return "w" + std::to_string(slot) + ":" + std::to_string(seq);
}

enum chaos_stage : int { forked, opening, waiting_for_go, incrementing, setting, closing, done };
constexpr const char* kChaosStageNames[] = {"forked",
                                            "opening its handle",
                                            "waiting for the start",
                                            "inside increment()",
                                            "inside set()",
                                            "closing its handle",
                                            "done"};

/// One worker incarnation of a slot: increment("counter"), set("w<slot>:<seq>", seq), ... until
/// told to stop, recording every acknowledged operation in shared memory.
void chaos_worker(chaos_shared& sh, int slot, const ipc::bsddb::options& opts,
                  int_dict* inherited) {
  chaos_slot& s = sh.slots[slot];
  const stat_values base = current_stats();
  std::optional<int_dict> own;
  std::int64_t prev;
  if (!sh.go.load()) {
    // A first-generation worker: opens its handle, then waits for the start (not counted).
    s.stage.store(opening);
    if (!inherited) own.emplace(opts);
    s.stage.store(waiting_for_go);
    while (!sh.go.load()) {
      if (sh.stop.load()) return;
      ::usleep(500);
    }
    prev = now_ns();
  } else {
    prev = now_ns();  // a replacement: opening the dict counts towards its first op
    s.stage.store(opening);
    if (!inherited) own.emplace(opts);
  }
  int_dict& d = inherited ? *inherited : *own;
  std::int64_t seq = s.last_seq.load() + 1;
  bool first = true;
  auto acknowledged = [&] {
    const std::int64_t t = now_ns();
    atomic_max(first ? s.max_first_op_ns : s.max_gap_ns, t - prev);
    first = false;
    prev = t;
    s.heartbeat_ns.store(t);
    s.acked_ops.fetch_add(1, std::memory_order_relaxed);
    const stat_values now = current_stats();
    for (int i = 0; i < kStatCount; ++i) {
      s.stats_live.present[i] = now.present[i];
      s.stats_live.value[i] = now.value[i] - base.value[i];
    }
  };
  while (!sh.stop.load(std::memory_order_relaxed)) {
    try {
      s.stage.store(incrementing);
      d.increment("counter");
      s.acked_increments.fetch_add(1);
      acknowledged();
      s.stage.store(setting);
      d.set(chaos_key(slot, seq), seq);
      s.last_seq.store(seq);
      acknowledged();
      ++seq;
    } catch (const std::exception& e) {
      sh.errors.record(std::string("slot ") + std::to_string(slot) + ": " + e.what());
      ::usleep(10000);
    }
  }
  s.stage.store(closing);
  own.reset();
  s.stage.store(done);
}

/// A never-killed worker (see kSteadyWorkers). Every call's result is checked: an insert of its
/// absent flag must return true and the erase that follows must return true too; a redo of a
/// write that had landed would make them false (or count an increment twice).
void steady_worker(chaos_shared& sh, int n, const ipc::bsddb::options& opts) {
  steady_slot& s = sh.steady[n];
  int_dict d(opts);
  while (!sh.go.load()) {
    if (sh.stop.load()) return;
    ::usleep(500);
  }
  const std::string key = steady_key(n);
  const std::string flag = steady_flag(n);
  while (!sh.stop.load(std::memory_order_relaxed)) {
    try {
      d.increment(key);
      s.acked_increments.fetch_add(1);
      if (!d.insert(flag, 1)) s.wrong_results.fetch_add(1);
      if (!d.erase(flag)) s.wrong_results.fetch_add(1);
      s.heartbeat_ns.store(now_ns());
    } catch (const std::exception& e) {
      sh.errors.record(std::string("steady worker ") + std::to_string(n) + ": " + e.what());
      ::usleep(10000);
    }
  }
  const auto st = ipc::bsddb::stats();
  s.landed.store(static_cast<std::int64_t>(st.writes_found_landed));
  s.redone.store(static_cast<std::int64_t>(st.writes_redone));
}

class chaos : public ::testing::TestWithParam<bool> {};

TEST_P(chaos, workers_sigkilled_at_random_lose_nothing_and_never_stall) {
  const bool persistent = GetParam();
  const int run_seconds = chaos_seconds();
  watchdog guard(seconds(run_seconds + 200), std::string("chaos (") + kind(persistent) + ")");
  temp_dir dir(persistent ? "/tmp" : temp_base());
  const auto opts = dict_options(dir.path(), "chaos", persistent);
  ::setenv("SMISK_TEST_STACKS_HOME", dir.path().c_str(), 1);  // for dump_stacks()

  std::uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("SMISK_CHAOS_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::printf("[ chaos   ] %s dict in %s, %d workers, %d s, seed %" PRIu64
              " (SMISK_CHAOS_SEED=<seed> repeats it)\n",
              kind(persistent), dir.path().c_str(), kChaosWorkers, run_seconds, seed);
  std::mt19937_64 rng(seed);

  // The parent opens and uses the dict before forking: some workers use this handle.
  std::optional<int_dict> parent_dict;
  parent_dict.emplace(opts);
  parent_dict->set("started", 1);

  shared_block<chaos_shared> sh;
  child_guard children;
  bool last_inherited[kChaosWorkers] = {};
  auto start_worker = [&](int slot, bool use_inherited) {
    chaos_slot& s = sh->slots[slot];
    last_inherited[slot] = use_inherited;
    s.incarnations.fetch_add(1);
    if (use_inherited) s.inherited_incarnations.fetch_add(1);
    s.stage.store(forked);
    s.started_ns.store(now_ns());
    int_dict* inherited = use_inherited ? &*parent_dict : nullptr;
    return children.add(
        fork_child([&sh, slot, &opts, inherited] { chaos_worker(*sh, slot, opts, inherited); }));
  };

  std::vector<pid_t> pids(kChaosWorkers);
  for (int slot = 0; slot < kChaosWorkers; ++slot) pids[slot] = start_worker(slot, slot % 2 == 0);
  std::vector<pid_t> steady_pids;
  for (int n = 0; n < kSteadyWorkers; ++n)
    steady_pids.push_back(
        children.add(fork_child([&sh, n, &opts] { steady_worker(*sh, n, opts); })));
  // The first generation opens its handles (up to 30 s), then the clock starts.
  {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    for (;;) {
      int waiting = 0;
      for (const auto& s : sh->slots) waiting += s.stage.load() == waiting_for_go ? 1 : 0;
      if (waiting == kChaosWorkers) break;
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "only " << waiting << " of " << kChaosWorkers
                      << " workers opened the dict within 30 s (before any kill)";
        break;
      }
      std::this_thread::sleep_for(2ms);
    }
  }
  const std::int64_t go_ns = now_ns();
  for (auto& s : sh->slots) {
    s.heartbeat_ns.store(go_ns);
    s.started_ns.store(go_ns);
  }
  for (auto& s : sh->steady) s.heartbeat_ns.store(go_ns);
  sh->go.store(true);

  // The killer. Before each kill it also looks at progress:
  // - a worker's stall: how long the running incarnation has gone without an acknowledged op
  //   (since its last one, or since it was forked). This also catches a worker that never
  //   returns, which the workers' own gap measurements cannot.
  // - the application's stall: how long no worker at all has acknowledged anything. While the
  //   killer replaces one worker, five others are running, so churn does not explain it.
  // - a slot's age (its last acknowledged op over all its incarnations): reported only, since a
  //   slot whose replacements are killed young can age without any worker stalling.
  int kills = 0;
  int unexpected_ends = 0;
  std::int64_t max_worker_stall = 0;
  int max_stall_slot = -1;
  std::int64_t max_global_stall = 0;
  std::int64_t max_steady_stall = 0;  // of a never-killed worker
  int max_steady_stall_worker = -1;
  std::int64_t max_slot_age = 0;
  std::int64_t first_stall_ns = -1;  // since go: when the first 2 s stall (worker or all) began
  int kills_before_stall = 0;
  std::uniform_int_distribution<int> pause_ms(20, 100);
  std::uniform_int_distribution<int> pick(0, kChaosWorkers - 1);
  const char* stacks_env = std::getenv("SMISK_TEST_STACKS");
  const bool dump_stalls = stacks_env && std::string(stacks_env) == "2";
  bool dumped[kChaosWorkers] = {};
  const auto end = std::chrono::steady_clock::now() + seconds(run_seconds);
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(milliseconds(pause_ms(rng)));
    const std::int64_t t = now_ns();
    std::int64_t last_any = go_ns;
    for (int slot = 0; slot < kChaosWorkers; ++slot) {
      const std::int64_t beat = sh->slots[slot].heartbeat_ns.load();
      const std::int64_t stall = t - std::max(beat, sh->slots[slot].started_ns.load());
      last_any = std::max(last_any, beat);
      max_slot_age = std::max(max_slot_age, t - beat);
      if (stall > max_worker_stall) {
        max_worker_stall = stall;
        max_stall_slot = slot;
      }
      if (stall > 1'500'000'000 && dump_stalls && !dumped[slot]) {
        // SMISK_TEST_STACKS=2: where a worker that stalls is waiting (a debugging aid; gdb
        // pauses it a moment).
        dumped[slot] = true;
        std::fprintf(stderr, "[ chaos   ] slot %d stalled %.0f ms, %s:\n", slot, ms(stall),
                     kChaosStageNames[sh->slots[slot].stage.load()]);
        for (int other = 0; other < kChaosWorkers; ++other) {
          std::fprintf(stderr, "[ chaos   ] slot %d (%s):\n", other,
                       kChaosStageNames[sh->slots[other].stage.load()]);
          smisk_test::dump_stacks(pids[other]);
        }
      }
      if (stall > kStallLimitNs && first_stall_ns < 0) {
        first_stall_ns = t - stall + kStallLimitNs - go_ns;
        kills_before_stall = kills;
      }
    }
    max_global_stall = std::max(max_global_stall, t - last_any);
    for (int n = 0; n < kSteadyWorkers; ++n) {
      const std::int64_t stall = t - sh->steady[n].heartbeat_ns.load();
      if (stall > max_steady_stall) {
        max_steady_stall = stall;
        max_steady_stall_worker = n;
      }
    }
    if (t - last_any > kStallLimitNs && first_stall_ns < 0) {
      first_stall_ns = last_any + kStallLimitNs - go_ns;
      kills_before_stall = kills;
    }
    const int victim = pick(rng);
    dumped[victim] = false;
    const child_status st = kill_child(pids[victim]);
    if (!st.killed_by(SIGKILL)) {
      ++unexpected_ends;
      ADD_FAILURE() << "worker " << victim << " had ended by itself: " << st.describe();
    }
    ++kills;
    // Fold the dead incarnation's statistics into the slot's total, then replace it.
    chaos_slot& s = sh->slots[victim];
    s.stats_done.add_delta(s.stats_live, stat_values{});
    s.stats_live = stat_values{};
    pids[victim] = start_worker(victim, rng() % 2 == 0);
  }

  // Stop: a flag in shared memory, then wait (workers blocked in the library time out here).
  const std::int64_t stop_ns = now_ns();
  sh->stop.store(true);
  std::int64_t last_any_ack = 0;
  for (auto& s : sh->slots) last_any_ack = std::max(last_any_ack, s.heartbeat_ns.load());
  const auto statuses = wait_children(pids, 10s);
  const auto steady_statuses = wait_children(steady_pids, 10s);
  EXPECT_TRUE(all_ok(steady_statuses)) << "never-killed workers did not stop within 10 s";
  std::string stuck;
  for (int slot = 0; slot < kChaosWorkers; ++slot) {
    if (!statuses[slot].timed_out) continue;
    const chaos_slot& s = sh->slots[slot];
    char line[256];
    std::snprintf(
        line, sizeof line,
        "\n  slot %d (pid %d, %s handle): %s; last acknowledged op %.1f ms before the stop", slot,
        static_cast<int>(pids[slot]),
        s.inherited_incarnations.load() && last_inherited[slot] ? "inherited" : "own",
        kChaosStageNames[s.stage.load()], ms(stop_ns - s.heartbeat_ns.load()));
    stuck += line;
  }
  EXPECT_TRUE(all_ok(statuses)) << "workers did not stop within 10 s after the stop flag; "
                                   "where they were:"
                                << stuck;
  for (auto& s : sh->slots) {
    s.stats_done.add_delta(s.stats_live, stat_values{});
    s.stats_live = stat_values{};
  }

  // What the workers recorded, printed before the parent touches the dict (which may hang).
  std::int64_t acked = 0;
  std::int64_t acked_ops = 0;
  std::int64_t acked_sets = 0;
  int incarnations = 0;
  int inherited = 0;
  std::int64_t max_gap = 0;
  std::int64_t max_first = 0;
  int gap_slot = -1;
  shared_stats& total = sh->slots[0].stats_done;
  for (int slot = 0; slot < kChaosWorkers; ++slot) {
    const chaos_slot& s = sh->slots[slot];
    acked += s.acked_increments.load();
    acked_ops += s.acked_ops.load();
    acked_sets += s.last_seq.load() + 1;
    incarnations += s.incarnations.load();
    inherited += s.inherited_incarnations.load();
    if (s.max_gap_ns.load() > max_gap) {
      max_gap = s.max_gap_ns.load();
      gap_slot = slot;
    }
    max_first = std::max(max_first, s.max_first_op_ns.load());
    if (slot > 0)
      for (int i = 0; i < kStatCount; ++i)
        if (s.stats_done.present[i].load()) {
          total.present[i].store(true);
          total.value[i].fetch_add(s.stats_done.value[i].load());
        }
  }
  const std::string stall_note =
      first_stall_ns < 0
          ? std::string()
          : ", the first 2 s stall began " + std::to_string(first_stall_ns / 1000000) +
                " ms into the run, after " + std::to_string(kills_before_stall) + " kills";
  std::printf(
      "[ chaos   ] %s: %d kills, %d worker incarnations (%d on an inherited handle), %" PRId64
      " acknowledged ops (%" PRId64 " increments, %" PRId64
      " sets); worker errors: %s\n"
      "[ chaos   ] max gap between acknowledged ops %.1f ms (slot %d), max start-to-first-ack "
      "%.1f ms\n"
      "[ chaos   ] seen by the killer: longest stall of a worker %.1f ms (slot %d), of all "
      "workers together %.1f ms; longest a slot went without progress %.1f ms\n"
      "[ chaos   ] the last acknowledged op of any worker came %.1f ms before the stop%s\n"
      "[ chaos   ] workers' stats:%s\n",
      kind(persistent), kills, incarnations, inherited, acked_ops, acked, acked_sets,
      sh->errors.describe().c_str(), ms(max_gap), gap_slot, ms(max_first), ms(max_worker_stall),
      max_stall_slot, ms(max_global_stall), ms(max_slot_age), ms(stop_ns - last_any_ack),
      stall_note.c_str(), format_stats(total).c_str());
  for (int slot = 0; slot < kChaosWorkers; ++slot) {
    const chaos_slot& s = sh->slots[slot];
    std::printf("[ chaos   ]   slot %d: %d incarnations, %" PRId64
                " acknowledged ops, the last at "
                "stop%+.1f ms, max gap %.1f ms, max start-to-first-ack %.1f ms\n",
                slot, s.incarnations.load(), s.acked_ops.load(),
                ms(s.heartbeat_ns.load() - stop_ns), ms(s.max_gap_ns.load()),
                ms(s.max_first_op_ns.load()));
  }
  std::fflush(stdout);

  EXPECT_GE(kills, run_seconds * 1000 / 100) << "the killer did not kill often enough";
  EXPECT_EQ(unexpected_ends, 0);
  EXPECT_EQ(sh->errors.count.load(), 0) << "operations threw in workers: " << sh->errors.describe();
  EXPECT_GT(acked, 0) << "no increment was ever acknowledged";
  EXPECT_LE(max_gap, kStallLimitNs)
      << "a worker stalled between two acknowledged ops (slot " << gap_slot << ")";
  EXPECT_LE(max_first, kStallLimitNs)
      << "a worker took more than 2 s from its start (opening its dict) to its first op";
  EXPECT_LE(max_worker_stall, kStallLimitNs)
      << "a live worker acknowledged nothing for that long (slot " << max_stall_slot << ")"
      << stall_note;
  EXPECT_LE(max_global_stall, kStallLimitNs)
      << "no worker acknowledged anything for that long" << stall_note;
  std::printf("[ chaos   ] longest stall of a never-killed worker %.1f ms (worker %d)\n",
              ms(max_steady_stall), max_steady_stall_worker);
  EXPECT_LE(max_steady_stall, kStallLimitNs)
      << "a never-killed worker acknowledged nothing for that long (worker "
      << max_steady_stall_worker << ")";

  // What was acknowledged must all be there.
  std::int64_t counter;
  {
    watchdog first_read(30s, std::string("chaos (") + kind(persistent) +
                                 "): the parent's first read after the run (all workers gone)");
    counter = parent_dict->get("counter").value_or(0);
  }
  watchdog reads(120s, std::string("chaos (") + kind(persistent) +
                           "): the parent reading back the acknowledged data");
  std::int64_t missing = 0;
  std::int64_t wrong = 0;
  std::string first_bad;
  for (int slot = 0; slot < kChaosWorkers; ++slot) {
    const std::int64_t last = sh->slots[slot].last_seq.load();
    for (std::int64_t seq = 0; seq <= last; ++seq) {
      const std::optional<std::int64_t> v = parent_dict->get(chaos_key(slot, seq));
      if (v == std::optional<std::int64_t>(seq)) continue;
      (v ? wrong : missing) += 1;
      if (first_bad.empty())
        first_bad = chaos_key(slot, seq) + " = " + (v ? std::to_string(*v) : "<missing>");
    }
  }
  std::printf("[ chaos   ] %s: counter %" PRId64 " (allowed %" PRId64 "..%" PRId64 "); of %" PRId64
              " acknowledged sets %" PRId64 " missing, %" PRId64
              " wrong\n"
              "[ chaos   ] parent's stats:%s\n",
              kind(persistent), counter, acked, acked + kills + sh->errors.count.load(), acked_sets,
              missing, wrong, format_stats(current_stats()).c_str());
  EXPECT_GE(counter, acked) << "acknowledged increments were lost";
  EXPECT_LE(counter, acked + kills + sh->errors.count.load())
      << "more increments landed than were made";
  EXPECT_EQ(missing, 0) << "acknowledged sets are missing; first: " << first_bad;

  // Exactly-once: each never-killed worker's key counts exactly its acknowledged increments, and
  // no insert or erase of its own flag reported the opposite of what it did.
  for (int n = 0; n < kSteadyWorkers; ++n) {
    const steady_slot& s = sh->steady[n];
    const std::int64_t value = parent_dict->get(steady_key(n)).value_or(0);
    std::printf("[ chaos   ] %s: never-killed worker %d: %s = %" PRId64 ", acknowledged %" PRId64
                ", %" PRId64 " wrong insert/erase results; commits interrupted by a break: %" PRId64
                " found landed, %" PRId64 " redone\n",
                kind(persistent), n, steady_key(n).c_str(), value, s.acked_increments.load(),
                s.wrong_results.load(), s.landed.load(), s.redone.load());
    EXPECT_EQ(value, s.acked_increments.load())
        << "never-killed worker " << n << ": its key is not what it was told was applied";
    EXPECT_EQ(s.wrong_results.load(), 0)
        << "never-killed worker " << n << ": a redone insert or erase reported a wrong result";
    EXPECT_FALSE(parent_dict->contains(steady_flag(n)));
  }
  EXPECT_EQ(wrong, 0) << "acknowledged sets read back wrong; first: " << first_bad;

  // The database verifies clean. A temporary home disappears with its last handle, so it is
  // verified while the parent's handle is open (nobody writes any more).
  parent_dict->sync();
  if (!persistent) EXPECT_VERIFIES(dir.path(), "chaos");
  parent_dict.reset();
  if (persistent) {
    EXPECT_VERIFIES(dir.path(), "chaos");
  } else {
    // A home that the user gave: only the library's own files are removed by the last process.
    EXPECT_TRUE(list_dir(dir.path()).empty())
        << "left in the temporary home after its last handle closed: " << describe_dir(dir.path());
  }
}

INSTANTIATE_TEST_SUITE_P(dict, chaos, ::testing::Values(true, false), persistence_name);

#ifndef SMISK_CRASH_TEST_LONG

// ===========================================================================
// 2. A lock holder frozen by SIGSTOP.

struct sigstop_shared {
  std::atomic<std::int64_t> ready_ns[4] = {};  // after opening, just before the op
  std::atomic<std::int64_t> done_ns[4] = {};   // the op returned
  std::atomic<std::int64_t> result[4] = {};
  error_log errors;
};

enum sigstop_op : int {
  same_key_write = 0,     // increment of the key the frozen process holds
  same_key_read = 1,      // get of that key
  same_db_other_key = 2,  // set of another key in the same database
  other_db = 3,           // set in another database of the same home
};
constexpr const char* kSigstopOpNames[] = {"increment of the held key", "get of the held key",
                                           "set of another key in the same database",
                                           "set in another database of the same home"};

struct sigstop_param {
  bool persistent;
  bool kill;  // false: SIGCONT the holder; true: SIGKILL it while stopped
};

void PrintTo(const sigstop_param& p, std::ostream* os) {
  *os << (p.persistent ? "persistent" : "temporary") << (p.kill ? ", SIGKILL" : ", SIGCONT");
}

class sigstop : public ::testing::TestWithParam<sigstop_param> {};

TEST_P(sigstop, holder_of_a_write_lock_is_stopped_then_released) {
  const bool persistent = GetParam().persistent;
  const bool kill_holder = GetParam().kill;
  watchdog guard(90s, "sigstop test");
  temp_dir dir(persistent ? "/tmp" : temp_base());
  const auto opts = dict_options(dir.path(), "main", persistent);
  const auto other_opts = dict_options(dir.path(), "other", persistent);
  int_dict d{opts};
  int_dict other{other_opts};
  d.set("k", 0);
  d.set("unrelated", 0);
  other.set("x", 0);

  shared_block<sigstop_shared> sh;
  child_guard children;
  signal_pipe holding;
  // The holder: inside update("k"), with the write lock on k, it tells the parent and freezes.
  const pid_t holder = fork_child([&] {
    int_dict own{opts};
    bool stopped = false;
    own.update("k", [&](std::optional<std::int64_t> v) {
      if (!stopped) {
        stopped = true;
        holding.send();
        ::raise(SIGSTOP);
      }
      return v.value_or(0) + 100;
    });
  });
  children.add(holder);
  ASSERT_TRUE(holding.wait(1, 30s)) << "the holder never got inside update()";
  // It is stopped once waitpid says so.
  {
    int ws = 0;
    pid_t r;
    do r = ::waitpid(holder, &ws, WUNTRACED);
    while (r < 0 && errno == EINTR);
    ASSERT_EQ(r, holder);
    ASSERT_TRUE(WIFSTOPPED(ws)) << "the holder did not stop";
  }

  // Four processes try their op while the holder is frozen.
  signal_pipe ready;
  std::vector<pid_t> waiters;
  for (int op = 0; op < 4; ++op) {
    waiters.push_back(fork_child([&, op] {
      // The increment uses the handle inherited from the parent, the others open their own.
      std::optional<int_dict> own;
      if (op == same_key_read || op == same_db_other_key) own.emplace(opts);
      if (op == other_db) own.emplace(other_opts);
      int_dict& h = own ? *own : d;
      sh->ready_ns[op].store(now_ns());
      ready.send();
      try {
        std::int64_t r = 0;
        switch (op) {
          case same_key_write:
            r = h.increment("k");
            break;
          case same_key_read:
            r = h.get("k").value_or(-1);
            break;
          case same_db_other_key:
            h.set("unrelated", 7);
            break;
          case other_db:
            h.set("x", 9);
            break;
        }
        sh->result[op].store(r);
        sh->done_ns[op].store(now_ns());
      } catch (const std::exception& e) {
        sh->errors.record(std::string(kSigstopOpNames[op]) + ": " + e.what());
        throw;
      }
    }));
  }
  children.add(waiters);
  ASSERT_TRUE(ready.wait(4, 30s)) << "the waiters did not open the dict (opening blocked?)";
  std::this_thread::sleep_for(1500ms);

  // While the holder is merely stopped: the waiter on its key waits without error; an op in
  // another database proceeds.
  const std::int64_t t_check = now_ns();
  for (int op = 0; op < 4; ++op) {
    const std::int64_t done = sh->done_ns[op].load();
    if (done)
      std::printf("[ sigstop ] while the holder is stopped: %s returned after %.1f ms\n",
                  kSigstopOpNames[op], ms(done - sh->ready_ns[op].load()));
    else
      std::printf("[ sigstop ] while the holder is stopped: %s still waiting after %.1f ms\n",
                  kSigstopOpNames[op], ms(t_check - sh->ready_ns[op].load()));
  }
  EXPECT_EQ(sh->done_ns[same_key_write].load(), 0)
      << "the write on the held key did not wait for the stopped holder";
  EXPECT_EQ(sh->errors.count.load(), 0) << sh->errors.describe();
  {
    int ws;
    EXPECT_EQ(::waitpid(waiters[same_key_write], &ws, WNOHANG), 0)
        << "the waiter on the held key ended while the holder was stopped";
  }
  EXPECT_NE(sh->done_ns[other_db].load(), 0)
      << "an op in another database was blocked by the stopped holder";
  if (sh->done_ns[other_db].load()) {
    EXPECT_LE(sh->done_ns[other_db].load() - sh->ready_ns[other_db].load(), 1'000'000'000);
  }

  // Release the holder: continue it, or kill it while it is stopped.
  const std::int64_t t_release = now_ns();
  if (kill_holder) {
    ::kill(holder, SIGKILL);
  } else {
    ::kill(holder, SIGCONT);
  }
  const auto release_deadline = std::chrono::steady_clock::now() + 10s;
  while (sh->done_ns[same_key_write].load() == 0 &&
         std::chrono::steady_clock::now() < release_deadline)
    std::this_thread::sleep_for(1ms);
  const std::int64_t write_done = sh->done_ns[same_key_write].load();
  if (write_done)
    std::printf("[ sigstop ] the write on the held key returned %.1f ms after %s\n",
                ms(write_done - t_release), kill_holder ? "SIGKILL" : "SIGCONT");
  else {
    std::printf("[ sigstop ] the write on the held key still waits 10 s after %s\n",
                kill_holder ? "SIGKILL" : "SIGCONT");
    std::fflush(stdout);
    setenv("SMISK_TEST_STACKS_HOME", dir.path().c_str(), 1);
    dump_stacks(waiters[same_key_write]);
    dump_stacks(holder);  // if it is still there
  }
  ASSERT_NE(write_done, 0) << "the waiter did not proceed within 10 s after "
                           << (kill_holder ? "SIGKILL" : "SIGCONT") << " of the holder";
  EXPECT_LE(write_done - t_release, kStallLimitNs)
      << "the waiter needed more than 2 s after the holder was released";

  const child_status holder_status = wait_child(holder, 20s);
  if (kill_holder) {
    EXPECT_TRUE(holder_status.killed_by(SIGKILL)) << holder_status.describe();
  } else {
    EXPECT_TRUE(all_ok(holder_status));
  }
  EXPECT_TRUE(all_ok(wait_children(waiters, 20s)));
  for (int op = 0; op < 4; ++op)
    if (op != same_key_write && sh->done_ns[op].load())
      std::printf("[ sigstop ] %s returned %.1f ms after it started\n", kSigstopOpNames[op],
                  ms(sh->done_ns[op].load() - sh->ready_ns[op].load()));

  // Nothing lost: the holder's update (if it was continued) and the waiter's increment.
  watchdog reads(30s, "sigstop test: the parent reading back");
  const std::int64_t expected = kill_holder ? 1 : 101;
  EXPECT_EQ(d.get("k"), expected);
  EXPECT_EQ(sh->result[same_key_write].load(), expected)
      << "the increment must come after the holder's update (or its abort)";
  const std::int64_t read = sh->result[same_key_read].load();
  // A read that returned while the holder was stopped sees the value from before; one that
  // waited for the holder sees its committed update (or, when the holder was killed, the value
  // from before, with or without the waiter's increment), never what the holder had not
  // committed.
  if (sh->done_ns[same_key_read].load() < t_release) {
    EXPECT_EQ(read, 0) << "a read during the stop saw an uncommitted value";
  } else if (kill_holder) {
    EXPECT_TRUE(read == 0 || read == 1) << "the read of the held key saw " << read;
  } else {
    EXPECT_TRUE(read == 100 || read == 101) << "the read of the held key saw " << read;
  }
  EXPECT_EQ(d.get("unrelated"), 7);
  EXPECT_EQ(other.get("x"), 9);
  EXPECT_EQ(d.increment("k"), expected + 1);  // and the parent carries on
  std::printf("[ sigstop ] stats of the parent:%s\n", format_stats(current_stats()).c_str());
}

INSTANTIATE_TEST_SUITE_P(dict, sigstop,
                         ::testing::Values(sigstop_param{false, false}, sigstop_param{false, true},
                                           sigstop_param{true, false}, sigstop_param{true, true}),
                         [](const ::testing::TestParamInfo<sigstop_param>& info) {
                           return std::string(info.param.persistent ? "persistent" : "temporary") +
                                  (info.param.kill ? "_sigkill" : "_sigcont");
                         });

// ===========================================================================
// 3. A stale home: every process of the application SIGKILLed at once.

constexpr int kStaleProcs = 4;
constexpr int kStaleRounds = 3;

struct stale_shared {
  std::atomic<std::int64_t> acked_increments[kStaleProcs] = {};
  std::atomic<std::int64_t> last_seq[kStaleProcs] = {};
  std::atomic<std::int64_t> acked_updates[kStaleProcs] = {};
  std::atomic<std::int64_t> ops[kStaleProcs] = {};
  std::atomic<std::int64_t> counter_after_reopen = {-1};  // what the new process found (+1)
  error_log errors;
};

class stale_home : public ::testing::TestWithParam<bool> {};

TEST_P(stale_home, every_process_sigkilled_at_once_then_a_new_process_opens_it) {
  const bool persistent = GetParam();
  watchdog guard(200s, std::string("stale home (") + kind(persistent) + ")");
  temp_dir dir(persistent ? "/tmp" : temp_base());
  const std::string home = dir.file("home");  // the library creates it
  const auto opts = dict_options(home, "stale", persistent);
  // For a persistent home: what each earlier round left, to be found again in later rounds.
  std::vector<std::int64_t> counters_left;

  // Each round: an application of kStaleProcs processes works on the dict and is SIGKILLed all
  // at once (after 300, 500, 700 ms: a different instant each round), then a new process opens
  // the home and checks what it finds.
  for (int round = 0; round < kStaleRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::string r = "r" + std::to_string(round) + ":";
    shared_block<stale_shared> sh;
    for (auto& s : sh->last_seq) s.store(-1);
    // The parent never opens the dict, so all of its users die together. The children share a
    // process group, killed with one kill(-pgid, SIGKILL).
    pid_t pgid = 0;
    std::vector<pid_t> pids;
    child_guard children;
    for (int i = 0; i < kStaleProcs; ++i) {
      const pid_t pid = fork_child([&, i, pgid] {
        ::setpgid(0, pgid);  // the first child leads a new group; the others join it
        int_dict d{opts};
        for (std::int64_t seq = 0;; ++seq) {
          try {
            d.increment(r + "counter");
            sh->acked_increments[i].fetch_add(1);
            d.set(r + "c" + std::to_string(i) + ":" + std::to_string(seq), seq);
            sh->last_seq[i].store(seq);
            d.update(r + "u" + std::to_string(i),
                     [](std::optional<std::int64_t> v) { return v.value_or(0) + 1; });
            sh->acked_updates[i].fetch_add(1);
            sh->ops[i].fetch_add(3, std::memory_order_relaxed);
          } catch (const std::exception& e) {
            sh->errors.record(e.what());
            ::usleep(10000);
          }
        }
      });
      children.add(pid);
      if (i == 0) pgid = pid;
      ::setpgid(pid, pgid);  // also from the parent, so no race with the child's own call
      pids.push_back(pid);
    }
    // Let them work: each at least 300 ops, and 300 ms more each round.
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + 60s;
    for (;;) {
      bool enough = std::chrono::steady_clock::now() - start >= milliseconds(300 + 200 * round);
      for (auto& n : sh->ops) enough = enough && n.load() >= 300;
      if (enough || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(5ms);
    }
    ASSERT_EQ(::kill(-pgid, SIGKILL), 0) << std::strerror(errno);
    for (pid_t p : pids) {
      const child_status st = wait_child(p, 10s);
      EXPECT_TRUE(st.killed_by(SIGKILL)) << st.describe();
    }
    std::int64_t acked = 0;
    for (auto& n : sh->acked_increments) acked += n.load();
    std::int64_t total_ops = 0;
    for (auto& n : sh->ops) total_ops += n.load();
    std::printf("[ stale   ] %s, round %d: %d processes killed at once after %" PRId64
                " acknowledged ops; the home holds %s\n",
                kind(persistent), round, kStaleProcs, total_ops, describe_dir(home).c_str());
    EXPECT_EQ(sh->errors.count.load(), 0) << sh->errors.describe();
    for (int i = 0; i < kStaleProcs; ++i)
      EXPECT_GE(sh->ops[i].load(), 300) << "process " << i << " barely worked before the kill";

    // A new process opens the same home.
    const child_status next = run_child(
        [&] {
          const std::int64_t t0 = now_ns();
          std::optional<int_dict> d;
          d.emplace(opts);
          const std::int64_t opened = now_ns();
          if (persistent) {
            const std::int64_t counter = d->get(r + "counter").value_or(0);
            EXPECT_GE(counter, acked) << "acknowledged increments were lost";
            EXPECT_LE(counter, acked + kStaleProcs);
            std::int64_t missing = 0;
            for (int i = 0; i < kStaleProcs; ++i) {
              for (std::int64_t seq = 0; seq <= sh->last_seq[i].load(); ++seq)
                if (d->get(r + "c" + std::to_string(i) + ":" + std::to_string(seq)) !=
                    std::optional<std::int64_t>(seq))
                  ++missing;
              const std::int64_t u = d->get(r + "u" + std::to_string(i)).value_or(0);
              EXPECT_GE(u, sh->acked_updates[i].load()) << "acknowledged updates were lost";
              EXPECT_LE(u, sh->acked_updates[i].load() + 1);
            }
            EXPECT_EQ(missing, 0) << "acknowledged sets are missing";
            // What earlier rounds left (each checked and incremented once by its new process).
            for (int earlier = 0; earlier < round; ++earlier)
              EXPECT_EQ(d->get("r" + std::to_string(earlier) + ":counter"),
                        counters_left[static_cast<std::size_t>(earlier)])
                  << "the counter of round " << earlier << " changed";
            EXPECT_EQ(d->increment(r + "counter"), counter + 1);
            sh->counter_after_reopen.store(counter + 1);
            std::printf("[ stale   ] persistent: reopened in %.1f ms; counter %" PRId64
                        " for %" PRId64 " acknowledged increments\n",
                        ms(opened - t0), counter, acked);
          } else {
            EXPECT_TRUE(d->empty()) << "a temporary dict did not start empty after a crash";
            EXPECT_EQ(d->size(), 0u);
            EXPECT_EQ(d->get(r + "counter"), std::nullopt);
            d->set("fresh", 1);
            EXPECT_EQ(d->get("fresh"), 1);
            const auto cleaned = stat_value(current_stats(), "stale_homes_cleaned");
            if (cleaned) {
              EXPECT_GE(*cleaned, 1u) << "stale_homes_cleaned did not count the cleanup";
            }
            std::printf("[ stale   ] temporary: reopened in %.1f ms, empty\n", ms(opened - t0));
          }
          EXPECT_LE(opened - t0, 10'000'000'000) << "opening the stale home took that long";
          std::printf("[ stale   ] stats of the new process:%s\n",
                      format_stats(current_stats()).c_str());
          d.reset();  // the new process closes: the last user of the home
          if (!persistent) {
            EXPECT_FALSE(path_exists(home))
                << "the library-created temporary home is still there after its last user "
                   "closed it: "
                << describe_dir(home);
          }
        },
        60s);
    EXPECT_TRUE(all_ok(next));
    counters_left.push_back(sh->counter_after_reopen.load());

    if (persistent) {
      EXPECT_VERIFIES(home, "stale");
    } else {
      EXPECT_FALSE(path_exists(home)) << "left behind: " << describe_dir(home);
      EXPECT_TRUE(list_dir(dir.path()).empty()) << describe_dir(dir.path());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(dict, stale_home, ::testing::Values(true, false), persistence_name);

// ===========================================================================
// 4. Deadlock storm: 8 processes x 4 threads on 20 keys, values growing to a few KB, and filler
//    keys coming and going beside them, so that pages split and merge.

constexpr int kStormProcs = 8;
constexpr int kStormThreads = 4;
constexpr int kStormKeys = 20;      // hot keys, every op on them contends
constexpr int kStormFillers = 300;  // keys set and erased beside them, for page splits
constexpr int kStormSeconds = 4;
constexpr std::size_t kStormMaxValue = 6000;

struct storm_shared {
  std::atomic<std::int64_t> deadline_ns{0};
  std::atomic<std::int64_t> acked_increments{0};
  std::atomic<std::int64_t> ops{0};
  std::atomic<std::int64_t> torn{0};
  std::atomic<std::int64_t> max_op_ns{0};
  std::atomic<int> max_op_kind{0};
  std::atomic<std::int64_t> max_op_index{0};          // how many ops its thread had done before it
  std::atomic<std::int64_t> max_first_op_ns[2] = {};  // threads' first ops: [0] own, [1] inherited
  std::atomic<std::int64_t> ops_over_100ms{0};
  std::atomic<std::int64_t> ops_over_1s{0};
  char first_torn[256] = {};
  std::atomic<int> torn_claimed{0};
  error_log errors;
  shared_stats stats;
};

/// "<n>:" followed by n copies of one letter: a reader can tell a whole value from a torn one.
std::string storm_value(std::size_t n, char c) {
  return std::to_string(n) + ":" + std::string(n, c);
}

bool storm_value_ok(const std::string& v) {
  const std::size_t colon = v.find(':');
  if (colon == std::string::npos || colon == 0) return false;
  const std::size_t n = std::strtoull(v.substr(0, colon).c_str(), nullptr, 10);
  if (v.size() != colon + 1 + n || n == 0) return false;
  const char c = v[colon + 1];
  return std::all_of(v.begin() + static_cast<std::ptrdiff_t>(colon) + 1, v.end(),
                     [c](char x) { return x == c; });
}

std::size_t storm_size(const std::string& v) { return v.size() - v.find(':') - 1; }

const char* storm_op_name(int what) {
  if (what < 30) return "update (grow)";
  if (what < 45) return "set";
  if (what < 53) return "erase";
  if (what < 58) return "pop";
  if (what < 63) return "insert";
  if (what < 68) return "get + compare_exchange";
  if (what < 72) return "get";
  if (what < 80) return "set/erase of a filler key";
  if (what < 92) return "increment";
  return "update (int)";
}

struct storm_param {
  ipc::bsddb::access_method method;
  bool persistent;
};

void PrintTo(const storm_param& p, std::ostream* os) {
  *os << (p.method == ipc::bsddb::access_method::btree ? "btree" : "hash") << ", "
      << (p.persistent ? "persistent" : "temporary");
}

class deadlock_storm : public ::testing::TestWithParam<storm_param> {};

TEST_P(deadlock_storm, many_processes_and_threads_on_few_keys_see_no_error) {
  const bool persistent = GetParam().persistent;
  const auto method = GetParam().method;
  const char* method_name = method == ipc::bsddb::access_method::btree ? "btree" : "hash";
  watchdog guard(seconds(kStormSeconds + 150), std::string("deadlock storm (") + method_name + ")");
  temp_dir dir(persistent ? "/tmp" : temp_base());
  const auto sopts = dict_options(dir.path(), "storm", persistent, method);
  const auto copts = dict_options(dir.path(), "counters", persistent, method);
  std::optional<str_dict> strings;
  std::optional<int_dict> counters;
  strings.emplace(sopts);
  counters.emplace(copts);
  strings->set("k0", storm_value(1, 'a'));
  counters->set("counter", 0);

  shared_block<storm_shared> sh;
  process_barrier start(kStormProcs);
  auto pids = fork_children(kStormProcs, [&](int proc) {
    const stat_values base = current_stats();
    // Half of the processes use the handles inherited from the parent, half open their own.
    std::optional<str_dict> own_s;
    std::optional<int_dict> own_c;
    if (proc % 2 == 1) {
      own_s.emplace(sopts);
      own_c.emplace(copts);
    }
    str_dict& s = own_s ? *own_s : *strings;
    int_dict& c = own_c ? *own_c : *counters;
    ASSERT_TRUE(start.arrive_and_wait());
    auto worker = [&](int thread) {
      std::mt19937 rng(static_cast<unsigned>(proc * 100 + thread + 1));
      const char letter = static_cast<char>('a' + (proc * kStormThreads + thread) % 26);
      std::int64_t done_ops = 0;
      auto torn = [&](const std::string& where, const std::string& v) {
        if (sh->torn.fetch_add(1) == 0 && sh->torn_claimed.exchange(1) == 0)
          std::snprintf(sh->first_torn, sizeof sh->first_torn, "%s: %.200s", where.c_str(),
                        v.c_str());
      };
      while (now_ns() < sh->deadline_ns.load()) {
        const std::string key = "k" + std::to_string(rng() % kStormKeys);
        const int what = static_cast<int>(rng() % 100);
        const std::int64_t t0 = now_ns();
        try {
          if (what < 30) {
            // Grow the value by up to 600 bytes; start again small once it is large.
            s.update(key, [&](std::optional<std::string> v) {
              if (v && !storm_value_ok(*v)) torn("update of " + key, *v);
              std::size_t n = v && storm_value_ok(*v) ? storm_size(*v) : 0;
              n = n + 1 + rng() % 600;
              if (n > kStormMaxValue) n = 1 + rng() % 64;
              return storm_value(n, letter);
            });
          } else if (what < 45) {
            s.set(key, storm_value(1 + rng() % kStormMaxValue, letter));
          } else if (what < 53) {
            s.erase(key);
          } else if (what < 58) {
            if (auto v = s.pop(key); v && !storm_value_ok(*v)) torn("pop of " + key, *v);
          } else if (what < 63) {
            (void)s.insert(key, storm_value(1 + rng() % 3000, letter));
          } else if (what < 68) {
            const std::optional<std::string> expected = s.get(key);
            (void)s.compare_exchange(key, expected, storm_value(1 + rng() % 3000, letter));
          } else if (what < 72) {
            if (auto v = s.get(key); v && !storm_value_ok(*v)) torn("get of " + key, *v);
          } else if (what < 80) {
            // Filler keys come and go beside the hot ones, so pages split and merge.
            const std::string filler = "f" + std::to_string(rng() % kStormFillers);
            if (rng() % 2)
              s.set(filler, storm_value(200 + rng() % 1800, letter));
            else
              s.erase(filler);
          } else if (what < 92) {
            c.increment("counter");
            sh->acked_increments.fetch_add(1);
          } else {
            c.update("c" + std::to_string(rng() % 5),
                     [](std::optional<std::int64_t> v) { return v.value_or(0) + 1; });
          }
          const std::int64_t took = now_ns() - t0;
          if (took > sh->max_op_ns.load()) {
            atomic_max(sh->max_op_ns, took);
            sh->max_op_kind.store(what);
            sh->max_op_index.store(done_ops);
          }
          if (took > 100'000'000) sh->ops_over_100ms.fetch_add(1);
          if (took > 1'000'000'000) sh->ops_over_1s.fetch_add(1);
          if (done_ops == 0) atomic_max(sh->max_first_op_ns[own_s ? 0 : 1], took);
          ++done_ops;
          sh->ops.fetch_add(1, std::memory_order_relaxed);
        } catch (const std::exception& e) {
          sh->errors.record(e.what());
        }
      }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < kStormThreads; ++t) threads.emplace_back(worker, t);
    for (auto& t : threads) t.join();
    sh->stats.add_delta(current_stats(), base);
  });
  child_guard children;
  children.add(pids);
  sh->deadline_ns.store(now_ns() + kStormSeconds * 1'000'000'000LL);
  EXPECT_TRUE(start.release_when_all_arrived(60s)) << "the storm processes did not all start";
  EXPECT_TRUE(all_ok(wait_children(pids, seconds(kStormSeconds + 60))));

  watchdog reads(60s, "deadlock storm: the parent reading back");
  const std::int64_t counter = counters->get("counter").value_or(-1);
  std::printf(
      "[ storm   ] %s %s: %" PRId64
      " ops by %d processes x %d threads in %d s; slowest op "
      "%.1f ms (%s, after %" PRId64 " ops of its thread), %" PRId64 " ops over 100 ms, %" PRId64
      " over 1 s\n"
      "[ storm   ] slowest first op of a thread: %.1f ms on a handle inherited over fork, %.1f ms "
      "on "
      "a handle opened in the child\n"
      "[ storm   ] counter %" PRId64 " for %" PRId64
      " acknowledged increments; errors: %s; torn: %" PRId64
      "\n"
      "[ storm   ] children's stats:%s\n",
      method_name, kind(persistent), sh->ops.load(), kStormProcs, kStormThreads, kStormSeconds,
      ms(sh->max_op_ns.load()), storm_op_name(sh->max_op_kind.load()), sh->max_op_index.load(),
      sh->ops_over_100ms.load(), sh->ops_over_1s.load(), ms(sh->max_first_op_ns[1].load()),
      ms(sh->max_first_op_ns[0].load()), counter, sh->acked_increments.load(),
      sh->errors.describe().c_str(), sh->torn.load(), format_stats(sh->stats).c_str());
  EXPECT_EQ(sh->errors.count.load(), 0)
      << "exceptions reached the caller: " << sh->errors.describe();
  EXPECT_EQ(sh->torn.load(), 0) << "torn values, first: " << sh->first_torn;
  EXPECT_EQ(counter, sh->acked_increments.load()) << "increments lost or duplicated";
  EXPECT_GT(sh->ops.load(), 1000) << "the storm barely ran";
  {
    // The storm must really contend: busy keys retried (lock_conflicts) and deadlocks broken by
    // the detector (deadlock_retries, from the plain writes and the transactions that queue).
    std::int64_t conflicts = 0, deadlocks = 0;
    for (int i = 0; i < kStatCount; ++i) {
      if (std::strcmp(kStatNames[i], "lock_conflicts") == 0) conflicts = sh->stats.value[i].load();
      if (std::strcmp(kStatNames[i], "deadlock_retries") == 0)
        deadlocks = sh->stats.value[i].load();
    }
    EXPECT_GT(conflicts + deadlocks, 1000) << "the storm saw almost no contention";
  }
  std::size_t bad = 0;
  for (const auto& [k, v] : strings->items())
    if (!storm_value_ok(v)) ++bad;
  EXPECT_EQ(bad, 0u) << "values that are not whole after the storm";

  strings->sync();
  counters->sync();
  if (!persistent) {
    EXPECT_VERIFIES(dir.path(), "storm");
    EXPECT_VERIFIES(dir.path(), "counters");
  }
  strings.reset();
  counters.reset();
  if (persistent) {
    EXPECT_VERIFIES(dir.path(), "storm");
    EXPECT_VERIFIES(dir.path(), "counters");
  }
}

INSTANTIATE_TEST_SUITE_P(dict, deadlock_storm,
                         ::testing::Values(storm_param{ipc::bsddb::access_method::hash, false},
                                           storm_param{ipc::bsddb::access_method::btree, false},
                                           storm_param{ipc::bsddb::access_method::hash, true},
                                           storm_param{ipc::bsddb::access_method::btree, true}),
                         [](const ::testing::TestParamInfo<storm_param>& info) {
                           return std::string(info.param.method == ipc::bsddb::access_method::btree
                                                  ? "btree"
                                                  : "hash") +
                                  "_" + (info.param.persistent ? "persistent" : "temporary");
                         });

// ===========================================================================
// 5. fork(): a dict used before fork works in the child and the grandchild at once; children
//    that end in any way do not disturb the parent.

TEST(fork_safety, dict_used_before_fork_works_in_child_and_grandchild_while_parent_works) {
  watchdog guard(90s, "fork: child and grandchild");
  temp_dir dir(temp_base());
  int_dict d{dict_options(dir.path(), "numbers", false)};
  str_dict s{dict_options(dir.path(), "strings", false)};
  d.set("parent", 1);
  EXPECT_EQ(d.increment("n"), 1);
  s.set("hello", "world");

  constexpr int kEach = 300;
  shared_block<std::atomic<bool>> child_done;
  shared_block<std::atomic<std::int64_t>> first_op_ns[2];  // child, grandchild
  const pid_t child = fork_child([&] {
    // At once, through the inherited handles.
    const std::int64_t t0 = now_ns();
    EXPECT_EQ(d.get("parent"), 1);
    first_op_ns[0]->store(now_ns() - t0);
    EXPECT_EQ(s.get("hello"), "world");
    for (int i = 0; i < kEach / 2; ++i) d.increment("n");
    const pid_t grandchild = fork_child([&] {
      const std::int64_t t1 = now_ns();
      EXPECT_EQ(d.get("parent"), 1);
      first_op_ns[1]->store(now_ns() - t1);
      EXPECT_EQ(s.at("hello"), "world");
      for (int i = 0; i < kEach; ++i) d.increment("n");
      s.set("grandchild", "was here");
      int_dict copy = d;  // a copy in the grandchild shares the grandchild's engine
      copy.increment("n", 0);
    });
    for (int i = 0; i < kEach / 2; ++i) d.increment("n");  // concurrently with the grandchild
    EXPECT_TRUE(all_ok(wait_child(grandchild, 60s)));
    EXPECT_EQ(s.get("grandchild"), "was here");
    s.set("child", "was here");
    child_done->store(true);
  });
  // The parent keeps working while both run.
  int parent_ops = 0;
  while (!child_done->load() && parent_ops < 100000) {
    d.increment("n");
    ++parent_ops;
  }
  ASSERT_TRUE(all_ok(wait_child(child, 60s)));
  EXPECT_EQ(d.get("n"), 1 + 2 * kEach + parent_ops)
      << "parent " << parent_ops << " + child " << kEach << " + grandchild " << kEach;
  EXPECT_EQ(s.get("child"), "was here");
  EXPECT_EQ(s.get("grandchild"), "was here");
  EXPECT_EQ(d.increment("n"), 2 + 2 * kEach + parent_ops);
  EXPECT_EQ(d.size(), 2u);
  std::printf(
      "[ fork    ] first op through the inherited handle: %.1f ms in the child, %.1f ms "
      "in the grandchild; the parent did %d increments meanwhile\n",
      ms(first_op_ns[0]->load()), ms(first_op_ns[1]->load()), parent_ops);
  EXPECT_LE(first_op_ns[0]->load(), kStallLimitNs) << "the child's first op was not at once";
  EXPECT_LE(first_op_ns[1]->load(), kStallLimitNs) << "the grandchild's first op was not at once";
}

enum class child_end { return_from_body, std_exit, underscore_exit, sigkill_idle, sigkill_busy };

struct fork_end_param {
  child_end end;
  bool own_handle;  // the child opens its own handle (else uses the inherited one)
};

std::string child_end_name(child_end e) {
  switch (e) {
    case child_end::return_from_body:
      return "returns";
    case child_end::std_exit:
      return "std_exit";
    case child_end::underscore_exit:
      return "underscore_exit";
    case child_end::sigkill_idle:
      return "sigkill_idle";
    case child_end::sigkill_busy:
      return "sigkill_busy";
  }
  return "?";
}

struct fork_shared {
  std::atomic<std::int64_t> acked{0};
  std::atomic<bool> ready{false};
};

void PrintTo(const fork_end_param& p, std::ostream* os) {
  *os << child_end_name(p.end) << ", " << (p.own_handle ? "own handle" : "inherited handle");
}

class fork_child_end : public ::testing::TestWithParam<fork_end_param> {};

TEST_P(fork_child_end, does_not_disturb_the_parent) {
  const child_end end = GetParam().end;
  const bool own_handle = GetParam().own_handle;
  const bool killed = end == child_end::sigkill_idle || end == child_end::sigkill_busy;
  watchdog guard(120s, "fork: child that " + child_end_name(end));
  temp_dir dir(temp_base());
  const auto opts = dict_options(dir.path(), "numbers", false);
  int_dict d{opts};
  d.set("parent", 1);
  d.set("parent_n", 0);

  constexpr int kRounds = 4;
  std::int64_t parent_n = 0;
  std::int64_t child_min = 0;    // acknowledged increments of child_n over all rounds
  std::int64_t child_slack = 0;  // increments that may have landed without acknowledgement
  std::int64_t max_parent_op = 0;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    shared_block<fork_shared> sh;
    child_guard children;
    const pid_t child = fork_child([&] {
      std::optional<int_dict> own;
      if (own_handle) own.emplace(opts);
      int_dict& h = own ? *own : d;
      EXPECT_EQ(h.get("parent"), 1);
      const int n = end == child_end::sigkill_busy ? 1 << 30 : 300;
      for (int i = 0; i < n; ++i) {
        h.increment("child_n");
        sh->acked.fetch_add(1);
        if (i == 100) sh->ready.store(true);
      }
      switch (end) {
        case child_end::return_from_body:
          return;  // the harness leaves through _exit; handles stay open
        case child_end::std_exit:
          exit_child_normally();  // atexit handlers and static destructors run
        case child_end::underscore_exit:
          ::_exit(0);
        case child_end::sigkill_idle:
          for (;;) ::pause();
        case child_end::sigkill_busy:
          break;
      }
    });
    children.add(child);
    // The parent works while the child runs.
    while (!sh->ready.load()) {
      int ws;
      if (::waitpid(child, &ws, WNOHANG) == child) {
        ADD_FAILURE() << "the child ended early: " << status_from_wait(child, ws).describe();
        break;
      }
      d.increment("parent_n");
      ++parent_n;
    }
    for (int i = 0; i < 50; ++i) {
      d.increment("parent_n");
      ++parent_n;
    }
    if (killed) {
      if (end == child_end::sigkill_idle) {
        // Wait until the child has finished its increments and is idle.
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        while (sh->acked.load() < 300 && std::chrono::steady_clock::now() < deadline)
          std::this_thread::sleep_for(1ms);
      } else {
        std::this_thread::sleep_for(milliseconds(5 + 20 * round));
      }
      EXPECT_TRUE(kill_child(child).killed_by(SIGKILL));
      if (end == child_end::sigkill_busy) ++child_slack;
    } else {
      EXPECT_TRUE(all_ok(wait_child(child, 60s)));
    }
    child_min += sh->acked.load();

    watchdog after(30s, "fork: round " + std::to_string(round) +
                            ", the parent's operations after its child " + child_end_name(end));
    // The parent carries on at once: every op within the stall limit, values exact.
    for (int i = 0; i < 200; ++i) {
      const std::int64_t t0 = now_ns();
      EXPECT_EQ(d.increment("parent_n"), parent_n + 1);
      ++parent_n;
      max_parent_op = std::max(max_parent_op, now_ns() - t0);
    }
    const std::int64_t child_n = d.get("child_n").value_or(0);
    EXPECT_GE(child_n, child_min) << "acknowledged increments of the child were lost";
    EXPECT_LE(child_n, child_min + child_slack);
    child_min = child_n;  // what landed counts from now on
    child_slack = 0;
  }
  std::printf("[ fork    ] child that %s (%s handle): slowest parent op afterwards %.2f ms\n",
              child_end_name(end).c_str(), own_handle ? "own" : "inherited", ms(max_parent_op));
  EXPECT_LE(max_parent_op, kStallLimitNs) << "the parent stalled after the child ended";
  EXPECT_EQ(d.get("parent_n"), parent_n);

  // A later child and a fresh handle in the parent work too.
  watchdog later(60s,
                 "fork: a later child and a fresh handle after a child " + child_end_name(end));
  EXPECT_TRUE(all_ok(run_child(
      [&] {
        int_dict own{opts};
        EXPECT_EQ(own.increment("parent_n"), parent_n + 1);
        EXPECT_EQ(d.increment("parent_n"), parent_n + 2);
      },
      60s)));
  int_dict fresh{opts};
  EXPECT_EQ(fresh.increment("parent_n"), parent_n + 3);
  EXPECT_TRUE(is_directory(dir.path()));
}

INSTANTIATE_TEST_SUITE_P(dict, fork_child_end,
                         ::testing::Values(fork_end_param{child_end::return_from_body, false},
                                           fork_end_param{child_end::return_from_body, true},
                                           fork_end_param{child_end::std_exit, false},
                                           fork_end_param{child_end::std_exit, true},
                                           fork_end_param{child_end::underscore_exit, false},
                                           fork_end_param{child_end::underscore_exit, true},
                                           fork_end_param{child_end::sigkill_idle, false},
                                           fork_end_param{child_end::sigkill_idle, true},
                                           fork_end_param{child_end::sigkill_busy, false},
                                           fork_end_param{child_end::sigkill_busy, true}),
                         [](const ::testing::TestParamInfo<fork_end_param>& info) {
                           return child_end_name(info.param.end) +
                                  (info.param.own_handle ? "_own" : "_inherited");
                         });

#endif  // SMISK_CRASH_TEST_LONG

}  // namespace
