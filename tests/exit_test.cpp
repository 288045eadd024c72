// exit() while other threads are inside the dict.
//
// Reported failure: exit() closed every dict under the threads still using them, which then threw
// engine_error ("closed when the process began to exit"); uncaught in a thread, that is
// std::terminate and a core dump at every normal shutdown of a threaded server. Now exit() closes
// nothing: the library's threads stop, the log is written, the process leaves its homes (the last
// one out of a temporary home removes it), and the other threads go on working until the process
// ends.
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
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

}  // namespace
