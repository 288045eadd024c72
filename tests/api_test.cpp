// The whole shared_dict API (tests/api_suite.hpp) on Berkeley DB (hash and btree) and on the
// std::map test backend, plus what is specific to Berkeley DB. Built as C++17 and as C++20.
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

#include "api_suite.hpp"
#include "map_backend.hpp"
#include "test_util.hpp"

namespace ipc = smisk::ipc;

namespace {

struct bsddb_hash {
  smisk_test::temp_dir dir;
  template <class K, class V>
  ipc::shared_dict<K, V> open(const std::string& name) {
    ipc::bsddb::options o;
    o.homedir = dir.path();
    o.name = name;
    o.cache_size = 4 << 20;
    return ipc::shared_dict<K, V>(o);
  }
};

struct bsddb_btree {
  smisk_test::temp_dir dir;
  template <class K, class V>
  ipc::bsddb::shared_dict<K, V> open(const std::string& name) {
    ipc::bsddb::options o;
    o.homedir = dir.path();
    o.name = name;
    o.method = ipc::bsddb::access_method::btree;
    o.cache_size = 4 << 20;
    return ipc::bsddb::shared_dict<K, V>(o);
  }
};

struct map_store {
  std::string prefix = "t" + std::to_string(counter()++) + ".";
  static int& counter() {
    static int n = 0;
    return n;
  }
  template <class K, class V>
  ipc::shared_dict<K, V, smisk_test::map_backend> open(const std::string& name) {
    return ipc::shared_dict<K, V, smisk_test::map_backend>({prefix + name});
  }
};

using stores = ::testing::Types<bsddb_hash, bsddb_btree, map_store>;

}  // namespace

namespace api_suite {
INSTANTIATE_TYPED_TEST_SUITE_P(all, api, ::stores);
}

namespace {

// ---- optional backend capabilities ------------------------------------------------------------

TEST(backend_concept, an_optional_increment_is_used_for_64_bit_integers_only) {
  static_assert(ipc::backend_traits<smisk_test::map_backend>::can_increment);
  static_assert(!ipc::backend_traits<ipc::bsddb::backend>::can_increment);
  using map_dict = ipc::shared_dict<std::string, std::int64_t, smisk_test::map_backend>;
  map_dict d({"native.i64"});
  EXPECT_EQ(d.increment("a"), 1);
  EXPECT_EQ(d.increment("a", 5), 6);
  EXPECT_EQ(d.backend().native_increments(), 2);
  EXPECT_EQ(d.increment("a", -1), 5);  // a negative delta goes through modify()
  EXPECT_EQ(d.backend().native_increments(), 2);
  d.set("negative", -4);  // asked first, the engine's counter refuses it: modify() does it
  EXPECT_EQ(d.increment("negative", 5), 1);
  EXPECT_EQ(d.backend().native_increments(), 3);
  EXPECT_EQ(d.increment("negative"), 2);
  EXPECT_EQ(d.backend().native_increments(), 4);

  ipc::shared_dict<std::string, std::int32_t, smisk_test::map_backend> narrow({"native.i32"});
  ipc::shared_dict<std::string, double, smisk_test::map_backend> real({"native.f64"});
  EXPECT_EQ(narrow.increment("a", 3), 3);
  EXPECT_DOUBLE_EQ(real.increment("a", 0.5), 0.5);
  EXPECT_EQ(narrow.backend().native_increments(), 0);
  EXPECT_EQ(real.backend().native_increments(), 0);
}

// ---- Berkeley DB specifics ------------------------------------------------------------------

TEST(bsddb, btree_iterates_in_key_order) {
  bsddb_btree store;
  auto d = store.open<std::string, int>("ordered");
  for (const char* k : {"pear", "apple", "fig", "banana"}) d.set(k, 1);
  EXPECT_EQ(d.keys(), (std::vector<std::string>{"apple", "banana", "fig", "pear"}));
}

TEST(bsddb, filename_sets_home_and_name) {
  smisk_test::temp_dir dir;
  ipc::bsddb::options o;
  o.filename = dir.file("cache.db");
  o.persistent = true;
  {
    ipc::shared_dict<std::string, std::string> d(o);
    d.set("k", "v");
    EXPECT_EQ(d.backend().home(), dir.path());
  }
  EXPECT_TRUE(smisk_test::path_exists(dir.file("cache.db")));
  ipc::bsddb::options by_parts;
  by_parts.homedir = dir.path();
  by_parts.name = "cache.db";
  by_parts.persistent = true;
  ipc::shared_dict<std::string, std::string> again(by_parts);
  EXPECT_EQ(again.at("k"), "v");
}

TEST(bsddb, every_spelling_of_a_home_shares_one_engine) {
  smisk_test::temp_dir dir;
  ASSERT_EQ(::mkdir(dir.file("h").c_str(), 0700), 0);
  ASSERT_EQ(::symlink(dir.path().c_str(), dir.file("link").c_str()), 0);
  auto open = [](const std::string& home, const std::string& name) {
    ipc::bsddb::options o;
    o.homedir = home;
    o.name = name;
    o.cache_size = 4 << 20;
    return ipc::shared_dict<std::string, int>(o);
  };
  auto d = open(dir.file("h"), "a");
  d.set("k", 1);
  DB_ENV* const engine = d.backend().env_handle();
  // The same home, spelled differently: the same engine, the same data.
  for (const std::string& home :
       {dir.path() + "//h", dir.path() + "/./h", dir.path() + "/h/", dir.file("link") + "/h"}) {
    auto again = open(home, "b");
    EXPECT_EQ(again.backend().env_handle(), engine) << home;
    EXPECT_EQ(open(home, "a").at("k"), 1) << home;
  }
  {
    struct cwd_guard {
      char old[4096] = {};
      cwd_guard() {
        if (::getcwd(old, sizeof old) == nullptr) old[0] = '\0';
      }
      ~cwd_guard() {
        if (old[0] != '\0' && ::chdir(old) != 0) std::abort();
      }
    } back;
    ASSERT_NE(back.old[0], '\0');
    ASSERT_EQ(::chdir(dir.path().c_str()), 0);
    auto relative = open("h", "c");
    EXPECT_EQ(relative.backend().env_handle(), engine);
  }
  // Another home is another engine.
  ASSERT_EQ(::mkdir(dir.file("other").c_str(), 0700), 0);
  EXPECT_NE(open(dir.file("other"), "a").backend().env_handle(), engine);
}

TEST(bsddb, mode_applies_to_the_files_created) {
  // With no umask in the way: the default 0600, and a mode no default would give.
  struct umask_guard {
    mode_t old = ::umask(0);
    ~umask_guard() { ::umask(old); }
  } no_umask;
  smisk_test::temp_dir dir;
  for (mode_t mode : {mode_t{0600}, mode_t{0604}}) {
    ipc::bsddb::options o;
    o.homedir = dir.file(mode == 0600 ? "default" : "other");
    o.name = "d";
    o.persistent = true;
    if (mode != 0600) o.mode = mode;
    ipc::shared_dict<std::string, int> d(o);
    d.set("k", 1);
    d.sync();
    // Every file of the home: the database, the regions, the log, the lock file, the manifest.
    const auto files = smisk_test::list_dir(o.homedir);
    EXPECT_GE(files.size(), 5u) << smisk_test::describe_dir(o.homedir);
    for (const auto& name : files) {
      struct stat st {};
      ASSERT_EQ(::stat((o.homedir + "/" + name).c_str(), &st), 0) << name;
      EXPECT_EQ(st.st_mode & 07777, mode) << o.homedir << "/" << name;
    }
  }
}

TEST(bsddb, cache_size_is_the_engine_cache) {
  for (std::uint32_t mib : {8u, 64u}) {
    smisk_test::temp_dir dir;
    ipc::bsddb::options o;
    o.homedir = dir.path();
    o.cache_size = std::size_t{mib} << 20;
    ipc::shared_dict<std::string, int> d(o);
    DB_ENV* env = d.backend().env_handle();
    u_int32_t gbytes = 0, bytes = 0;
    int ncache = 0;
    ASSERT_EQ(env->get_cachesize(env, &gbytes, &bytes, &ncache), 0);
    const std::uint64_t total = (std::uint64_t{gbytes} << 30) + bytes;
    // Berkeley DB adds its own overhead to small caches (up to 25%).
    EXPECT_GE(total, std::uint64_t{mib} << 20) << mib << " MiB";
    EXPECT_LE(total, (std::uint64_t{mib} << 20) * 3 / 2) << mib << " MiB";
  }
}

#if __cplusplus >= 202002L
TEST(bsddb, designated_initialisers_in_cxx20) {
  // Fields left out of a designated initialiser keep their defaults, without a
  // -Wmissing-field-initializers warning (the tests build with -Werror).
  smisk_test::temp_dir dir;
  ipc::shared_dict<std::string, int> d({.homedir = dir.path(), .persistent = true});
  EXPECT_EQ(d.increment("k"), 1);
  EXPECT_TRUE(smisk_test::path_exists(dir.file(program_invocation_short_name)));
}
#endif

TEST(bsddb, access_method_is_remembered) {
  bsddb_hash store;
  auto d = store.open<std::string, int>("h");
  d.set("k", 1);
  ipc::bsddb::options o;
  o.homedir = store.dir.path();
  o.name = "h";
  o.method = ipc::bsddb::access_method::btree;
  EXPECT_THROW((ipc::shared_dict<std::string, int>(o)), ipc::type_mismatch);
  EXPECT_EQ(d.at("k"), 1);
}

TEST(bsddb, temporary_and_persistent_dicts_do_not_share_a_home) {
  bsddb_hash store;
  auto d = store.open<std::string, int>("t");
  ipc::bsddb::options o;
  o.homedir = store.dir.path();
  o.name = "p";
  o.persistent = true;
  EXPECT_THROW((ipc::shared_dict<std::string, int>(o)), ipc::home_error);
}

TEST(bsddb, names_that_would_clash_with_engine_files_are_refused) {
  smisk_test::temp_dir dir;
  for (const char* bad : {"__db.001", "log.0000000001", "smisk-ipc.lock", "a/b", ".."}) {
    ipc::bsddb::options o;
    o.homedir = dir.path();
    o.name = bad;
    EXPECT_THROW((ipc::shared_dict<std::string, int>(o)), ipc::home_error) << bad;
  }
}

TEST(bsddb, stats_count_what_the_library_did) {
  bsddb_hash store;
  auto before = ipc::bsddb::stats();
  auto d = store.open<std::string, std::string>("s");
  // Checkpoints go by log volume (one per checkpoint_interval() of log, at most 16 MiB), taken by
  // the writer itself: 6,000 writes of 4,000 bytes write more, and the count is there when the
  // last write returns.
  const std::string value(4000, 'v');
  for (int i = 0; i < 6000; ++i) d.set("k" + std::to_string(i), value);
  const auto after = ipc::bsddb::stats();
  EXPECT_GE(after.environments_opened, before.environments_opened + 1);
  EXPECT_GE(after.checkpoints, before.checkpoints + 1);
}

}  // namespace
