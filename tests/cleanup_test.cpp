// Cleanup of a temporary dict in a directory the user gave: only the library's own files go.
//
// Reported failure: when the last process closed a temporary dict whose home also held the
// user's log.txt, log.txt was deleted (cleanup matched "log.*"). Now only exact names are removed:
// "log." and ten digits, "__db." and three digits, the databases the library created, its lock
// file and manifest.
#include <sys/stat.h>

#include <cstdint>
#include <string>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using namespace std::chrono_literals;

const std::vector<std::string> user_files = {"log.txt",    "log.1",     "log.00000000012",
                                             "__db.notes", "__db.1234", "notes.db"};

void make_user_files(const std::string& home) {
  ASSERT_EQ(::mkdir(home.c_str(), 0700), 0);
  for (const auto& f : user_files) write_file(home + "/" + f, "the user's " + f);
  ASSERT_EQ(::mkdir((home + "/subdir").c_str(), 0700), 0);
  write_file(home + "/subdir/log.0000000001", "the user's");
}

void expect_only_user_files_left(const std::string& home) {
  for (const auto& f : user_files) {
    EXPECT_TRUE(is_regular_file(home + "/" + f))
        << f << " was removed; left: " << describe_dir(home);
    if (is_regular_file(home + "/" + f)) {
      EXPECT_EQ(read_file(home + "/" + f), "the user's " + f);
    }
  }
  EXPECT_TRUE(is_directory(home + "/subdir"));
  EXPECT_TRUE(is_regular_file(home + "/subdir/log.0000000001"));
  EXPECT_EQ(list_dir(home).size(), user_files.size() + 1) << describe_dir(home);
}

ipc::bsddb::options options_in(const std::string& home) {
  ipc::bsddb::options o;
  o.homedir = home;
  o.name = "cache";
  return o;
}

TEST(cleanup, the_last_process_out_removes_only_the_library_files_of_a_user_directory) {
  temp_dir dir;
  const std::string home = dir.path() + "/app";
  make_user_files(home);
  {
    ipc::shared_dict<std::string, std::string> d(options_in(home));
    for (int i = 0; i < 2000; ++i) d.set("key" + std::to_string(i), std::string(200, 'x'));
    bool has_log = false;
    for (const auto& name : list_dir(home))
      if (name.size() == 14 && name.rfind("log.", 0) == 0) has_log = true;
    EXPECT_TRUE(has_log) << describe_dir(home);  // the library's own log files were there
  }
  expect_only_user_files_left(home);
}

TEST(cleanup, a_stale_home_is_cleaned_without_touching_the_user_files) {
  temp_dir dir;
  const std::string home = dir.path() + "/app";
  make_user_files(home);
  // A process that dies with the dict open leaves the library's files behind.
  signal_pipe ready;
  pid_t child = fork_child([&] {
    ipc::shared_dict<std::string, std::int64_t> d(options_in(home));
    d.set("k", 1);
    ready.send();
    ::pause();
  });
  ASSERT_TRUE(ready.receive(1, 30s).has_value());
  kill_child(child);
  {
    ipc::shared_dict<std::string, std::int64_t> d(options_in(home));
    EXPECT_FALSE(d.contains("k"));  // a temporary home left by dead processes starts clean
    EXPECT_EQ(ipc::bsddb::stats().stale_homes_cleaned, 1u);
  }
  expect_only_user_files_left(home);
}

}  // namespace
