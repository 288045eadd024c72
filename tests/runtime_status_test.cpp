// bsddb::runtime_status(): what the library set up process-wide, visible at run time
// (docs/embedding.md). On this project's platform (Linux, glibc, x86-64 or AArch64, Debian's
// libdb 5.3) both the robust-mutex patch of libdb and the fault guard must be active once a dict is
// open, and the detail must say something a person can read.
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;

TEST(runtime_status, says_whether_the_patch_and_the_fault_guard_are_active) {
  temp_dir home(is_directory("/dev/shm") ? "/dev/shm" : "/tmp");
  ipc::bsddb::options o;
  o.homedir = home.path();
  o.name = "dict";
  ipc::shared_dict<std::string, std::int64_t> d{o};
  d.set("k", 1);

  const ipc::bsddb::process_status status = ipc::bsddb::runtime_status();
  static_assert(std::is_same_v<decltype(status.robust_mutexes), bool>);
  static_assert(std::is_same_v<decltype(status.fault_guard), bool>);
  static_assert(std::is_same_v<decltype(status.detail), std::string>);
  std::printf("[ status  ] robust_mutexes=%d fault_guard=%d\n%s\n", status.robust_mutexes ? 1 : 0,
              status.fault_guard ? 1 : 0, status.detail.c_str());
  EXPECT_TRUE(status.robust_mutexes) << status.detail;
  EXPECT_TRUE(status.fault_guard) << status.detail;
  EXPECT_FALSE(status.detail.empty());
  EXPECT_EQ(d.get("k"), 1);
}

}  // namespace
