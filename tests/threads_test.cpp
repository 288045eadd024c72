// Many threads in many processes: handles are safe to share between threads, and every
// single-key operation stays atomic when threads of several processes contend.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;
using str_dict = ipc::shared_dict<std::string, std::string>;

ipc::bsddb::options temp_options(const temp_dir& dir, const std::string& name) {
  ipc::bsddb::options o;
  o.homedir = dir.file("home");
  o.name = name;
  o.persistent = false;
  return o;
}

const std::vector<std::string> kCounterKeys = {"alpha", "beta", "gamma"};

TEST(threads, eight_threads_in_each_of_two_processes_lose_nothing) {
  constexpr int kProcs = 2;
  constexpr int kThreads = 8;
  constexpr int kIncrements = 900;  // per thread, spread over kCounterKeys
  constexpr int kAppends = 150;     // per thread, on one string
  temp_dir dir;
  const auto counters_opts = temp_options(dir, "counters");
  const auto log_opts = temp_options(dir, "log");
  int_dict counters{counters_opts};
  str_dict log{log_opts};

  process_barrier start(kProcs);
  auto pids = fork_children(kProcs, [&](int proc) {
    // Process 0 shares the handles it inherited; process 1 opens its own.
    std::optional<int_dict> own_counters;
    std::optional<str_dict> own_log;
    if (proc == 1) {
      own_counters.emplace(counters_opts);
      own_log.emplace(log_opts);
    }
    int_dict& c = own_counters ? *own_counters : counters;
    str_dict& l = own_log ? *own_log : log;
    ASSERT_TRUE(start.arrive_and_wait());

    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        try {
          const char mark = static_cast<char>('A' + proc * kThreads + t);
          for (int i = 0; i < kIncrements; ++i) {
            const std::string& key =
                kCounterKeys[static_cast<std::size_t>(i) % kCounterKeys.size()];
            if (i % 2 == 0)
              c.increment(key);
            else
              c.update(key, [](std::optional<std::int64_t> v) { return v.value_or(0) + 1; });
            if (i % (kIncrements / kAppends) == 0)
              l.update("text", [mark](std::optional<std::string> v) {
                std::string s = v.value_or("");
                s.push_back(mark);
                return s;
              });
          }
        } catch (const std::exception& e) {
          std::fprintf(stderr, "thread %d of process %d: %s\n", t, proc, e.what());
          ++errors;
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(errors.load(), 0);
  });
  EXPECT_TRUE(start.release_when_all_arrived());
  ASSERT_TRUE(all_ok(wait_children(pids, 240s)));

  const std::int64_t per_key = std::int64_t{kProcs} * kThreads * kIncrements /
                               static_cast<std::int64_t>(kCounterKeys.size());
  for (const auto& key : kCounterKeys) EXPECT_EQ(counters.get(key), per_key) << key;

  const std::string text = log.get("text").value_or("");
  EXPECT_EQ(text.size(), static_cast<std::size_t>(kProcs * kThreads * kAppends));
  std::map<char, int> marks;
  for (char ch : text) ++marks[ch];
  EXPECT_EQ(marks.size(), static_cast<std::size_t>(kProcs * kThreads));
  for (const auto& [mark, count] : marks) EXPECT_EQ(count, kAppends) << "mark " << mark;
}

TEST(threads, one_copied_handle_shared_by_many_threads) {
  constexpr int kThreads = 8;
  constexpr int kOps = 500;
  temp_dir dir;
  int_dict original{temp_options(dir, "dict")};
  int_dict shared = original;  // all threads use this one copy

  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        const std::string mine = "thread" + std::to_string(t);
        for (int i = 0; i < kOps; ++i) {
          shared.increment("shared");
          shared.set(mine, i);
          if (shared.get(mine) != i) ++errors;  // nobody else writes this key
          (void)shared.compare_exchange("cas", std::nullopt, 0);
          for (;;) {  // a CAS loop must not lose increments either
            std::int64_t cur = shared.get("cas").value_or(0);
            if (shared.compare_exchange("cas", cur, cur + 1)) break;
          }
          (void)shared.keys();  // enumeration while others write
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "thread %d: %s\n", t, e.what());
        ++errors;
      }
    });
  }
  // Copies made and dropped while the threads run.
  for (int i = 0; i < 200; ++i) {
    int_dict tmp = shared;
    tmp.increment("copies");
  }
  for (auto& th : threads) th.join();

  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(original.get("shared"), kThreads * kOps);
  EXPECT_EQ(original.get("cas"), kThreads * kOps);
  EXPECT_EQ(original.get("copies"), 200);
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(original.get("thread" + std::to_string(t)), kOps - 1);
}

TEST(threads, threads_open_use_and_close_dicts_of_one_home_at_once) {
  // The process-wide parts under concurrency: the registry (handles of two databases opened and
  // dropped by many threads at once), the engine shared by them, the watchdog, the checkpoints
  // that writes take (enough writes for several, one thread at a time), sync() and enumeration.
  constexpr int kThreads = 6;
  constexpr int kRounds = 40;
  constexpr int kOpsPerRound = 60;
  temp_dir dir;
  int_dict keep{temp_options(dir, "counters")};  // keeps the engine open throughout
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int round = 0; round < kRounds; ++round) {
          int_dict counters{temp_options(dir, "counters")};
          str_dict notes{temp_options(dir, "notes")};
          for (int i = 0; i < kOpsPerRound; ++i) {
            counters.increment("total");
            notes.set("t" + std::to_string(t) + ":" + std::to_string(i % 7),
                      "round " + std::to_string(round));
          }
          if (round % 8 == t % 8) notes.sync();
          if (round % 10 == 0) (void)notes.keys();
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "thread %d: %s\n", t, e.what());
        ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(keep.get("total"), kThreads * kRounds * kOpsPerRound);
  EXPECT_EQ(str_dict{temp_options(dir, "notes")}.size(), static_cast<std::size_t>(kThreads * 7));
}

TEST(threads, a_busy_key_is_retried_16_times_then_waited_for) {
  // A read-modify-write does not queue for a lock another transaction holds at first: it fails
  // at once and is retried (counted in lock_conflicts), 16 times, and then it waits in the lock
  // queue like any transaction (no more conflicts however long the holder takes).
  temp_dir dir;
  int_dict d{temp_options(dir, "dict")};
  d.set("k", 0);
  std::atomic<bool> inside{false};
  std::thread holder([&] {
    d.update("k", [&](std::optional<std::int64_t> v) {
      inside = true;  // the key's write lock is held while this runs
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      return v.value_or(0) + 100;
    });
  });
  while (!inside) std::this_thread::yield();
  const auto before = ipc::bsddb::stats();
  const std::int64_t result = d.increment("k");  // waits for the holder
  const auto after = ipc::bsddb::stats();
  holder.join();
  EXPECT_EQ(result, 101);
  EXPECT_EQ(d.get("k"), 101);
  EXPECT_EQ(after.lock_conflicts - before.lock_conflicts, 16u);
  EXPECT_EQ(after.deadlock_retries, before.deadlock_retries);
}

TEST(threads, fork_while_other_threads_use_the_dict) {
  // fork() from one thread while other threads of the parent are inside dict operations: the
  // child only has the forking thread, reopens its engine and works.
  temp_dir dir;
  int_dict d{temp_options(dir, "dict")};
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      try {
        while (!stop) d.increment("busy");
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        ++errors;
      }
    });
  }
  std::vector<pid_t> pids;
  for (int i = 0; i < 4; ++i) {
    pids.push_back(fork_child([&] {
      for (int k = 0; k < 100; ++k) d.increment("from_children");
    }));
    ::usleep(2000);
  }
  auto statuses = wait_children(pids, 60s);
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_TRUE(all_ok(statuses));
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(d.get("from_children"), 400);
}

}  // namespace
