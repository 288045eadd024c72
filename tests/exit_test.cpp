// exit() while other threads are inside the dict.
//
// Reported failure: exit() closed every dict under the threads still using them, which then threw
// engine_error ("closed when the process began to exit"); uncaught in a thread, that is
// std::terminate and a core dump at every normal shutdown of a threaded server. Now exit() closes
// nothing: the library's threads stop, the log is written, the process leaves its homes (the last
// one out of a temporary home removes it), and the other threads go on working until the process
// ends.
#include <sys/mman.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using namespace std::chrono_literals;

using int_dict = ipc::shared_dict<std::string, std::int64_t>;

/// Acknowledged increments, shared with the parent (the child's memory goes with it).
struct shared_counts {
  std::atomic<std::int64_t> acked{0};
  std::atomic<int> threads_running{0};
};

shared_counts* map_counts() {
  void* p = ::mmap(nullptr, sizeof(shared_counts), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw_errno("mmap");
  return new (p) shared_counts{};
}

/// A child whose four threads increment in a loop (no try/catch: an exception would terminate
/// the process) while its main thread calls exit(0).
void child_exits_while_threads_work(const ipc::bsddb::options& opts, shared_counts* counts) {
  int_dict d(opts);
  for (int t = 0; t < 4; ++t) {
    std::thread([d, counts]() mutable {
      counts->threads_running.fetch_add(1);
      for (;;) {
        d.increment("n");
        counts->acked.fetch_add(1);
        (void)d.get("n");
      }
    }).detach();
  }
  while (counts->threads_running.load() < 4 || counts->acked.load() < 200)
    std::this_thread::sleep_for(1ms);
  exit_child_normally();  // exit(): atexit handlers and static destructors run meanwhile
}

TEST(exit, threads_inside_a_temporary_dict_at_exit_do_not_terminate_the_process) {
  temp_dir dir;
  ipc::bsddb::options opts;
  opts.homedir = dir.path() + "/home";
  opts.name = "exit";
  shared_counts* counts = map_counts();
  for (int round = 0; round < 5; ++round) {
    auto status = run_child([&] { child_exits_while_threads_work(opts, counts); }, 30s);
    EXPECT_TRUE(all_ok(status)) << "round " << round;
    // The child was the last process out: its temporary home is gone.
    EXPECT_FALSE(path_exists(opts.homedir)) << describe_dir(opts.homedir);
  }
}

TEST(exit, what_threads_acknowledged_before_exit_is_in_a_persistent_dict) {
  temp_dir dir;
  ipc::bsddb::options opts;
  opts.homedir = dir.path() + "/home";
  opts.name = "exit";
  opts.persistent = true;
  shared_counts* counts = map_counts();
  auto status = run_child([&] { child_exits_while_threads_work(opts, counts); }, 30s);
  ASSERT_TRUE(all_ok(status));
  int_dict d(opts);
  const std::int64_t acked = counts->acked.load();
  const std::int64_t stored = d.get("n").value_or(0);
  // Increments acknowledged before the process ended are all there; the ones in flight at _exit
  // may be there too (at most one per thread).
  EXPECT_GE(stored, acked);
  EXPECT_LE(stored, acked + 4);
}

// Reported failure (issue 16): four workers ending with _exit(0) right after heavy writing made
// the others recover in 6 of 8 runs (dead_mutex=1, recoveries=2): the workers' checkpoint
// threads were still inside libdb, flushing what the writes left, holding its mutexes. A
// process whose library threads are idle when it ends must cause no recovery.
TEST(exit, underscore_exit_after_heavy_writing_causes_no_recovery_in_the_others) {
  using str_dict = ipc::shared_dict<std::string, std::string>;
  temp_dir dir;
  ipc::bsddb::options opts;
  opts.homedir = dir.path() + "/home";
  opts.name = "work";
  auto counter_opts = opts;
  counter_opts.name = "counters";
  str_dict survivor(opts);
  int_dict counters(counter_opts);
  std::int64_t survivor_increments = 0;
  const auto before = ipc::bsddb::stats();
  const std::string value(1024, 'v');
  constexpr int kRounds = 20;
  constexpr int kWorkers = 4;
  for (int round = 0; round < kRounds; ++round) {
    auto pids = fork_children(kWorkers, [&](int index) {
      str_dict d(opts);
      int_dict c(counter_opts);
      // 1,500 values of 1 KB: some 3 MB of log, so a few checkpoints are asked for.
      for (int n = 0; n < 1500; ++n)
        d.set(std::to_string(round) + "/" + std::to_string(index) + "/" + std::to_string(n), value);
      c.increment("workers done");
      ::_exit(0);  // no atexit handlers, no destructors: as a prefork worker may end
    });
    // The survivor works meanwhile, and notices at once a mutex left held by a dead process.
    std::vector<pid_t> running = pids;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!running.empty()) {
      counters.increment("survivor");
      ++survivor_increments;
      for (auto it = running.begin(); it != running.end();) {
        int status = 0;
        if (::waitpid(*it, &status, WNOHANG) == *it) {
          EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "round " << round;
          it = running.erase(it);
        } else if (std::chrono::steady_clock::now() > deadline) {
          ADD_FAILURE() << "a worker of round " << round << " did not end";
          ::kill(*it, SIGKILL);
          ::waitpid(*it, &status, 0);
          it = running.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
  // failchk, which finds a dead process's thread that was inside libdb, runs at least every
  // 5 s: go on working past that.
  const auto until = std::chrono::steady_clock::now() + 6s;
  while (std::chrono::steady_clock::now() < until) {
    counters.increment("survivor");
    ++survivor_increments;
    std::this_thread::sleep_for(10ms);
  }
  const auto after = ipc::bsddb::stats();
  EXPECT_EQ(after.recoveries, before.recoveries);
  EXPECT_EQ(after.dead_mutex_owners, before.dead_mutex_owners);
  EXPECT_EQ(after.dead_process_checks, before.dead_process_checks);
  EXPECT_EQ(after.environments_opened, before.environments_opened);
  EXPECT_EQ(counters.get("workers done"), std::optional<std::int64_t>(kRounds * kWorkers));
  EXPECT_EQ(counters.get("survivor"), std::optional<std::int64_t>(survivor_increments));
  EXPECT_EQ(survivor.size(), std::size_t{kRounds} * kWorkers * 1500);
}

}  // namespace
