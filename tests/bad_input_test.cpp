// Bad input gives a clear error or works: never a crash, never a loss of what was stored.
// Type mismatches, corrupt stored bytes, refused homes (symlink, regular file, foreign owner,
// unwritable), odd and huge keys and values.
#include <db.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <smisk/ipc.hpp>

#include "raw_bdb.hpp"
#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;
using str_dict = ipc::shared_dict<std::string, std::string>;

constexpr uid_t kNobody = 65534;

ipc::bsddb::options options_for(const std::string& homedir, bool persistent = false,
                                const std::string& name = "dict") {
  ipc::bsddb::options o;
  o.homedir = homedir;
  o.name = name;
  o.persistent = persistent;
  return o;
}

// ---------------------------------------------------------------------------
// Type mismatch

void expect_mismatches(const ipc::bsddb::options& o) {
  EXPECT_THROW((void)str_dict{o}, ipc::type_mismatch) << "<string, string>";
  EXPECT_THROW((void)(ipc::shared_dict<std::int32_t, std::int64_t>{o}), ipc::type_mismatch)
      << "<int32, int64>";
  EXPECT_THROW((void)(ipc::shared_dict<std::string, std::int32_t>{o}), ipc::type_mismatch)
      << "<string, int32>";
  EXPECT_THROW((void)(ipc::shared_dict<std::string, double>{o}), ipc::type_mismatch)
      << "<string, double>";
}

TEST(type_mismatch, temporary_dict_reopened_with_other_types) {
  temp_dir dir;
  const auto o = options_for(dir.file("home"));
  int_dict d{o};
  d.set("a", 1);
  d.set("b", 2);

  expect_mismatches(o);
  // In another process too, and it is an ipc::error.
  EXPECT_TRUE(all_ok(run_child([&] {
    try {
      str_dict wrong{o};
      ADD_FAILURE() << "opening <string,int64> data as <string,string> did not throw";
    } catch (const ipc::type_mismatch& e) {
      const ipc::error& base = e;
      EXPECT_NE(std::string(base.what()), "");
    }
  })));

  // Nothing was lost or changed, through the old handle and a new one.
  EXPECT_EQ(d.get("a"), 1);
  int_dict again{o};
  EXPECT_EQ(again.get("b"), 2);
  EXPECT_EQ(again.size(), 2u);
  EXPECT_EQ(again.increment("a"), 2);
}

TEST(type_mismatch, persistent_dict_reopened_with_other_types) {
  temp_dir dir;
  const auto o = options_for(dir.file("home"), true);
  { int_dict{o}.set("a", 41); }
  expect_mismatches(o);
  int_dict d{o};
  EXPECT_EQ(d.get("a"), 41);
  EXPECT_EQ(d.increment("a"), 42);
  EXPECT_EQ(d.size(), 1u);
}

TEST(type_mismatch, two_dicts_of_one_name_are_told_to_take_their_own_options_name) {
  // Two dicts of different types with the same options (the defaults, in a real program) are the
  // same dict, by smisk's semantics; the error must say how to get two.
  temp_dir dir;
  const auto o = options_for(dir.file("home"));
  int_dict counters{o};
  counters.set("hits", 1);
  try {
    str_dict sessions{o};
    FAIL() << "a second dict of other types under the same name opened";
  } catch (const ipc::type_mismatch& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("options.name"), std::string::npos) << what;
    EXPECT_NE(what.find("\"dict\""), std::string::npos) << "the name in use is not shown: " << what;
  }
  EXPECT_EQ(counters.get("hits"), 1);
}

enum class color : std::int32_t { red, green };
enum class fruit : std::int32_t { apple, pear };

TEST(type_mismatch, another_enum_with_the_same_underlying_type) {
  temp_dir dir;
  const auto o = options_for(dir.file("home"), true);
  ipc::shared_dict<std::string, color> colors{o};
  colors.set("sky", color::green);
  EXPECT_THROW((void)(ipc::shared_dict<std::string, fruit>{o}), ipc::type_mismatch);
  EXPECT_THROW((void)(ipc::shared_dict<std::string, std::int32_t>{o}), ipc::type_mismatch);
  EXPECT_EQ(colors.get("sky"), color::green);
  EXPECT_EQ((ipc::shared_dict<std::string, color>{o}.get("sky")), color::green);
}

TEST(type_mismatch, an_enum_dict_described_before_enum_tags_named_the_enum_still_opens) {
  temp_dir dir;
  const auto o = options_for(dir.file("home"), true);
  { ipc::shared_dict<std::string, color>{o}.set("sky", color::green); }
  // The description as smisk-ipc wrote it before enum tags named the enum.
  const std::string earlier = "smisk-ipc 1\nkey str\nvalue enum:i32\nmethod hash\n";
  EXPECT_TRUE(all_ok(
      run_child([&] { ASSERT_EQ(raw_put(o.homedir, o.name, "format", earlier, "meta"), ""); })));
  ipc::shared_dict<std::string, color> again{o};  // opens, and upgrades the description
  EXPECT_EQ(again.get("sky"), color::green);
  EXPECT_TRUE(all_ok(run_child([&] {
    EXPECT_THROW((void)(ipc::shared_dict<std::string, fruit>{o}), ipc::type_mismatch);
    EXPECT_EQ((ipc::shared_dict<std::string, color>{o}.get("sky")), color::green);
  })));
}

// ---------------------------------------------------------------------------
// Corrupt stored bytes

// raw_put in a child process; fails the test if it did not work.
void corrupt(const std::string& home, const std::string& name, const std::string& key,
             const std::string& bytes) {
  EXPECT_TRUE(all_ok(run_child([&] {
    const std::string failure = raw_put(home, name, key, bytes);
    ASSERT_EQ(failure, "") << "could not write raw bytes into " << home << "/" << name;
  })));
}

TEST(corrupt_bytes, undecodable_values_throw_codec_error_and_other_keys_stay_readable) {
  temp_dir dir;
  const std::string home = dir.file("home");
  int_dict d{options_for(home)};
  d.set("good", 1);
  d.set("bad", 2);
  d.set("other", 3);

  const std::vector<std::string> garbage = {
      "12abc", "", "abc", "1.5", " 12", "12 ", "99999999999999999999999", std::string("1\0", 2)};
  for (const auto& bytes : garbage) {
    SCOPED_TRACE("stored bytes \"" + bytes + "\"");
    corrupt(home, "dict", "bad", bytes);
    if (HasFatalFailure()) return;
    EXPECT_THROW((void)d.get("bad"), ipc::codec_error);
    EXPECT_THROW((void)d.at("bad"), ipc::codec_error);
    EXPECT_THROW((void)d.get("bad", 0), ipc::codec_error);
    EXPECT_THROW((void)d.increment("bad"), ipc::codec_error);
    EXPECT_THROW((void)d.values(), ipc::codec_error);
    EXPECT_THROW((void)d.items(), ipc::codec_error);
    EXPECT_TRUE(d.contains("bad"));
    // A failed increment changed nothing: the bytes are still the corrupt ones.
    EXPECT_THROW((void)d.get("bad"), ipc::codec_error);
    // The other keys are fine, and keys() only needs the keys.
    EXPECT_EQ(d.get("good"), 1);
    EXPECT_EQ(d.at("other"), 3);
    EXPECT_EQ(d.increment("good"), 2);
    EXPECT_EQ(d.keys().size(), 3u);
    d.set("good", 1);
  }
  // Overwriting repairs the key.
  d.set("bad", 5);
  EXPECT_EQ(d.get("bad"), 5);
  EXPECT_EQ(d.values().size(), 3u);

  // codec_error is an ipc::error.
  corrupt(home, "dict", "bad", "not a number");
  try {
    (void)d.at("bad");
    ADD_FAILURE() << "no error for corrupt bytes";
  } catch (const ipc::error& e) {
    EXPECT_NE(dynamic_cast<const ipc::codec_error*>(&e), nullptr) << e.what();
  }
}

TEST(corrupt_bytes, out_of_range_numbers_throw_codec_error) {
  temp_dir dir;
  const std::string home = dir.file("home");
  ipc::shared_dict<std::string, std::int32_t> small{options_for(home, false, "small")};
  ipc::shared_dict<std::string, std::uint8_t> tiny{options_for(home, false, "tiny")};
  ipc::shared_dict<std::string, double> real{options_for(home, false, "real")};
  small.set("x", 1);
  tiny.set("x", 1);
  real.set("x", 1.5);

  corrupt(home, "small", "x", "3000000000");
  corrupt(home, "tiny", "x", "256");
  corrupt(home, "tiny", "y", "-1");
  corrupt(home, "real", "x", "1.5.5");
  EXPECT_THROW((void)small.get("x"), ipc::codec_error);
  EXPECT_THROW((void)tiny.get("x"), ipc::codec_error);
  EXPECT_THROW((void)tiny.get("y"), ipc::codec_error);
  EXPECT_THROW((void)real.get("x"), ipc::codec_error);
}

TEST(corrupt_bytes, undecodable_key_throws_codec_error_on_enumeration) {
  temp_dir dir;
  const std::string home = dir.file("home");
  ipc::shared_dict<std::int32_t, std::string> d{options_for(home)};
  d.set(1, "one");
  d.set(-2, "minus two");
  corrupt(home, "dict", "x1", "garbage key");
  EXPECT_THROW((void)d.keys(), ipc::codec_error);
  EXPECT_THROW((void)d.items(), ipc::codec_error);
  EXPECT_EQ(d.get(1), "one");
  EXPECT_EQ(d.get(-2), "minus two");
  EXPECT_EQ(d.size(), 3u);  // counting needs no decoding
}

TEST(corrupt_bytes, foreign_file_in_place_of_the_database_is_refused_and_kept) {
  temp_dir dir;
  const std::string home = dir.file("mine");
  ASSERT_EQ(::mkdir(home.c_str(), 0700), 0);
  const std::string foreign = "this is not a Berkeley DB database\n";
  write_file(home + "/dict", foreign);
  EXPECT_THROW((void)int_dict{options_for(home, true)}, ipc::error);
  EXPECT_EQ(read_file(home + "/dict"), foreign);
}

// ---------------------------------------------------------------------------
// Refused homes

struct file_snapshot {
  mode_t mode;
  uid_t uid;
  gid_t gid;
};

file_snapshot snapshot(const std::string& path) {
  auto st = lstat_path(path);
  return st ? file_snapshot{st->st_mode, st->st_uid, st->st_gid} : file_snapshot{0, 0, 0};
}

void expect_same(const file_snapshot& a, const file_snapshot& b, const std::string& path) {
  EXPECT_EQ(a.mode, b.mode) << path << ": mode changed";
  EXPECT_EQ(a.uid, b.uid) << path << ": owner changed";
  EXPECT_EQ(a.gid, b.gid) << path << ": group changed";
}

// Opening with o throws home_error, for temporary and persistent dicts.
void expect_home_refused(ipc::bsddb::options o) {
  for (bool persistent : {false, true}) {
    o.persistent = persistent;
    EXPECT_THROW((void)int_dict{o}, ipc::home_error) << (persistent ? "persistent" : "temporary");
  }
}

TEST(refused_home, symlink_to_a_directory) {
  temp_dir dir;
  const std::string target = dir.file("target");
  const std::string link = dir.file("link");
  ASSERT_EQ(::mkdir(target.c_str(), 0700), 0);
  write_file(target + "/user.txt", "mine");
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  const auto before = snapshot(target);

  expect_home_refused(options_for(link));
  ipc::bsddb::options by_filename;
  by_filename.filename = link + "/db";
  expect_home_refused(by_filename);

  ASSERT_TRUE(is_symlink(link));
  std::vector<char> buf(4096);
  const ssize_t n = ::readlink(link.c_str(), buf.data(), buf.size());
  EXPECT_EQ(std::string(buf.data(), n > 0 ? static_cast<std::size_t>(n) : 0), target);
  EXPECT_EQ(list_dir(target), std::vector<std::string>{"user.txt"});
  EXPECT_EQ(read_file(target + "/user.txt"), "mine");
  expect_same(before, snapshot(target), target);
}

TEST(refused_home, dangling_symlink) {
  temp_dir dir;
  const std::string link = dir.file("link");
  ASSERT_EQ(::symlink(dir.file("nowhere").c_str(), link.c_str()), 0);
  expect_home_refused(options_for(link));
  EXPECT_TRUE(is_symlink(link));
  EXPECT_FALSE(path_exists(dir.file("nowhere"))) << "the symlink's target was created";
}

TEST(refused_home, regular_file) {
  temp_dir dir;
  const std::string file = dir.file("file");
  write_file(file, "precious\n");
  ASSERT_EQ(::chmod(file.c_str(), 0640), 0);
  const auto before = snapshot(file);

  expect_home_refused(options_for(file));
  ipc::bsddb::options by_filename;
  by_filename.filename = file + "/db";  // its directory is a regular file
  expect_home_refused(by_filename);

  EXPECT_TRUE(is_regular_file(file));
  EXPECT_EQ(read_file(file), "precious\n");
  expect_same(before, snapshot(file), file);
}

TEST(refused_home, directory_owned_by_another_user) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown a directory to another user";
  temp_dir dir;
  const std::string home = dir.file("foreign");
  ASSERT_EQ(::mkdir(home.c_str(), 0700), 0);
  write_file(home + "/their.txt", "theirs");
  ASSERT_EQ(::chown((home + "/their.txt").c_str(), kNobody, kNobody), 0);
  ASSERT_EQ(::chown(home.c_str(), kNobody, kNobody), 0);
  const auto before = snapshot(home);

  expect_home_refused(options_for(home));
  ipc::bsddb::options by_filename;
  by_filename.filename = home + "/db";
  expect_home_refused(by_filename);

  expect_same(before, snapshot(home), home);
  EXPECT_EQ(list_dir(home), std::vector<std::string>{"their.txt"});
  EXPECT_EQ(read_file(home + "/their.txt"), "theirs");
}

// A home whose parent directories do not exist: they are made (0700, only the missing ones),
// each refused for the same reasons as the home itself.

TEST(nested_home, missing_parent_directories_are_created_0700) {
  temp_dir dir;
  ASSERT_EQ(::mkdir(dir.file("x").c_str(), 0755), 0);  // exists: kept as it is
  const std::string home = dir.file("x/data/ipc");
  for (bool persistent : {false, true}) {
    SCOPED_TRACE(persistent ? "persistent" : "temporary");
    const auto o = options_for(home + (persistent ? "-p" : "-t"), persistent);
    int_dict d{o};
    d.set("k", 7);
    EXPECT_EQ(d.get("k"), 7);
    // Another process opens the same home (and finds the value there).
    EXPECT_TRUE(all_ok(run_child([&] { EXPECT_EQ(int_dict{o}.get("k"), 7); })));
  }
  EXPECT_EQ(snapshot(dir.file("x/data")).mode & 07777, 0700u);
  EXPECT_EQ(snapshot(dir.file("x")).mode & 07777, 0755u) << "an existing parent was changed";
  // A relative path too, from another working directory.
  char cwd_buf[4096];
  ASSERT_NE(::getcwd(cwd_buf, sizeof cwd_buf), nullptr);
  const std::string cwd = cwd_buf;
  ASSERT_EQ(::chdir(dir.path().c_str()), 0);
  {
    int_dict d{options_for("rel/a/b")};
    d.set("r", 1);
  }
  ASSERT_EQ(::chdir(cwd.c_str()), 0);
  EXPECT_TRUE(is_directory(dir.file("rel/a")));
}

TEST(nested_home, every_spelling_of_a_new_home_names_one_home) {
  // Homes are keyed by their spelling in a process: a new home written with "//", "." or ".."
  // in its missing part must get the same key as its plain spelling (else one process opens two
  // environments on one home), and ".." must not make directories the user did not name.
  temp_dir dir;
  const auto base = ipc::detail::canonical_home(dir.path());
  EXPECT_EQ(ipc::detail::canonical_home(dir.file("n1//h")), base + "/n1/h");
  EXPECT_EQ(ipc::detail::canonical_home(dir.file("n1/./h/")), base + "/n1/h");
  EXPECT_EQ(ipc::detail::canonical_home(dir.file("n2/../n3/h")), base + "/n3/h");
  EXPECT_EQ(ipc::detail::canonical_home(dir.file("n4/..")), base);
  const auto opened_before = ipc::bsddb::stats().environments_opened;
  {
    int_dict a{options_for(dir.file("n2/../n3/h"))};
    a.set("k", 1);
    int_dict b{options_for(dir.file("n3//h"))};
    EXPECT_EQ(b.get("k"), 1);
    EXPECT_EQ(ipc::bsddb::stats().environments_opened - opened_before, 1u)
        << "two environments on one home";
  }
  EXPECT_FALSE(path_exists(dir.file("n2"))) << "a directory named only before \"..\" was made";
}

TEST(nested_home, a_symlink_on_the_way_is_refused) {
  temp_dir dir;
  // A symlink where a directory would be made: nothing is made through it.
  ASSERT_EQ(::symlink(dir.file("elsewhere").c_str(), dir.file("x").c_str()), 0);
  expect_home_refused(options_for(dir.file("x/data/ipc")));
  EXPECT_TRUE(is_symlink(dir.file("x")));
  EXPECT_FALSE(path_exists(dir.file("elsewhere"))) << "a directory was made through the symlink";
  try {
    int_dict d{options_for(dir.file("x/data/ipc"))};
  } catch (const ipc::home_error& e) {
    EXPECT_NE(std::string(e.what()).find("symbolic link"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(dir.file("x")), std::string::npos) << e.what();
  }
}

TEST(nested_home, a_file_on_the_way_is_refused_and_kept) {
  temp_dir dir;
  write_file(dir.file("x"), "precious\n");
  const auto before = snapshot(dir.file("x"));
  expect_home_refused(options_for(dir.file("x/data/ipc")));
  EXPECT_EQ(read_file(dir.file("x")), "precious\n");
  expect_same(before, snapshot(dir.file("x")), dir.file("x"));
}

// Runs body as user `nobody` in a child (when root), or in a child as the current user.
child_status run_unprivileged(const std::function<void()>& body) {
  return run_child([&] {
    if (::geteuid() == 0) {
      ASSERT_EQ(::setgroups(0, nullptr), 0);
      ASSERT_EQ(::setgid(kNobody), 0);
      ASSERT_EQ(::setuid(kNobody), 0);
      ASSERT_NE(::geteuid(), 0u);
    }
    body();
  });
}

TEST(refused_home, unwritable_directory) {
  temp_dir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);  // so that nobody can reach inside
  const std::string locked = dir.file("locked");
  ASSERT_EQ(::mkdir(locked.c_str(), 0700), 0);
  write_file(locked + "/user.txt", "mine");
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown((locked + "/user.txt").c_str(), kNobody, kNobody), 0);
    ASSERT_EQ(::chown(locked.c_str(), kNobody, kNobody), 0);
  }
  ASSERT_EQ(::chmod(locked.c_str(), 0500), 0);

  auto status = run_unprivileged([&] {
    for (bool persistent : {false, true}) {
      SCOPED_TRACE(persistent ? "persistent" : "temporary");
      // The home itself cannot be written to...
      try {
        int_dict d{options_for(locked, persistent)};
        ADD_FAILURE() << "opened a dict in an unwritable home";
      } catch (const ipc::error& e) {
        EXPECT_NE(std::string(e.what()), "");
        std::printf("unwritable home: %s\n", e.what());
      }
      // ...nor can a home be created inside it.
      try {
        int_dict d{options_for(locked + "/sub", persistent)};
        ADD_FAILURE() << "opened a dict whose home cannot be created";
      } catch (const ipc::error& e) {
        EXPECT_NE(std::string(e.what()), "");
        std::printf("uncreatable home: %s\n", e.what());
      }
    }
  });
  EXPECT_TRUE(all_ok(status));
  EXPECT_EQ(list_dir(locked), std::vector<std::string>{"user.txt"});
  EXPECT_EQ(snapshot(locked).mode & 07777, 0500u);
}

// ---------------------------------------------------------------------------
// Odd and huge keys and values

TEST(odd_keys, empty_key_and_empty_value_round_trip) {
  temp_dir dir;
  str_dict d{options_for(dir.file("home"))};
  d.set("", "empty key");
  d.set("empty value", "");
  EXPECT_EQ(d.get(""), "empty key");
  EXPECT_TRUE(d.contains(""));
  EXPECT_EQ(d.get("empty value"), "");
  EXPECT_TRUE(d.contains("empty value"));
  EXPECT_EQ(d.size(), 2u);
  bool saw_empty = false;
  for (const auto& k : d.keys()) saw_empty |= k.empty();
  EXPECT_TRUE(saw_empty);
  EXPECT_EQ(d.pop(""), "empty key");
  EXPECT_FALSE(d.contains(""));

  int_dict counts{options_for(dir.file("home"), false, "counts")};
  EXPECT_EQ(counts.increment(""), 1);
  EXPECT_EQ(counts.at(""), 1);
}

TEST(odd_keys, binary_keys_do_not_collide) {
  temp_dir dir;
  str_dict d{options_for(dir.file("home"))};
  const std::string nul_key("a\0b", 3);
  const std::string high_key("\xff\xfe\x80", 3);
  d.set("a", "plain");
  d.set(nul_key, "with nul");
  d.set(std::string("a\0", 2), "trailing nul");
  d.set(high_key, std::string("\0\xff", 2));
  EXPECT_EQ(d.get("a"), "plain");
  EXPECT_EQ(d.get(nul_key), "with nul");
  EXPECT_EQ(d.get(std::string("a\0", 2)), "trailing nul");
  EXPECT_EQ(d.get(high_key), std::string("\0\xff", 2));
  EXPECT_EQ(d.size(), 4u);
}

// Stores huge_key -> huge_value with both access methods: it round-trips, or it throws an
// ipc::error and then the key is not (partly) there. Either way the other keys are intact.
void check_huge(const std::string& huge_key, const std::string& huge_value) {
  temp_dir dir;
  for (auto method : {ipc::bsddb::access_method::hash, ipc::bsddb::access_method::btree}) {
    SCOPED_TRACE(method == ipc::bsddb::access_method::hash ? "hash" : "btree");
    auto o = options_for(dir.file("home"), false,
                         method == ipc::bsddb::access_method::hash ? "hash" : "btree");
    o.method = method;
    str_dict d{o};
    d.set("before", "1");
    for (int i = 0; i < 50; ++i) d.set("small" + std::to_string(i), std::to_string(i));
    bool stored = false;
    try {
      d.set(huge_key, huge_value);
      stored = true;
    } catch (const ipc::error& e) {
      std::printf("refused a %zu-byte key with a %zu-byte value: %s\n", huge_key.size(),
                  huge_value.size(), e.what());
    }
    if (stored) {
      EXPECT_EQ(d.get(huge_key), huge_value);
      EXPECT_TRUE(d.contains(huge_key));
      EXPECT_EQ(d.size(), 52u);
      d.set(huge_key, huge_value + "!");  // overwrite in place
      EXPECT_EQ(d.get(huge_key).value_or("").size(), huge_value.size() + 1);
      EXPECT_TRUE(d.erase(huge_key));
    } else {
      try {
        EXPECT_FALSE(d.get(huge_key).has_value()) << "a refused value was (partly) stored";
      } catch (const ipc::error&) {
      }
    }
    EXPECT_FALSE(d.contains(huge_key));
    EXPECT_EQ(d.get("before"), "1");
    for (int i = 0; i < 50; ++i) EXPECT_EQ(d.get("small" + std::to_string(i)), std::to_string(i));
    d.set("after", "2");
    EXPECT_EQ(d.get("after"), "2");
    EXPECT_EQ(d.size(), 52u);
  }
}

TEST(odd_keys, one_megabyte_key_and_value) {
  std::string key(1 << 20, 'k');
  std::string value(1 << 20, '\0');
  for (std::size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 7 + 3);
  key.back() = 'K';
  check_huge(key, value);
}

// Berkeley DB's sizes are 32-bit. The bytes are a view of 4 GiB + 1 of address space that is never
// touched (MAP_NORESERVE): the size alone must be refused, before libdb reads any of it.
class over_4_gib {
 public:
  over_4_gib() {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) bytes_ = static_cast<const char*>(p);
  }
  ~over_4_gib() {
    if (bytes_) ::munmap(const_cast<char*>(bytes_), size);
  }
  over_4_gib(const over_4_gib&) = delete;
  over_4_gib& operator=(const over_4_gib&) = delete;
  [[nodiscard]] std::string_view view() const { return {bytes_, size}; }
  [[nodiscard]] bool mapped() const { return bytes_ != nullptr; }

  static constexpr std::size_t size = (std::size_t{1} << 32) + 1;

 private:
  const char* bytes_ = nullptr;
};

TEST(odd_keys, a_value_or_key_over_4_gib_is_a_size_error_and_changes_nothing) {
  over_4_gib huge;
  ASSERT_TRUE(huge.mapped()) << "mmap of 4 GiB of address space: " << std::strerror(errno);
  temp_dir dir;
  str_dict d{options_for(dir.file("home"))};
  d.set("k", "kept");
  // Before: stored as its size modulo 4 GiB (one byte), the old value lost.
  EXPECT_THROW(d.backend().put("k", huge.view()), ipc::size_error);
  EXPECT_THROW((void)d.backend().add("new", huge.view()), ipc::size_error);
  EXPECT_THROW(d.backend().put(huge.view(), "v"), ipc::size_error);
  EXPECT_THROW((void)d.backend().exists(huge.view()), ipc::size_error);
  EXPECT_EQ(d.get("k"), std::optional<std::string>("kept"));
  EXPECT_FALSE(d.contains("new"));
  EXPECT_EQ(d.size(), 1u);
}

TEST(odd_keys, one_megabyte_value_under_a_small_key) {
  std::string value(1 << 20, 'v');
  value[12345] = '\0';
  check_huge("small key", value);
}

}  // namespace
