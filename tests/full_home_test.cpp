// A home whose filesystem fills up (issue 16), as in a container with Docker's 64 MB /dev/shm:
// only the write that does not fit fails (size_error), reads keep working in every process,
// nothing acknowledged is lost, and once space is freed (erase, clear) writes work again without
// any process restarting. The tests mount a 64 MB tmpfs of their own and skip, saying so, where
// mounting is not allowed (not root, or no CAP_SYS_ADMIN in a container).
#include <sys/mount.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using str_dict = ipc::shared_dict<std::string, std::string>;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;

/// A tmpfs of `megabytes` mounted on a fresh directory, unmounted (lazily, so that a process
/// that still has a file open does not keep it) when the object goes.
class small_tmpfs {
 public:
  explicit small_tmpfs(unsigned megabytes) {
    const std::string options = "size=" + std::to_string(megabytes) + "m,mode=0700";
    if (::mount("tmpfs", dir_.path().c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) == 0)
      mounted_ = true;
    else
      why_not_ = std::string("cannot mount a tmpfs here (") + std::strerror(errno) +
                 "): the test needs root or CAP_SYS_ADMIN";
  }
  ~small_tmpfs() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  small_tmpfs(const small_tmpfs&) = delete;
  small_tmpfs& operator=(const small_tmpfs&) = delete;

  [[nodiscard]] bool mounted() const { return mounted_; }
  [[nodiscard]] const std::string& why_not() const { return why_not_; }
  [[nodiscard]] std::string file(const std::string& name) const { return dir_.file(name); }
  [[nodiscard]] std::uint64_t free_bytes() const {
    struct statvfs st {};
    if (::statvfs(dir_.path().c_str(), &st) != 0) return 0;
    return std::uint64_t{st.f_bavail} * st.f_frsize;
  }

 private:
  temp_dir dir_;
  bool mounted_ = false;
  std::string why_not_;
};

ipc::bsddb::options options_in(const small_tmpfs& fs) {
  ipc::bsddb::options o;
  o.homedir = fs.file("home");
  o.name = "cache";
  return o;
}

std::string key_of(int writer, int n) {
  return "w" + std::to_string(writer) + "-" + std::to_string(n);
}

/// A value of 1 KB that says which key it belongs to.
std::string value_of(const std::string& key) {
  std::string v = key + ":";
  while (v.size() < 1024) v += v;
  v.resize(1024);
  return v;
}

/// Writes 1 KB values under fresh keys until the home is full (20 writes in a row refused, 10 ms
/// apart: a refusal while another process's checkpoint is about to remove log files is not a
/// full home); @returns the keys acknowledged (the refused ones are not). Every failure must be
/// size_error, and its message must say what to do.
std::vector<int> fill_until_full(str_dict& d, int writer) {
  std::vector<int> acknowledged;
  for (int n = 0, refused_in_a_row = 0; refused_in_a_row < 20; ++n) {
    const std::string k = key_of(writer, n);
    try {
      d.set(k, value_of(k));
      acknowledged.push_back(n);
      refused_in_a_row = 0;
    } catch (const ipc::size_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("is full"), std::string::npos) << what;
      EXPECT_NE(what.find("--shm-size"), std::string::npos) << what;
      ++refused_in_a_row;
      std::this_thread::sleep_for(10ms);
    }
  }
  return acknowledged;
}

/// Every acknowledged write of `writer` (the key numbers in `keys`) holds its value.
::testing::AssertionResult all_present(const str_dict& d, int writer,
                                       const std::vector<int>& keys) {
  for (int n : keys) {
    const std::string k = key_of(writer, n);
    const auto v = d.get(k);
    if (!v) return ::testing::AssertionFailure() << k << " is missing (of " << keys.size() << ")";
    if (*v != value_of(k)) return ::testing::AssertionFailure() << k << " has a wrong value";
  }
  return ::testing::AssertionSuccess();
}

std::vector<int> first_keys(int count) {
  std::vector<int> keys(static_cast<std::size_t>(count));
  for (int n = 0; n < count; ++n) keys[static_cast<std::size_t>(n)] = n;
  return keys;
}

void save_keys(const std::string& path, const std::vector<int>& keys) {
  std::string text;
  for (int n : keys) text += std::to_string(n) + "\n";
  write_file(path, text);
}

std::vector<int> load_keys(const std::string& path) {
  std::vector<int> keys;
  std::istringstream in(read_file(path));
  for (int n; in >> n;) keys.push_back(n);
  return keys;
}

TEST(full_home, fails_only_the_write_that_does_not_fit_and_writes_again_once_space_is_freed) {
  small_tmpfs fs(64);
  if (!fs.mounted()) GTEST_SKIP() << fs.why_not();
  constexpr int kWriters = 4;
  const auto opts = options_in(fs);
  str_dict parent{opts};  // keeps the temporary dict alive between the children

  // Four workers fill the home at once; a fifth only reads, all along, and must never fail.
  const std::string stop_reading = fs.file("stop");
  pid_t reader = fork_child([&] {
    str_dict d{opts};
    d.set("reader", "here");
    std::uint64_t reads = 0;
    while (!path_exists(stop_reading)) {
      ASSERT_EQ(d.get("reader"), std::optional<std::string>("here"));
      (void)d.contains(key_of(0, static_cast<int>(reads % 100)));
      ++reads;
    }
    EXPECT_GT(reads, 0u);
  });
  auto writers = fork_children(kWriters, [&](int index) {
    str_dict d{opts};
    const auto recoveries = ipc::bsddb::stats().recoveries;
    const auto acknowledged = fill_until_full(d, index);
    save_keys(fs.file("keys-" + std::to_string(index)), acknowledged);
    // The process whose writes were refused still reads everything it wrote, and the refusals
    // broke nothing (no recovery).
    EXPECT_TRUE(all_present(d, index, acknowledged));
    EXPECT_EQ(ipc::bsddb::stats().recoveries, recoveries);
  });
  ASSERT_TRUE(all_ok(wait_children(writers, 120s)));
  write_file(stop_reading, "");
  ASSERT_TRUE(all_ok(wait_child(reader, 60s)));

  // Refused because the home was full, not before: little is left of the 64 MB.
  EXPECT_LT(fs.free_bytes(), std::uint64_t{16} << 20);
  std::vector<std::vector<int>> keys;
  std::size_t total = 0;
  for (int i = 0; i < kWriters; ++i) {
    keys.push_back(load_keys(fs.file("keys-" + std::to_string(i))));
    total += keys.back().size();
    EXPECT_FALSE(keys.back().empty()) << "writer " << i;
    EXPECT_TRUE(all_present(parent, i, keys.back()));
  }
  // What the library keeps for itself (regions, logs, its reserve) leaves more than half of the
  // 64 MB to the database: 16,000 values of 1 KB at least (each takes about 1.8 KB of pages).
  std::printf("a 64 MB home took %zu values of 1 KB from 4 processes\n", total);
  EXPECT_GT(total, 16000u);
  EXPECT_EQ(parent.get("reader"), std::optional<std::string>("here"));

  // Space freed by erasing half of the entries: writes work again, in another process.
  for (int i = 0; i < kWriters / 2; ++i)
    for (int n : keys[static_cast<std::size_t>(i)]) ASSERT_TRUE(parent.erase(key_of(i, n)));
  pid_t again = fork_child([&] {
    str_dict d{opts};
    for (int n = 0; n < 5000; ++n) {
      const std::string k = key_of(100, n);
      d.set(k, value_of(k));
    }
    EXPECT_TRUE(all_present(d, 100, first_keys(5000)));
  });
  ASSERT_TRUE(all_ok(wait_child(again, 120s)));
  for (int i = kWriters / 2; i < kWriters; ++i)
    EXPECT_TRUE(all_present(parent, i, keys[static_cast<std::size_t>(i)]));
  EXPECT_TRUE(all_present(parent, 100, first_keys(5000)));

  // Space freed by clear(): the home takes most of it again (less than at first when the
  // home was too full for DB->truncate's log: the records were then erased in batches, and the
  // hash table keeps its size, see bsddb::backend::clear).
  parent.clear();
  EXPECT_EQ(parent.size(), 0u);
  const auto refilled = fill_until_full(parent, 200);
  EXPECT_GE(refilled.size(), total * 2 / 3)
      << "the cleared home took " << refilled.size() << " values, against " << total << " at first";
  EXPECT_TRUE(all_present(parent, 200, refilled));
}

TEST(full_home, counters_keep_counting_in_a_full_home) {
  small_tmpfs fs(64);
  if (!fs.mounted()) GTEST_SKIP() << fs.why_not();
  const auto opts = options_in(fs);
  str_dict cache{opts};
  auto counter_opts = opts;
  counter_opts.name = "counters";
  int_dict counters{counter_opts};
  counters.increment("hits");
  const auto acknowledged = fill_until_full(cache, 0);
  ASSERT_FALSE(acknowledged.empty());
  // An update that does not make its value longer needs no new pages and no credit: in a home
  // that refuses new values, counters still count, every one of them.
  std::int64_t expected = 1;
  for (int i = 0; i < 100; ++i) {
    counters.increment("hits");
    ++expected;
  }
  EXPECT_THROW(cache.set(key_of(0, 1 << 20), value_of("one more")), ipc::size_error);
  EXPECT_EQ(counters.get("hits"), std::optional<std::int64_t>(expected));
  EXPECT_TRUE(all_present(cache, 0, acknowledged));
}

// Erasing a large value logs all of it: in a full home the erase must be measured by the value's
// real size, else libdb meets ENOSPC itself and nothing can be erased any more.
TEST(full_home, a_large_value_is_erased_in_a_full_home_and_the_space_taken_again) {
  small_tmpfs fs(64);
  if (!fs.mounted()) GTEST_SKIP() << fs.why_not();
  const auto opts = options_in(fs);
  str_dict d{opts};
  const std::string big(std::size_t{11} << 20, 'B');
  d.set("big", big);
  const auto first = fill_until_full(d, 0);
  ASSERT_FALSE(first.empty());
  for (int n : first) {
    if (n < 6000) {
      ASSERT_TRUE(d.erase(key_of(0, n)));
    }
  }
  const auto second = fill_until_full(d, 1);
  const auto recoveries = ipc::bsddb::stats().recoveries;
  // Refused or done, never libdb's own ENOSPC (engine_error) and never a recovery.
  bool erased = false;
  int second_erased_below = 0;  // the keys of `second` erased to make room, if any
  for (int attempt = 0; attempt < 3 && !erased; ++attempt) {
    try {
      erased = d.erase("big");
    } catch (const ipc::size_error&) {
      // Not room for its log yet: erasing smaller entries first makes some.
      second_erased_below = 2000 * (attempt + 1);
      for (int n : second)
        if (n < second_erased_below) (void)d.erase(key_of(1, n));
    }
  }
  EXPECT_TRUE(erased);
  EXPECT_EQ(ipc::bsddb::stats().recoveries, recoveries);
  EXPECT_FALSE(d.contains("big"));
  // The 11 MB are taken again, in another process, by a value of the same kind (a hash table
  // grows its buckets at the end of its file; freed pages are reused for large values).
  pid_t again = fork_child([&] {
    str_dict c{opts};
    const std::string other(std::size_t{10} << 20, 'O');
    c.set("other", other);
    EXPECT_EQ(c.get("other"), std::optional<std::string>(other));
  });
  ASSERT_TRUE(all_ok(wait_child(again, 120s)));
  EXPECT_TRUE(d.contains("other"));
  std::vector<int> second_kept;
  for (int n : second)
    if (n >= second_erased_below) second_kept.push_back(n);
  EXPECT_TRUE(all_present(d, 1, second_kept));
  for (int n : first) {
    if (n >= 6000) {
      EXPECT_TRUE(d.contains(key_of(0, n))) << n;
    }
  }
}

}  // namespace
