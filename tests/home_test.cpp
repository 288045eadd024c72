// The default home: with default-constructed options, every process of this program and user
// shares one private directory on tmpfs (/dev/shm), which goes away with the last process.
//
// Only this file uses default options; ctest runs its cases one at a time (they all share the
// program's default home).
#include <errno.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;

std::string user_name() {
  const passwd* pw = ::getpwuid(::geteuid());
  return pw != nullptr ? pw->pw_name : std::to_string(::geteuid());
}

std::string program_name() { return program_invocation_short_name; }

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Where the default home should be: /dev/shm when it exists, else $TMPDIR or /tmp.
std::string expected_parent() {
  if (is_directory("/dev/shm")) return "/dev/shm";
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

// The entries of the parent directory that are named after this program and user. The program
// name may be cut to the 15 characters the kernel keeps for it (/proc/self/comm).
std::vector<std::string> candidate_homes() {
  std::vector<std::string> out;
  const std::string program = program_name();
  const std::string user = user_name();
  for (const auto& name : list_dir(expected_parent())) {
    if ((contains(name, program) || contains(name, program.substr(0, 15))) && contains(name, user))
      out.push_back(expected_parent() + "/" + name);
  }
  return out;
}

// The one default home that exists now, or "" (with a test failure) if there is not exactly one.
std::string find_default_home() {
  auto homes = candidate_homes();
  if (homes.size() != 1) {
    ADD_FAILURE() << "expected exactly one directory in " << expected_parent()
                  << " whose name contains the program name '" << program_name()
                  << "' and the user '" << user_name() << "'; found " << homes.size()
                  << "; the directory holds " << describe_dir(expected_parent());
    return "";
  }
  return homes.front();
}

TEST(default_home, is_a_private_directory_on_tmpfs_named_after_program_and_user) {
  int_dict d;
  d.set("x", 1);
  const std::string home = find_default_home();
  ASSERT_NE(home, "");
  auto st = lstat_path(home);
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(S_ISDIR(st->st_mode)) << home << " is not a directory";
  EXPECT_EQ(st->st_mode & 07777, 0700u) << home << " is not private (mode 0700)";
  EXPECT_EQ(st->st_uid, ::geteuid()) << home << " is not owned by the user";
  EXPECT_EQ(d.get("x"), 1);
}

TEST(default_home, is_removed_after_the_last_handle_closes) {
  std::string home;
  {
    int_dict d;
    home = find_default_home();
    ASSERT_NE(home, "");
    {
      int_dict copy = d;
      int_dict other;  // a second, independent handle on the same default dict
      copy.increment("n");
      EXPECT_EQ(other.increment("n"), 2);
    }
    EXPECT_TRUE(is_directory(home)) << "removed while a handle was still open";
    EXPECT_EQ(d.get("n"), 2);
  }
  EXPECT_FALSE(path_exists(home)) << home << " remains: " << describe_dir(home);
  EXPECT_TRUE(candidate_homes().empty());
}

TEST(default_home, is_shared_by_processes_and_removed_with_the_last_one) {
  std::string home;
  signal_pipe child_wrote;
  signal_pipe child_may_exit;
  pid_t child;
  {
    int_dict d;
    home = find_default_home();
    ASSERT_NE(home, "");
    d.set("from_parent", 1);

    // A child opens the default dict on its own (not inherited) and sees the same data.
    child = fork_child([&] {
      int_dict own;
      EXPECT_EQ(own.get("from_parent"), 1);
      own.set("from_child", 2);
      child_wrote.send();
      EXPECT_TRUE(child_may_exit.wait());
      own.increment("from_child");
    });
    ASSERT_TRUE(child_wrote.wait());
    EXPECT_EQ(d.get("from_child"), 2);
  }
  // The parent closed; the child still holds the home.
  EXPECT_TRUE(is_directory(home)) << "removed while another process still used it";
  child_may_exit.send();
  // The child closes its handle when its body returns: it was the last user.
  ASSERT_TRUE(all_ok(wait_child(child)));
  EXPECT_FALSE(path_exists(home)) << home << " remains: " << describe_dir(home);
}

TEST(default_home, child_exiting_normally_removes_it) {
  ASSERT_TRUE(all_ok(run_child([&] {
    auto* leaked = new int_dict;  // still open at exit
    leaked->set("a", 1);
    EXPECT_EQ(find_default_home().empty(), false);
    exit_child_normally();
  })));
  EXPECT_TRUE(candidate_homes().empty())
      << "the default home remains after its only process exited: " << describe_dir("/dev/shm");
}

}  // namespace
