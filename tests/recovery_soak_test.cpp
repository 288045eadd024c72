// A process that lives through any number of engine recoveries keeps a bounded number of file
// descriptors, mappings, threads and bytes (docs/embedding.md).
// A regression test for a reported leak: a long-lived server whose sibling workers were killed
// now and then grew by about 5 descriptors and 17 KB per recovery, until it ran out of
// descriptors.
//
// One process P keeps a temporary dict open and works on it. Over and over, it forks a child
// that opens the same dict and hammers it, and SIGKILLs the child 2-20 ms later, mid-operation.
// Some of those kills leave the Berkeley DB environment needing recovery; P notices (its next
// operations, or its watchdog's failchk, say DB_RUNRECOVERY), leaves the broken environment and
// opens a new one (running the recovery itself, or joining one that a later child recovered).
// Every new environment P opens is one recovery lived through. P's descriptors, mappings,
// threads and resident memory after the first 20 and at the end must not differ by more than a
// small constant, and P's own counter must hold exactly the increments P saw acknowledged.
//
// Built twice (tests/CMakeLists.txt): recovery_soak_test (300 recoveries, and the same under
// `ulimit -n 256`) and recovery_soak_long_test (SMISK_SOAK_LONG: 1000 recoveries, the first test
// only; label soak). SMISK_SOAK_RECOVERIES=<n> overrides the target.
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using namespace std::chrono_literals;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;
using clock_type = std::chrono::steady_clock;

#ifdef SMISK_SOAK_LONG
constexpr std::uint64_t kDefaultTarget = 1000;
constexpr auto kWallLimit = 1680s;  // under the ctest TIMEOUT of 1800 s, with room to report
#else
constexpr std::uint64_t kDefaultTarget = 300;
constexpr auto kWallLimit = 480s;  // under the ctest TIMEOUT of 600 s, with room to report
#endif
/// If no new environment is opened for this long, the loop stops and the test fails.
constexpr auto kStallLimit = 30s;
/// Recoveries lived through before the first sample: by then every lazily made thing (libdb's
/// and the allocator's caches, buffers of the test) exists.
constexpr std::uint64_t kWarmup = 20;

// The bounds, between the sample after kWarmup recoveries and the end. A leak of one descriptor
// or one mapping per recovery exceeds them within a few dozen recoveries; what they allow is
// noise: a thread of the library that is between two environments, the allocator's arenas
// growing with the work.
constexpr long kMaxFdGrowth = 8;
constexpr long kMaxMapGrowth = 16;
constexpr long kMaxThreadGrowth = 2;
/// The heap: what malloc has handed out and not got back, plus the chunks libdb's arenas hold
/// (robust_heap.hpp), may differ by this much: the live environment's handles and buffers at the
/// moment of the sample. A broken environment's libdb handles that stayed allocated (15-25 kB per
/// recovery before the arenas) exceed it within 50 recoveries.
constexpr long kMaxHeapGrowthKb = 1024;
/// Resident memory may grow by this much: on top of the heap's bound, the memory malloc keeps
/// for reuse after the large, short-lived buffers of a recovery (the landed commits' file is
/// read and rewritten whole; about 2 MB at most, measured over 1,000 recoveries).
constexpr long kMaxRssGrowthKb = 4096;

// Under AddressSanitizer, freed memory stays in its quarantine (up to 256 MB) and its allocator
// maps more regions as it goes: resident memory grows by about 600 kB and the mappings by a few
// per ten recoveries whatever the library does. Only descriptors, threads and the data are
// checked there; the figures are still printed.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

std::uint64_t soak_target() {
  if (const char* s = std::getenv("SMISK_SOAK_RECOVERIES")) {
    const long long v = std::atoll(s);
    if (v > 0) return static_cast<std::uint64_t>(v);
  }
  return kDefaultTarget;
}

/// Where temporary dicts live: tmpfs as in production (the default home is on /dev/shm).
std::string temp_base() { return is_directory("/dev/shm") ? "/dev/shm" : "/tmp"; }

/// What the process holds, read from /proc/self.
struct footprint {
  long fds = 0;      // entries of /proc/self/fd (the directory's own descriptor included)
  long maps = 0;     // lines of /proc/self/maps
  long threads = 0;  // Threads: of /proc/self/status
  long rss_kb = 0;   // VmRSS: of /proc/self/status
  // VmRSS's parts, printed to tell a heap leak (anonymous) from more pages touched in the
  // environment's regions (shared memory on /dev/shm).
  long anon_kb = 0;         // RssAnon:
  long shmem_kb = 0;        // RssShmem:
  long malloc_kb = 0;       // bytes in use in malloc's heap (mallinfo2)
  long malloc_held_kb = 0;  // bytes malloc holds from the system (mallinfo2)
  long arena_kb = 0;        // chunks taken by the library's libdb arenas (robust_heap.hpp)
};

long status_field(const std::string& status, const char* name) {
  const std::string key = std::string("\n") + name + ":";
  const std::size_t at = status.find(key);
  if (at == std::string::npos) return -1;
  return std::atol(status.c_str() + at + key.size());
}

footprint read_footprint() {
  footprint f;
  f.fds = static_cast<long>(list_dir("/proc/self/fd").size());
  const std::string maps = read_file("/proc/self/maps");
  for (char c : maps) f.maps += c == '\n' ? 1 : 0;
  const std::string status = read_file("/proc/self/status");
  f.threads = status_field(status, "Threads");
  f.rss_kb = status_field(status, "VmRSS");
  f.anon_kb = status_field(status, "RssAnon");
  f.shmem_kb = status_field(status, "RssShmem");
  const struct mallinfo2 mi = ::mallinfo2();
  f.malloc_kb = static_cast<long>(mi.uordblks / 1024);
  f.malloc_held_kb = static_cast<long>((mi.arena + mi.hblkhd) / 1024);
  f.arena_kb = ipc::detail::robust::heap_chunks_taken.load() *
               static_cast<long>(ipc::detail::robust::heap_chunk_size / 1024);
  return f;
}

std::string describe(const footprint& f) {
  return std::to_string(f.fds) + " fds, " + std::to_string(f.maps) + " mappings, " +
         std::to_string(f.threads) + " threads, " + std::to_string(f.rss_kb) + " kB RSS (" +
         std::to_string(f.anon_kb) + " anon, " + std::to_string(f.shmem_kb) + " shmem; " +
         std::to_string(f.malloc_kb) + " of " + std::to_string(f.malloc_held_kb) +
         " kB in malloc, " + std::to_string(f.arena_kb) + " kB in libdb arenas)";
}

/// Ends the process if the soak makes no progress for kStallLimit while P is stuck inside a
/// dict operation (the loop's own check cannot run then): prints the figures first, and every
/// thread's stack with SMISK_TEST_STACKS=1. Like smisk_test::watchdog, it removes the live
/// temp_dirs and leaves with 124; its forked children die with it (PR_SET_PDEATHSIG).
class stall_monitor {
 public:
  explicit stall_monitor(const char* label)
      : label_(label), thread_([this] {
          std::unique_lock<std::mutex> lock(mutex_);
          while (!cv_.wait_for(lock, 1s, [this] { return done_; })) {
            // Later than the loop's own check, which reports with the test's assertions.
            if (clock_type::now() - last_change_ < kStallLimit + 30s) continue;
            std::fprintf(stderr,
                         "\n[ soak    ] %s: STUCK: no new environment for %lld s, inside %s; "
                         "%llu recoveries lived through; now %s\n",
                         label_, static_cast<long long>((kStallLimit + 30s).count()), where_,
                         static_cast<unsigned long long>(lived_),
                         describe(read_footprint()).c_str());
            dump_stacks(::getpid());
            std::fflush(stdout);
            std::fflush(stderr);
            smisk_test::detail::live_temp_dirs::instance().remove_all_trees();
            ::_exit(124);
          }
        }) {}
  ~stall_monitor() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  stall_monitor(const stall_monitor&) = delete;
  stall_monitor& operator=(const stall_monitor&) = delete;

  /// The loop's progress: `lived` recoveries so far; `where`: a string literal for the report.
  void note(std::uint64_t lived, const char* where) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (lived != lived_) last_change_ = clock_type::now();
    lived_ = lived;
    where_ = where;
  }

 private:
  const char* label_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::uint64_t lived_ = 0;
  const char* where_ = "the start";
  clock_type::time_point last_change_ = clock_type::now();
  std::thread thread_;
};

/// Kills and reaps the running child when the loop leaves early.
struct current_child {
  pid_t pid = -1;
  ~current_child() {
    if (pid > 0) kill_child(pid);
  }
};

/// The soak loop in this process (P), until it has lived through `target` recoveries. Reports
/// with gtest assertions (so that, in a forked child, the child's exit code says whether it
/// passed).
void soak(std::uint64_t target, const char* label) {
  temp_dir dir(temp_base());
  ipc::bsddb::options opts;
  opts.homedir = dir.path();
  opts.name = "soak";
  opts.persistent = false;

  std::uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("SMISK_SOAK_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> kill_after_us(2000, 20000);

  stall_monitor monitor(label);
  int_dict d{opts};
  std::int64_t acked = 0;      // P's increments of "p" that returned
  std::int64_t uncertain = 0;  // P's increments of "p" that threw (applied or not)
  std::int64_t wrong_reads = 0;
  std::string first_wrong_read;
  int errors = 0;
  std::string first_error;
  auto p_op = [&](std::int64_t step) {
    bool incremented = false;
    try {
      const std::int64_t v = d.increment("p");
      incremented = true;
      ++acked;
      if (uncertain == 0 && v != acked && wrong_reads++ == 0)
        first_wrong_read = "increment returned " + std::to_string(v) + " after " +
                           std::to_string(acked) + " acknowledged";
      d.set("p:step", step);
      const std::optional<std::int64_t> r = d.get("p:step");
      if (r != std::optional<std::int64_t>(step) && wrong_reads++ == 0)
        first_wrong_read = "p:step read back " + (r ? std::to_string(*r) : "nothing") +
                           " after set(" + std::to_string(step) + ")";
    } catch (const std::exception& e) {
      // An increment that threw may or may not have landed: the final check allows for it, and
      // any exception fails the test (the library must take recoveries out of the caller's way).
      if (!incremented) ++uncertain;
      if (errors++ == 0) first_error = e.what();
    }
  };
  p_op(0);

  const auto base_stats = ipc::bsddb::stats();  // P's counters (inherited ones included)
  auto lived = [&] {
    return ipc::bsddb::stats().environments_opened - base_stats.environments_opened;
  };
  signal_pipe started;  // a child's first operation returned
  const footprint at_start = read_footprint();
  std::optional<footprint> after_warmup;
  std::uint64_t lived_at_warmup = 0;
  std::int64_t kills = 0;
  std::int64_t children_not_started = 0;
  std::int64_t children_ended_early = 0;
  std::string first_child_problem;
  std::int64_t step = 1;
  const auto t0 = clock_type::now();
  auto last_progress = t0;
  std::uint64_t last_lived = 0;
  std::string stopped_because;

  while (lived() < target) {
    monitor.note(lived(), "the loop");
    const auto now = clock_type::now();
    if (lived() != last_lived) {
      last_lived = lived();
      last_progress = now;
    }
    if (now - last_progress > kStallLimit) {
      stopped_because = "no new environment for " + std::to_string(kStallLimit.count()) + " s";
      break;
    }
    if (now - t0 > kWallLimit) {
      stopped_because = "the run took longer than " + std::to_string(kWallLimit.count()) + " s";
      break;
    }
    if (errors > 10) {
      stopped_because = "P's operations threw more than 10 times";
      break;
    }
    if (!after_warmup && lived() >= kWarmup) {
      after_warmup = read_footprint();
      lived_at_warmup = lived();
    }

    current_child child;
    monitor.note(lived(), "fork() or the wait for the child's first operation");
    child.pid = fork_child([&opts, &started] {
      int_dict own{opts};
      own.increment("child");
      started.send();
      for (std::int64_t i = 0;; ++i) {
        own.increment("child");
        own.set("c" + std::to_string(i % 64), i);
      }
    });
    if (!started.wait(1, 10s)) {
      ++children_not_started;
      if (first_child_problem.empty())
        first_child_problem = "a child did not complete its first operation within 10 s";
    } else {
      // P works beside the child until the kill, then a few operations more, in which it meets
      // what the kill left (a dead owner's mutex, a panic) and recovers.
      const auto kill_at = clock_type::now() + std::chrono::microseconds(kill_after_us(rng));
      monitor.note(lived(), "P's operations beside the child");
      while (clock_type::now() < kill_at) p_op(step++);
    }
    const child_status st = kill_child(child.pid);
    child.pid = -1;
    ++kills;
    if (!st.killed_by(SIGKILL)) {
      ++children_ended_early;
      if (first_child_problem.empty()) first_child_problem = st.describe();
    }
    monitor.note(lived(), "P's operations after the kill");
    for (int i = 0; i < 5; ++i) p_op(step++);
  }
  monitor.note(lived(), "the final checks");

  const std::uint64_t lived_end = lived();
  const auto end_stats = ipc::bsddb::stats();
  const footprint at_end = read_footprint();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();

  std::optional<std::int64_t> counter;
  try {
    counter = d.get("p");
  } catch (const std::exception& e) {
    ADD_FAILURE() << "the final read of P's counter threw: " << e.what();
  }

  const auto since = [](std::uint64_t now, std::uint64_t before) {
    return static_cast<unsigned long long>(now - before);
  };
  std::printf(
      "[ soak    ] %s: %llu recoveries lived through (new environments) in %.1f s, %lld kills, "
      "seed %" PRIu64
      " (SMISK_SOAK_SEED)\n"
      "[ soak    ] P's stats: recoveries run %llu, environments opened %llu, abandoned %llu, "
      "failchk errors %llu, dead mutex owners %llu, aborted waits %llu, libdb faults %llu\n"
      "[ soak    ] at the start:               %s\n",
      label, static_cast<unsigned long long>(lived_end), secs, static_cast<long long>(kills), seed,
      since(end_stats.recoveries, base_stats.recoveries),
      since(end_stats.environments_opened, base_stats.environments_opened),
      since(end_stats.environments_abandoned, base_stats.environments_abandoned),
      since(end_stats.dead_process_checks, base_stats.dead_process_checks),
      since(end_stats.dead_mutex_owners, base_stats.dead_mutex_owners),
      since(end_stats.aborted_waits, base_stats.aborted_waits),
      since(end_stats.libdb_faults, base_stats.libdb_faults), describe(at_start).c_str());
  if (after_warmup) {
    const double n = static_cast<double>(lived_end - lived_at_warmup);
    const auto per = [n](long end, long warm) {
      return n > 0 ? static_cast<double>(end - warm) / n : 0.0;
    };
    std::printf(
        "[ soak    ] after %llu recoveries:       %s\n"
        "[ soak    ] at the end (%llu recoveries): %s\n"
        "[ soak    ] growth over %.0f recoveries: %+ld fds, %+ld mappings, %+ld threads, %+ld kB "
        "RSS (%+ld anon, %+ld shmem); per recovery %.2f fds, %.2f mappings, %.3f threads, %.1f kB "
        "RSS (%.1f anon, %.1f shmem)\n",
        static_cast<unsigned long long>(lived_at_warmup), describe(*after_warmup).c_str(),
        static_cast<unsigned long long>(lived_end), describe(at_end).c_str(), n,
        at_end.fds - after_warmup->fds, at_end.maps - after_warmup->maps,
        at_end.threads - after_warmup->threads, at_end.rss_kb - after_warmup->rss_kb,
        at_end.anon_kb - after_warmup->anon_kb, at_end.shmem_kb - after_warmup->shmem_kb,
        per(at_end.fds, after_warmup->fds), per(at_end.maps, after_warmup->maps),
        per(at_end.threads, after_warmup->threads), per(at_end.rss_kb, after_warmup->rss_kb),
        per(at_end.anon_kb, after_warmup->anon_kb), per(at_end.shmem_kb, after_warmup->shmem_kb));
  } else {
    std::printf("[ soak    ] at the end (%llu recoveries): %s\n",
                static_cast<unsigned long long>(lived_end), describe(at_end).c_str());
  }
  std::printf("[ soak    ] P: %lld increments acknowledged, %lld threw; counter %s\n",
              static_cast<long long>(acked), static_cast<long long>(uncertain),
              counter ? std::to_string(*counter).c_str() : "<absent>");
  std::fflush(stdout);

  EXPECT_TRUE(stopped_because.empty())
      << "stopped after " << lived_end << " of " << target << " recoveries: " << stopped_because
      << "\n  at the start: " << describe(at_start) << "\n  at the end:   " << describe(at_end);
  EXPECT_GE(lived_end, target);
  EXPECT_EQ(errors, 0) << "P's operations threw; first: " << first_error;
  EXPECT_EQ(children_not_started, 0) << first_child_problem;
  EXPECT_EQ(children_ended_early, 0)
      << "children ended before the kill; first: " << first_child_problem;
  EXPECT_EQ(wrong_reads, 0) << "first: " << first_wrong_read;
  // P's counter: exactly what P saw acknowledged (no increment lost, none applied twice); an
  // increment that threw may or may not be in it.
  ASSERT_TRUE(counter.has_value());
  EXPECT_GE(*counter, acked) << "acknowledged increments were lost";
  EXPECT_LE(*counter, acked + uncertain) << "increments were applied twice";
  if (uncertain == 0) {
    EXPECT_EQ(*counter, acked);
  }

  ASSERT_TRUE(after_warmup.has_value()) << "fewer than " << kWarmup << " recoveries";
  EXPECT_LE(at_end.fds, after_warmup->fds + kMaxFdGrowth) << "descriptors leak with recoveries";
  EXPECT_LE(at_end.threads, after_warmup->threads + kMaxThreadGrowth)
      << "threads leak with recoveries";
  if constexpr (!kSanitized) {
    EXPECT_LE(at_end.maps, after_warmup->maps + kMaxMapGrowth) << "mappings leak with recoveries";
    EXPECT_LE(at_end.malloc_kb + at_end.arena_kb,
              after_warmup->malloc_kb + after_warmup->arena_kb + kMaxHeapGrowthKb)
        << "heap memory leaks with recoveries";
    EXPECT_LE(at_end.rss_kb, after_warmup->rss_kb + kMaxRssGrowthKb)
        << "resident memory grows with recoveries";
  }
}

TEST(recovery_soak,
     a_process_through_300_recoveries_keeps_descriptors_mappings_threads_and_memory_bounded) {
  watchdog guard(kWallLimit + 90s, "recovery soak");
  soak(soak_target(), "P = the test process");
}

#ifndef SMISK_SOAK_LONG

TEST(recovery_soak, the_same_under_ulimit_n_256) {
  // A server started with a small descriptor limit (`ulimit -n 256`, some container runtimes'
  // default soft limit): a leak of descriptors per recovery makes it fail to open the next
  // environment long before 300 recoveries. P is a child that lowers its limit first; its own
  // children are the ones killed.
  watchdog guard(kWallLimit + 90s, "recovery soak under ulimit -n 256");
  const std::uint64_t target = soak_target();
  const child_status st = run_child(
      [target] {
        struct rlimit lim {};
        lim.rlim_cur = lim.rlim_max = 256;
        ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0) << std::strerror(errno);
        soak(target, "P = a child with RLIMIT_NOFILE 256");
      },
      std::chrono::duration_cast<std::chrono::milliseconds>(kWallLimit + 60s));
  EXPECT_TRUE(all_ok(st)) << "the process with 256 descriptors did not reach " << target
                          << " recoveries with its checks passed (see its output above)";
}

#endif  // SMISK_SOAK_LONG

}  // namespace
