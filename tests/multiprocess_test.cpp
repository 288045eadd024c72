// Many processes share one dict: no lost update, everyone sees everyone's keys, and a dict opened
// before fork() keeps working on both sides of it, whatever way the child ends.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;
using str_dict = ipc::shared_dict<std::string, std::string>;

// A temporary dict in a home that the library creates inside dir.
ipc::bsddb::options temp_options(const temp_dir& dir, const std::string& name = "dict") {
  ipc::bsddb::options o;
  o.homedir = dir.file("home");
  o.name = name;
  o.persistent = false;
  return o;
}

// Stores what increment() returned in one child, for the parent to check.
void save_values(const std::string& path, const std::vector<std::int64_t>& values) {
  std::string text;
  for (std::int64_t v : values) text += std::to_string(v) + "\n";
  write_file(path, text);
}

std::vector<std::int64_t> load_values(const std::string& path) {
  std::vector<std::int64_t> out;
  std::istringstream in(read_file(path));
  for (std::int64_t v; in >> v;) out.push_back(v);
  return out;
}

TEST(multiprocess, increments_from_8_processes_lose_nothing) {
  constexpr int kProcs = 8;
  constexpr int kIncrements = 5000;
  temp_dir dir;
  const auto opts = temp_options(dir);
  int_dict parent{opts};  // keeps the temporary dict alive between the children

  process_barrier start(kProcs);
  auto pids = fork_children(kProcs, [&](int index) {
    int_dict d{opts};  // each worker opens its own handle, as a prefork worker would
    ASSERT_TRUE(start.arrive_and_wait());
    std::vector<std::int64_t> seen;
    seen.reserve(kIncrements);
    for (int i = 0; i < kIncrements; ++i) seen.push_back(d.increment("counter"));
    save_values(dir.file("seen-" + std::to_string(index)), seen);
  });
  EXPECT_TRUE(start.release_when_all_arrived());
  ASSERT_TRUE(all_ok(wait_children(pids, 100s)));

  EXPECT_EQ(parent.get("counter"), std::optional<std::int64_t>(kProcs * kIncrements));
  EXPECT_EQ(parent.at("counter"), kProcs * kIncrements);

  // Every increment returned a distinct new value: together they are exactly 1..40000, and
  // each process saw its own values rising.
  std::vector<std::int64_t> all;
  for (int i = 0; i < kProcs; ++i) {
    auto seen = load_values(dir.file("seen-" + std::to_string(i)));
    ASSERT_EQ(seen.size(), static_cast<std::size_t>(kIncrements)) << "child " << i;
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end())) << "child " << i;
    all.insert(all.end(), seen.begin(), seen.end());
  }
  std::sort(all.begin(), all.end());
  std::vector<std::int64_t> expected(all.size());
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<std::int64_t>(i) + 1;
  EXPECT_TRUE(all == expected) << "the values returned by increment() are not exactly 1.."
                               << kProcs * kIncrements;
}

TEST(multiprocess, string_updates_from_8_processes_lose_nothing) {
  constexpr int kProcs = 8;
#if defined(__SANITIZE_ADDRESS__)
  // Under ASan 8 x 5000 updates of a string growing to 40 KB take minutes when the test shares
  // the machine with another; the sanitizer run looks for memory errors, not throughput.
  constexpr int kUpdates = 1000;
#else
  constexpr int kUpdates = 5000;
#endif
  temp_dir dir;
  str_dict d{temp_options(dir)};  // opened before fork: the children use the inherited handle

  process_barrier start(kProcs);
  auto pids = fork_children(kProcs, [&](int index) {
    const char letter = static_cast<char>('a' + index);
    ASSERT_TRUE(start.arrive_and_wait());
    for (int i = 0; i < kUpdates; ++i)
      d.update("log", [letter](std::optional<std::string> v) {
        std::string s = v.value_or("");
        s.push_back(letter);
        return s;
      });
  });
  EXPECT_TRUE(start.release_when_all_arrived());
  ASSERT_TRUE(all_ok(wait_children(pids, 240s)));

  const std::string log = d.get("log").value_or("");
  EXPECT_EQ(log.size(), static_cast<std::size_t>(kProcs * kUpdates));
  std::map<char, int> counts;
  for (char c : log) ++counts[c];
  for (int i = 0; i < kProcs; ++i) {
    const char letter = static_cast<char>('a' + i);
    EXPECT_EQ(counts[letter], kUpdates) << "appends of process " << i << " ('" << letter << "')";
  }
  EXPECT_EQ(counts.size(), static_cast<std::size_t>(kProcs)) << "unexpected characters in log";
}

TEST(multiprocess, every_process_sees_the_keys_of_all_others) {
  constexpr int kProcs = 16;
  constexpr int kKeys = 500;
  temp_dir dir;
  const auto opts = temp_options(dir);
  int_dict parent{opts};

  auto key = [](int proc, int k) { return "p" + std::to_string(proc) + "/k" + std::to_string(k); };
  auto value = [](int proc, int k) { return std::int64_t{proc} * 100000 + k; };

  process_barrier written(kProcs);
  auto pids = fork_children(kProcs, [&](int index) {
    int_dict d{opts};
    for (int k = 0; k < kKeys; ++k) d.set(key(index, k), value(index, k));
    ASSERT_TRUE(written.arrive_and_wait());  // every process has written all its keys
    int missing = 0;
    int wrong = 0;
    for (int p = 0; p < kProcs; ++p)
      for (int k = 0; k < kKeys; ++k) {
        std::optional<std::int64_t> v = d.get(key(p, k));
        if (!v)
          ++missing;
        else if (*v != value(p, k))
          ++wrong;
      }
    EXPECT_EQ(missing, 0) << "keys of other processes not seen by process " << index;
    EXPECT_EQ(wrong, 0) << "keys with a wrong value seen by process " << index;
    EXPECT_EQ(d.size(), static_cast<std::size_t>(kProcs * kKeys));
  });
  EXPECT_TRUE(written.release_when_all_arrived());
  ASSERT_TRUE(all_ok(wait_children(pids)));

  EXPECT_EQ(parent.size(), static_cast<std::size_t>(kProcs * kKeys));
  std::set<std::string> keys;
  for (const auto& k : parent.keys()) keys.insert(k);
  EXPECT_EQ(keys.size(), static_cast<std::size_t>(kProcs * kKeys));
  for (int p = 0; p < kProcs; ++p)
    for (int k = 0; k < kKeys; k += 97) EXPECT_EQ(parent.get(key(p, k)), value(p, k));
}

TEST(multiprocess, dict_opened_before_fork_works_in_child) {
  temp_dir dir;
  int_dict d{temp_options(dir)};
  str_dict s{temp_options(dir, "strings")};
  d.set("before", 7);
  s["greeting"] = "hello";

  auto status = run_child([&] {
    EXPECT_EQ(d.get("before"), 7);  // sees what the parent wrote before fork
    EXPECT_EQ(s.at("greeting"), "hello");
    for (int i = 0; i < 100; ++i) d.increment("from_child");
    int_dict copy = d;  // copies made in the child share the child's engine
    copy.increment("from_child", 5);
    s.set("child_says", "hi");
  });
  ASSERT_TRUE(all_ok(status));

  EXPECT_EQ(d.get("from_child"), 105);
  EXPECT_EQ(s.get("child_says"), "hi");
  EXPECT_EQ(d.increment("from_child"), 106);  // and the parent's handles still work
  EXPECT_EQ(d.get("before"), 7);
  s.set("greeting", "again");
  EXPECT_EQ(s.get("greeting"), "again");
}

TEST(multiprocess, parent_and_child_use_an_inherited_handle_at_the_same_time) {
  constexpr int kEach = 2000;
  temp_dir dir;
  int_dict d{temp_options(dir)};
  d.set("n", 0);

  signal_pipe go;
  pid_t child = fork_child([&] {
    ASSERT_TRUE(go.wait());
    for (int i = 0; i < kEach; ++i) d.increment("n");
  });
  go.send();
  for (int i = 0; i < kEach; ++i) d.increment("n");
  ASSERT_TRUE(all_ok(wait_child(child)));
  EXPECT_EQ(d.get("n"), 2 * kEach);
}

TEST(multiprocess, a_daemon_started_by_double_fork_keeps_the_temporary_dict_of_its_parent) {
  // The classic daemon start: the application opens and fills a temporary dict, forks, the
  // child calls setsid() and forks again, and everyone but the grandchild exits normally. The
  // grandchild, a member of the home from the moment of its fork, must find the dict whole (the
  // reported failure: the parent, the last member it knew of, removed the home at exit), and,
  // the last member out, removes it when it exits.
  temp_dir dir;
  const auto o = temp_options(dir);
  const std::string home = o.homedir;
  signal_pipe go;
  signal_pipe result;
  const pid_t app = fork_child([&] {
    int_dict d{o};
    for (int i = 0; i < 100; ++i) d.set("k" + std::to_string(i), i);
    std::fflush(nullptr);
    const pid_t first = ::fork();
    if (first == 0) {
      ::setsid();
      if (::fork() != 0) ::_exit(0);  // the first child ends at once
      // The daemon: waits until the application has exited, then uses the inherited dict.
      if (!go.receive(1, std::chrono::seconds(60))) ::_exit(1);
      bool whole = true;
      try {
        for (int i = 0; i < 100; ++i) whole = whole && d.get("k" + std::to_string(i)) == i;
        d.set("daemon", 1);
        whole = whole && d.get("daemon") == 1 && d.size() == 101;
      } catch (...) {
        whole = false;
      }
      result.send(whole ? 'Y' : 'N');
      std::exit(0);  // leaves the home: the last member out removes it
    }
    int st = 0;
    EXPECT_EQ(::waitpid(first, &st, 0), first);
    exit_child_normally();  // std::exit: atexit handlers leave the home
  });
  EXPECT_TRUE(all_ok({wait_child(app)})) << "the application process failed";
  EXPECT_TRUE(is_directory(home)) << "the home was removed while the daemon is a member";
  go.send();
  const auto answer = result.receive(1, std::chrono::seconds(60));
  ASSERT_TRUE(answer.has_value()) << "the daemon did not answer";
  EXPECT_EQ(*answer, "Y") << "the daemon found the dict gone or changed";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (is_directory(home) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(is_directory(home)) << "the last member out did not remove the temporary home";
}

TEST(multiprocess, parent_keeps_working_after_child_exits_cleanly) {
  temp_dir dir;
  int_dict d{temp_options(dir)};
  d.set("n", 1);

  // The child uses the inherited handle, then returns normally from its body (the test harness
  // leaves through _exit, so the child's handles are never closed).
  ASSERT_TRUE(all_ok(run_child([&] { EXPECT_EQ(d.increment("n"), 2); })));
  EXPECT_EQ(d.increment("n"), 3);

  // The child opens its own handle, destroys it, then leaves through std::exit.
  ASSERT_TRUE(all_ok(run_child([&] {
    {
      int_dict own{temp_options(dir)};
      EXPECT_EQ(own.increment("n"), 4);
    }
    exit_child_normally();
  })));
  EXPECT_EQ(d.increment("n"), 5);

  // The child leaves through std::exit while still holding handles (run atexit handlers).
  ASSERT_TRUE(all_ok(run_child([&] {
    auto* leaked = new int_dict(temp_options(dir));
    EXPECT_EQ(leaked->increment("n"), 6);
    EXPECT_EQ(d.increment("n"), 7);
    exit_child_normally();
  })));
  EXPECT_EQ(d.increment("n"), 8);
  EXPECT_EQ(d.get("n"), 8);

  // A later child still works, and so does a fresh handle in the parent.
  ASSERT_TRUE(all_ok(run_child([&] { EXPECT_EQ(d.increment("n"), 9); })));
  int_dict fresh{temp_options(dir)};
  EXPECT_EQ(fresh.increment("n"), 10);
}

TEST(multiprocess, parent_keeps_working_after_child_exits_with__exit) {
  temp_dir dir;
  int_dict d{temp_options(dir)};
  ASSERT_TRUE(all_ok(run_child([&] {
    int_dict own{temp_options(dir)};
    own.set("child", 1);
    d.increment("n");
    ::_exit(0);  // no destructor, no atexit handler runs
  })));
  watchdog guard(60s, "parent operations after the child's _exit");
  EXPECT_EQ(d.get("child"), 1);
  EXPECT_EQ(d.increment("n"), 2);
  d.set("after", 3);
  EXPECT_EQ(d.size(), 3u);
  ASSERT_TRUE(all_ok(run_child([&] { EXPECT_EQ(d.increment("n"), 3); })));
}

TEST(multiprocess, parent_keeps_working_after_idle_child_is_sigkilled) {
  temp_dir dir;
  int_dict d{temp_options(dir)};
  signal_pipe opened;
  pid_t child = fork_child([&] {
    int_dict own{temp_options(dir)};
    own.set("child", 1);
    d.increment("n");
    opened.send();
    for (;;) ::pause();
  });
  ASSERT_TRUE(opened.wait()) << "the child did not open the dict";
  EXPECT_TRUE(kill_child(child).killed_by(SIGKILL));

  watchdog guard(60s, "parent operations after SIGKILL of an idle child");
  EXPECT_EQ(d.get("child"), 1);
  EXPECT_EQ(d.increment("n"), 2);
  d.set("after", 3);
  EXPECT_EQ(d.size(), 3u);
  ASSERT_TRUE(all_ok(run_child([&] {
    int_dict own{temp_options(dir)};
    EXPECT_EQ(own.increment("n"), 3);
  })));
  EXPECT_EQ(d.get("n"), 3);
}

TEST(multiprocess, parent_keeps_working_after_busy_child_is_sigkilled_mid_write) {
  // The children are killed while they hammer one key, so now and then one dies holding a lock
  // or in the middle of a write. The others must notice and carry on within a bounded time,
  // with no lost or torn value.
  constexpr int kRounds = 6;
  temp_dir dir;
  int_dict d{temp_options(dir)};
  str_dict s{temp_options(dir, "strings")};
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    signal_pipe busy;
    pid_t child = fork_child([&] {
      // Even rounds use the inherited handles, odd rounds open their own.
      std::optional<int_dict> own_d;
      std::optional<str_dict> own_s;
      if (round % 2 == 1) {
        own_d.emplace(temp_options(dir));
        own_s.emplace(temp_options(dir, "strings"));
      }
      int_dict& dd = own_d ? *own_d : d;
      str_dict& ss = own_s ? *own_s : s;
      for (long i = 0;; ++i) {
        dd.increment("n");
        ss.update("text", [](std::optional<std::string> v) {
          std::string t = v.value_or("");
          t = t.size() >= 64 ? std::string(64, 'x') : t + "x";
          return t;
        });
        dd.set("k" + std::to_string(i % 50), i);
        if (i == 200) busy.send();
      }
    });
    ASSERT_TRUE(busy.wait()) << "the child did not get going";
    ::usleep(static_cast<useconds_t>(1000 + 3000 * round));
    EXPECT_TRUE(kill_child(child).killed_by(SIGKILL));

    watchdog guard(60s, "parent operations after SIGKILL of a busy child");
    const std::int64_t before = d.get("n").value_or(-1);
    EXPECT_GE(before, 200);
    for (int i = 1; i <= 100; ++i) ASSERT_EQ(d.increment("n"), before + i);
    const std::string text = s.get("text").value_or("?");
    EXPECT_EQ(text, std::string(text.size(), 'x')) << "torn string value";
    EXPECT_LE(text.size(), 64u);
    s.set("text", "");
    d.set("k0", -1);
    EXPECT_EQ(d.get("k0"), -1);
    EXPECT_GE(d.size(), 1u);
  }
  // A new process can still join and work.
  ASSERT_TRUE(all_ok(run_child([&] {
    int_dict own{temp_options(dir)};
    const std::int64_t n = own.at("n");
    EXPECT_EQ(own.increment("n"), n + 1);
  })));
}

}  // namespace
