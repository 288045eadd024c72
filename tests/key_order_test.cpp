// btree dicts of integer keys iterate in numeric order (the keys are stored as decimal text,
// whose byte order is -5 1 10 100 2 9); a btree of integers made before that order existed
// keeps its byte order and stays usable.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

#include "raw_bdb.hpp"
#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;

enum class level : std::int16_t { low = -300, zero = 0, high = 12 };

ipc::bsddb::options btree(const std::string& home, const std::string& name = "ordered") {
  ipc::bsddb::options o;
  o.homedir = home;
  o.name = name;
  o.persistent = true;
  o.method = ipc::bsddb::access_method::btree;
  return o;
}

TEST(key_order, btree_of_signed_integers_iterates_in_numeric_order) {
  temp_dir dir;
  ipc::shared_dict<std::int64_t, int> d{btree(dir.file("home"))};
  constexpr std::int64_t lo = std::numeric_limits<std::int64_t>::min();
  constexpr std::int64_t hi = std::numeric_limits<std::int64_t>::max();
  for (std::int64_t k :
       {std::int64_t{-5}, std::int64_t{1}, std::int64_t{10}, std::int64_t{100}, std::int64_t{2},
        std::int64_t{9}, hi, lo, std::int64_t{0}, std::int64_t{-10}})
    d[k] = 1;
  const std::vector<std::int64_t> expected{lo, -10, -5, 0, 1, 2, 9, 10, 100, hi};
  EXPECT_EQ(d.keys(), expected);
  std::vector<std::int64_t> walked;
  for (const auto& item : d) walked.push_back(item.first);
  EXPECT_EQ(walked, expected);
  // Another process opening it sees (and keeps) the same order.
  EXPECT_TRUE(all_ok(run_child([&] {
    ipc::shared_dict<std::int64_t, int> other{btree(dir.file("home"))};
    other[3] = 1;
    std::vector<std::int64_t> with_three = expected;
    with_three.insert(with_three.begin() + 6, 3);
    EXPECT_EQ(other.keys(), with_three);
  })));
  EXPECT_EQ(d.size(), expected.size() + 1);
}

TEST(key_order, btree_of_unsigned_integers_and_enums_iterates_in_numeric_order) {
  temp_dir dir;
  ipc::shared_dict<std::uint64_t, int> u{btree(dir.file("home"), "unsigned")};
  constexpr std::uint64_t top = std::numeric_limits<std::uint64_t>::max();
  for (std::uint64_t k : {top, std::uint64_t{20}, std::uint64_t{3}, std::uint64_t{0}}) u[k] = 1;
  EXPECT_EQ(u.keys(), (std::vector<std::uint64_t>{0, 3, 20, top}));

  ipc::shared_dict<level, int> e{btree(dir.file("home"), "levels")};
  for (level k : {level::high, level::low, level::zero}) e[k] = 1;
  EXPECT_EQ(e.keys(), (std::vector<level>{level::low, level::zero, level::high}));
}

TEST(key_order, string_keys_and_hash_dicts_keep_byte_order) {
  temp_dir dir;
  ipc::shared_dict<std::string, int> s{btree(dir.file("home"), "strings")};
  for (const char* k : {"10", "9", "-5", "b", "a"}) s[k] = 1;
  EXPECT_EQ(s.keys(), (std::vector<std::string>{"-5", "10", "9", "a", "b"}));
}

TEST(key_order, a_btree_of_integers_made_before_the_numeric_order_keeps_byte_order) {
  temp_dir dir;
  const auto o = btree(dir.file("home"));
  {
    // What such a dict holds: integers as decimal text, in a tree of byte order.
    ipc::shared_dict<std::string, int> earlier{o};
    for (const char* k : {"-5", "1", "10", "100", "2", "9"}) earlier[k] = 1;
  }
  const std::string description = "smisk-ipc 1\nkey i32\nvalue i32\nmethod btree\n";
  EXPECT_TRUE(all_ok(run_child(
      [&] { ASSERT_EQ(raw_put(o.homedir, o.name, "format", description, "meta"), ""); })));
  ipc::shared_dict<std::int32_t, int> d{o};
  EXPECT_EQ(d.keys(), (std::vector<std::int32_t>{-5, 1, 10, 100, 2, 9}));
  // It stays usable: every key found, new ones placed in the same byte order.
  d[3] = 2;
  d[50] = 2;
  EXPECT_TRUE(d.erase(10));
  EXPECT_EQ(d.at(100), 1);
  EXPECT_EQ(d.at(3), 2);
  EXPECT_EQ(d.keys(), (std::vector<std::int32_t>{-5, 1, 100, 2, 3, 50, 9}));
  // And another process opens it the same way (its description was left as it was).
  EXPECT_TRUE(all_ok(run_child([&] {
    ipc::shared_dict<std::int32_t, int> other{o};
    EXPECT_EQ(other.at(50), 2);
    EXPECT_EQ(other.keys(), (std::vector<std::int32_t>{-5, 1, 100, 2, 3, 50, 9}));
  })));
  // Other types are still a mismatch.
  EXPECT_TRUE(all_ok(run_child(
      [&] { EXPECT_THROW((void)(ipc::shared_dict<std::int64_t, int>{o}), ipc::type_mismatch); })));
}

}  // namespace
