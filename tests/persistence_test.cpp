// What outlives whom: persistent dicts survive every process (even SIGKILL), temporary dicts
// leave nothing behind once their last process is gone, and a temporary home left by crashed
// processes is cleaned up by the next one that opens it.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <iostream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;
using str_dict = ipc::shared_dict<std::string, std::string>;

ipc::bsddb::options options_for(const std::string& homedir, bool persistent,
                                const std::string& name = "dict") {
  ipc::bsddb::options o;
  o.homedir = homedir;
  o.name = name;
  o.persistent = persistent;
  return o;
}

void make_user_dir(const std::string& path) {
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0) << path;
  write_file(path + "/user.txt", "the user's own file\n");
}

// The user's directory holds nothing but the file the user put there, untouched.
void expect_only_user_file(const std::string& path) {
  ASSERT_TRUE(is_directory(path)) << path << " (a directory the user gave) was removed";
  EXPECT_EQ(list_dir(path), std::vector<std::string>{"user.txt"})
      << "the library left files in " << path;
  EXPECT_EQ(read_file(path + "/user.txt"), "the user's own file\n");
}

// ---------------------------------------------------------------------------
// persistent = true

TEST(persistence, values_written_by_an_exited_process_are_read_by_a_later_one) {
  temp_dir dir;
  const auto ints = options_for(dir.file("home"), true);
  const auto strs = options_for(dir.file("home"), true, "strings");

  // Writer 1 closes its handles and ends normally.
  ASSERT_TRUE(all_ok(run_child([&] {
    {
      int_dict d{ints};
      str_dict s{strs};
      d.set("answer", 42);
      d.increment("counter", 10);
      s["page"] = "<html>cached</html>";
      s.set_many(std::vector<std::pair<std::string, std::string>>{{"a", "1"}, {"b", "2"}});
    }
    exit_child_normally();
  })));
  // Writer 2 leaves through _exit with its handles still open.
  ASSERT_TRUE(all_ok(run_child([&] {
    int_dict d{ints};
    str_dict s{strs};
    EXPECT_EQ(d.increment("counter", 5), 15);
    s.set("from_second", "yes");
    ::_exit(0);
  })));

  // A later process, which never saw the dict before, reads it all.
  ASSERT_TRUE(all_ok(run_child([&] {
    int_dict d{ints};
    str_dict s{strs};
    EXPECT_EQ(d.get("answer"), 42);
    EXPECT_EQ(d.get("counter"), 15);
    EXPECT_EQ(s.get("page"), "<html>cached</html>");
    EXPECT_EQ(s.get("a"), "1");
    EXPECT_EQ(s.get("b"), "2");
    EXPECT_EQ(s.get("from_second"), "yes");
    EXPECT_EQ(d.size(), 2u);
    EXPECT_EQ(s.size(), 4u);
  })));

  // And so does this process.
  int_dict d{ints};
  str_dict s{strs};
  EXPECT_EQ(d.get("counter"), 15);
  EXPECT_EQ(s.get("page"), "<html>cached</html>");
  EXPECT_TRUE(path_exists(dir.file("home/dict")));
  EXPECT_TRUE(path_exists(dir.file("home/strings")));
}

TEST(persistence, filename_gives_home_and_name) {
  temp_dir dir;
  ipc::bsddb::options by_filename;
  by_filename.filename = dir.file("state.db");
  by_filename.persistent = true;

  ASSERT_TRUE(all_ok(run_child([&] {
    {
      int_dict d{by_filename};
      d.set("visits", 3);
    }
    exit_child_normally();
  })));
  EXPECT_TRUE(is_regular_file(dir.file("state.db")))
      << "expected the database file at the given filename; the directory holds "
      << describe_dir(dir.path());

  ASSERT_TRUE(all_ok(run_child([&] {
    int_dict d{by_filename};
    EXPECT_EQ(d.increment("visits"), 4);
  })));

  // The same dict, named through homedir + name.
  const auto by_parts = options_for(dir.path(), true, "state.db");
  int_dict d{by_parts};
  EXPECT_EQ(d.get("visits"), 4);
}

TEST(persistence, values_survive_sigkill_of_every_process) {
  constexpr int kProcs = 3;
  temp_dir dir;
  const auto opts = options_for(dir.file("home"), true);

  signal_pipe written;
  auto pids = fork_children(kProcs, [&](int index) {
    int_dict d{opts};
    d.set("proc" + std::to_string(index), index);
    d.increment("total");
    written.send();
    for (;;) ::pause();
  });
  const bool all_written = written.wait(kProcs);
  for (pid_t p : pids) EXPECT_TRUE(kill_child(p).killed_by(SIGKILL));
  ASSERT_TRUE(all_written) << "the children did not write";

  ASSERT_TRUE(all_ok(run_child([&] {
    int_dict d{opts};
    for (int i = 0; i < kProcs; ++i) EXPECT_EQ(d.get("proc" + std::to_string(i)), i);
    EXPECT_EQ(d.get("total"), kProcs);
    d.increment("total");
  })));
  int_dict d{opts};
  EXPECT_EQ(d.get("total"), kProcs + 1);
}

// stats().recoveries counts the recoveries that something broke made necessary; the
// DB_RECOVER of a first open (a new home, one closed cleanly, one whose processes were all
// killed) is routine and counted apart. Before, every first open counted as a recovery.
TEST(persistence, first_opens_are_not_counted_as_recoveries) {
  temp_dir dir;
  const auto opts = options_for(dir.file("home"), true);
  const auto first_open = [&](std::uint64_t recoveries) {
    EXPECT_TRUE(all_ok(run_child([&] {
      int_dict d{opts};
      d.increment("opens");
      EXPECT_EQ(ipc::bsddb::stats().first_open_recoveries, recoveries == 0 ? 1u : 0u);
      EXPECT_EQ(ipc::bsddb::stats().recoveries, recoveries);
    })));
  };
  first_open(0);  // a new home
  first_open(0);  // closed cleanly
  signal_pipe opened;
  auto pids = fork_children(2, [&](int) {
    int_dict d{opts};
    d.increment("opens");
    opened.send();
    for (;;) ::pause();
  });
  const bool both = opened.wait(2);
  for (pid_t p : pids) EXPECT_TRUE(kill_child(p).killed_by(SIGKILL));
  ASSERT_TRUE(both);
  first_open(0);  // every process killed: its log is replayed, as at any first open
  // A process that died while it created the environment ("opening" in the lock file): the next
  // one recovers because something broke.
  EXPECT_TRUE(all_ok(run_child([&] {
    ipc::detail::bdb::home_lease lease(ipc::detail::canonical_home(opts.homedir), true, 0600,
                                       false);
    lease.write_epoch(lease.read_epoch().epoch, true);
    ::_exit(0);
  })));
  first_open(1);
  int_dict d{opts};
  EXPECT_EQ(d.get("opens"), 6);
}

TEST(persistence, writes_that_returned_survive_sigkill_mid_stream) {
  // A writer reports each write after it returned; it is killed while writing. Every reported
  // write must be there, and the next processes must not hang.
  temp_dir dir;
  const auto opts = options_for(dir.file("home"), true);
  std::int64_t confirmed = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    signal_pipe done;
    pid_t writer = fork_child([&] {
      int_dict d{opts};
      for (std::int64_t i = confirmed;; ++i) {
        d.set("k" + std::to_string(i), i);
        d.set("last", i);
        done.send();
      }
    });
    ASSERT_TRUE(done.wait(100)) << "the writer did not get going";
    ::usleep(static_cast<useconds_t>(2000 * (round + 1)));
    EXPECT_TRUE(kill_child(writer).killed_by(SIGKILL));
    confirmed += 100 + static_cast<std::int64_t>(done.drain().size());

    ASSERT_TRUE(all_ok(run_child([&] {
      int_dict d{opts};
      for (std::int64_t i = 0; i < confirmed; ++i)
        ASSERT_EQ(d.get("k" + std::to_string(i)), i) << "a write that returned was lost";
      EXPECT_GE(d.get("last").value_or(-1), confirmed - 1);
    })));
  }
}

// ---------------------------------------------------------------------------
// persistent = false: nothing remains once the last process is gone

TEST(temporary, created_home_is_removed_when_last_handle_closes) {
  temp_dir dir;
  const std::string home = dir.file("home");
  const auto opts = options_for(home, false);
  ASSERT_FALSE(path_exists(home));
  {
    int_dict d{opts};
    EXPECT_TRUE(is_directory(home));
    {
      int_dict copy = d;
      int_dict other{opts};
      copy.set("a", 1);
      EXPECT_EQ(other.get("a"), 1);
    }
    EXPECT_TRUE(is_directory(home)) << "removed while a handle was still open";
    EXPECT_EQ(d.get("a"), 1);

    // A child that joins and leaves does not remove it either.
    ASSERT_TRUE(all_ok(run_child([&] {
      {
        int_dict own{opts};
        own.increment("a");
      }
      exit_child_normally();
    })));
    EXPECT_TRUE(is_directory(home)) << "removed by a child while the parent still uses it";
    EXPECT_EQ(d.get("a"), 2);
  }
  EXPECT_FALSE(path_exists(home)) << home << " remains: " << describe_dir(home);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{});
}

TEST(temporary, user_dir_is_emptied_except_user_files_when_last_handle_closes) {
  temp_dir dir;
  const std::string home = dir.file("mine");
  make_user_dir(home);
  {
    int_dict d{options_for(home, false)};
    str_dict s{options_for(home, false, "strings")};
    d.set("a", 1);
    s.set("b", "2");
  }
  expect_only_user_file(home);
}

TEST(temporary, created_home_is_removed_when_last_process_exits_holding_handles) {
  temp_dir dir;
  const std::string home = dir.file("home");
  const auto opts = options_for(home, false);
  signal_pipe opened;
  signal_pipe first_may_exit;
  signal_pipe second_may_exit;

  // Two processes hold the dict and end through std::exit without closing it.
  pid_t first = fork_child([&] {
    auto* leaked = new int_dict(opts);
    leaked->increment("n");
    opened.send();
    EXPECT_TRUE(first_may_exit.wait());
    exit_child_normally();
  });
  pid_t second = fork_child([&] {
    auto* leaked = new str_dict(options_for(home, false, "strings"));
    leaked->set("s", "x");
    opened.send();
    EXPECT_TRUE(second_may_exit.wait());
    exit_child_normally();
  });
  ASSERT_TRUE(opened.wait(2));

  first_may_exit.send();
  ASSERT_TRUE(all_ok(wait_child(first)));
  EXPECT_TRUE(is_directory(home)) << "removed while the second process still holds the dict";
  ASSERT_TRUE(all_ok(run_child([&] {
    str_dict s{options_for(home, false, "strings")};
    EXPECT_EQ(s.get("s"), "x");
  })));

  second_may_exit.send();
  ASSERT_TRUE(all_ok(wait_child(second)));
  EXPECT_FALSE(path_exists(home)) << home << " remains after the last process exited: "
                                  << describe_dir(home);
}

TEST(temporary, user_dir_is_emptied_when_last_process_exits_holding_handles) {
  temp_dir dir;
  const std::string home = dir.file("mine");
  make_user_dir(home);
  ASSERT_TRUE(all_ok(run_child([&] {
    auto* d = new int_dict(options_for(home, false));
    auto* s = new str_dict(options_for(home, false, "strings"));
    d->set("a", 1);
    s->set("b", "2");
    exit_child_normally();
  })));
  expect_only_user_file(home);
}

TEST(temporary, home_created_by_concurrent_first_opens_is_removed) {
  // Several processes open a new home at the same moment; whichever of them created the
  // directory, the last one out removes it.
  temp_dir dir;
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::string home = dir.file("home" + std::to_string(round));
    process_barrier start(3);
    auto pids = fork_children(3, [&](int) {
      ASSERT_TRUE(start.arrive_and_wait());
      {
        int_dict d{options_for(home, false)};
        d.increment("n");
      }
      exit_child_normally();
    });
    EXPECT_TRUE(start.release_when_all_arrived());
    ASSERT_TRUE(all_ok(wait_children(pids)));
    EXPECT_FALSE(path_exists(home)) << home << " remains: " << describe_dir(home);
  }
}

TEST(temporary, home_is_removed_by_a_forked_child_that_closes_last) {
  // The parent opens the dict before fork() and closes first; the child, which inherited the
  // parent's handles and opened its own, is the last process out and must remove the home.
  temp_dir dir;
  const std::string home = dir.file("home");
  const auto opts = options_for(home, false);
  signal_pipe child_opened;
  signal_pipe parent_closed;
  pid_t child;
  {
    int_dict d{opts};
    d.set("a", 1);
    child = fork_child([&] {
      {
        int_dict own{opts};
        EXPECT_EQ(d.increment("a"), 2);  // the inherited handle
        child_opened.send();
        EXPECT_TRUE(parent_closed.wait());
        EXPECT_EQ(own.increment("a"), 3);
      }
      exit_child_normally();
    });
    EXPECT_TRUE(child_opened.wait());
  }
  EXPECT_TRUE(is_directory(home)) << "removed while a child still used it";
  parent_closed.send();
  ASSERT_TRUE(all_ok(wait_child(child)));
  EXPECT_FALSE(path_exists(home)) << home << " remains after the last process (a child) exited: "
                                  << describe_dir(home);
}

TEST(temporary, home_is_removed_by_the_last_live_process_after_another_was_killed) {
  temp_dir dir;
  const std::string home = dir.file("home");
  const auto opts = options_for(home, false);
  {
    int_dict d{opts};
    signal_pipe opened;
    pid_t child = fork_child([&] {
      int_dict own{opts};
      own.increment("n");
      opened.send();
      for (;;) ::pause();
    });
    ASSERT_TRUE(opened.wait());
    EXPECT_TRUE(kill_child(child).killed_by(SIGKILL));
    watchdog guard(60s, "using the dict after a SIGKILLed process");
    EXPECT_EQ(d.increment("n"), 2);
  }
  EXPECT_FALSE(path_exists(home)) << home << " remains after the last live process closed: "
                                  << describe_dir(home);
}

// Children open a temporary dict in home, write, and are all SIGKILLed.
void crash_all_holders(const std::string& home, int procs) {
  signal_pipe written;
  auto pids = fork_children(procs, [&](int index) {
    int_dict d{options_for(home, false)};
    str_dict s{options_for(home, false, "strings")};
    d.set("crash" + std::to_string(index), index);
    s.set("before_crash", "stale");
    written.send();
    for (;;) ::pause();
  });
  const bool ok = written.wait(procs);
  for (pid_t p : pids) EXPECT_TRUE(kill_child(p).killed_by(SIGKILL));
  ASSERT_TRUE(ok) << "the children did not write";
  if (!path_exists(home) || (is_directory(home) && list_dir(home).empty())) {
    std::cout << "note: nothing was left in " << home
              << " after SIGKILL of every process, so the clean-up below is not exercised\n";
  }
}

TEST(temporary, home_left_by_sigkilled_processes_is_cleaned_by_next_process) {
  temp_dir dir;
  const std::string home = dir.file("home");
  crash_all_holders(home, 3);
  if (HasFatalFailure()) return;

  // A new process opens the same home: it starts clean and leaves nothing behind.
  ASSERT_TRUE(all_ok(run_child([&] {
    {
      int_dict d{options_for(home, false)};
      str_dict s{options_for(home, false, "strings")};
      EXPECT_EQ(d.get("crash0"), std::nullopt) << "a temporary dict kept a value across a crash";
      EXPECT_EQ(s.get("before_crash"), std::nullopt);
      EXPECT_EQ(d.size(), 0u);
      EXPECT_TRUE(s.empty());
      d.set("fresh", 1);
      EXPECT_EQ(d.get("fresh"), 1);
    }
    exit_child_normally();
  })));
  EXPECT_FALSE(path_exists(home)) << home << " remains: " << describe_dir(home);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{});
}

TEST(temporary, user_dir_left_by_sigkilled_processes_is_cleaned_by_next_process) {
  temp_dir dir;
  const std::string home = dir.file("mine");
  make_user_dir(home);
  crash_all_holders(home, 2);
  if (HasFatalFailure()) return;
  EXPECT_EQ(read_file(home + "/user.txt"), "the user's own file\n");

  // This time the next process is the test process itself.
  {
    watchdog guard(60s, "opening a home left by SIGKILLed processes");
    int_dict d{options_for(home, false)};
    EXPECT_EQ(d.get("crash1"), std::nullopt) << "a temporary dict kept a value across a crash";
    EXPECT_TRUE(d.empty());
    d.set("fresh", 1);
  }
  expect_only_user_file(home);
}

TEST(persistence, files_stay_after_the_last_handle_closes) {
  // The counterpart of the tests above: with persistent = true the files stay.
  temp_dir dir;
  const std::string home = dir.file("home");
  { int_dict{options_for(home, true)}.set("kept", 1); }
  EXPECT_TRUE(is_directory(home));
  EXPECT_TRUE(path_exists(home + "/dict"));
  int_dict d{options_for(home, true)};
  EXPECT_EQ(d.get("kept"), 1);
}

}  // namespace
