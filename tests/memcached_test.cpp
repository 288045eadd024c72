// What is specific to the memcached backend: key encoding, value sizes, type tags, clear() across
// processes, an unreachable server at construction, threads, fork and expiry. Against the
// fixture memcached, except where a test needs a server of its own.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <smisk/ipc/memcached.hpp>

#include "memcached_test_util.hpp"
#include "test_util.hpp"

namespace ipc = smisk::ipc;
namespace mc = smisk_test::mc;
using namespace std::chrono_literals;

namespace {

ipc::memcached::options options_for(const std::string& node, const std::string& what) {
  ipc::memcached::options o;
  o.nodes = {node};
  o.name = mc::unique_name(what);
  return o;
}

/// A valid memcached text-protocol key: 1..250 bytes, no spaces or control characters.
bool is_valid_memcached_key(const std::string& key) {
  if (key.empty() || key.size() > 250) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f;
  });
}

// ---- keys ----------------------------------------------------------------------------------

TEST(memcached_keys, sha256_matches_the_standard_vectors) {
  using ipc::detail::sha256;
  EXPECT_EQ(sha256::hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256::hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256::hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256::hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  sha256 incremental;  // the same bytes fed in odd-sized pieces
  const std::string million(1000000, 'a');
  for (std::size_t i = 0; i < million.size(); i += 7)
    incremental.update(std::string_view(million).substr(i, 7));
  const auto digest = incremental.finish();
  EXPECT_EQ(digest[0], 0xcd);
  EXPECT_EQ(digest[31], 0xd0);
}

TEST(memcached_keys, escaping_is_injective_and_valid) {
  using ipc::detail::mc::key_fragment;
  const std::string prefix = "ns";
  std::set<std::string> fragments;
  std::vector<std::string> raws = {"",
                                   "a",
                                   "a b",
                                   "a%20b",
                                   "%",
                                   "%25",
                                   "a\nb",
                                   "a\rb",
                                   ":",
                                   std::string(1, '\0'),
                                   std::string("\0\0", 2),
                                   "\x7f",
                                   "\xff",
                                   "%#",
                                   "%#00"};
  for (int c = 0; c < 256; ++c) raws.push_back(std::string(1, static_cast<char>(c)));
  std::sort(raws.begin(), raws.end());
  raws.erase(std::unique(raws.begin(), raws.end()), raws.end());
  for (const auto& raw : raws) {
    const std::string fragment = key_fragment(prefix, raw);
    EXPECT_TRUE(fragment.empty() || is_valid_memcached_key(fragment)) << fragment;
    EXPECT_TRUE(fragments.insert(fragment).second) << "collision for " << fragment;
  }
  // Readable keys stay readable.
  EXPECT_EQ(key_fragment(prefix, "/index.html?x=1"), "/index.html?x=1");
  EXPECT_EQ(key_fragment(prefix, "a b"), "a%20b");
  EXPECT_EQ(key_fragment(prefix, "100%"), "100%25");
}

TEST(memcached_keys, long_keys_become_digests_that_no_short_key_can_imitate) {
  using ipc::detail::mc::key_fragment;
  const std::string prefix = "ns";
  const std::string long_key(1024, 'k');
  const std::string digest = key_fragment(prefix, long_key);
  EXPECT_EQ(digest, "%#" + ipc::detail::sha256::hex(long_key));
  // A short key spelling out that digest is escaped ('%' -> %25), so it lands elsewhere.
  EXPECT_NE(key_fragment(prefix, digest), digest);
  // Keys that escape to more than fits are hashed too, whatever their raw length.
  const std::string binary(100, '\x01');  // 300 bytes once escaped
  EXPECT_EQ(key_fragment(prefix, binary).rfind("%#", 0), 0u);
}

TEST(memcached_keys, awkward_keys_round_trip_without_collision) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::string> d(options_for(node, "keys"));

  std::vector<std::string> keys;
  keys.push_back(std::string(1024, 'x'));                           // 1 KB
  keys.push_back("a key with spaces\nand newlines\r\n\tand tabs");  // white space
  std::string all_bytes;
  for (int c = 0; c < 256; ++c) all_bytes += static_cast<char>(c);
  keys.push_back(all_bytes);                   // every byte value, NUL included
  keys.push_back(std::string("\0", 1));        // one NUL
  keys.push_back(std::string("\0\0", 2));      // two NULs
  keys.push_back("\xff\xfe binary \x01\x02");  // not UTF-8
  std::string long_a(300, 'p');                // differ only past byte 250
  std::string long_b = long_a;
  long_a[280] = 'A';
  long_b[280] = 'B';
  keys.push_back(long_a);
  keys.push_back(long_b);
  std::string long_c(251, 'q');  // differ only in the last byte
  std::string long_d = long_c;
  long_d.back() = 'r';
  keys.push_back(long_c);
  keys.push_back(long_d);
  keys.push_back(std::string(250, 'z'));  // around the limit
  keys.push_back(std::string(249, 'z'));
  keys.push_back("%#" + ipc::detail::sha256::hex(keys[0]));  // imitates the 1 KB key's digest
  keys.push_back("");                                        // the empty key

  for (std::size_t i = 0; i < keys.size(); ++i) d.set(keys[i], "value " + std::to_string(i));
  for (std::size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(d.get(keys[i]), std::optional<std::string>("value " + std::to_string(i)))
        << "key #" << i;
    const std::string item = d.backend().item_key_of(keys[i]);
    EXPECT_TRUE(is_valid_memcached_key(item)) << "key #" << i << ": " << item;
  }
  // Each key is its own item: erasing one leaves the others.
  EXPECT_TRUE(d.erase(long_a));
  EXPECT_FALSE(d.contains(long_a));
  EXPECT_EQ(d.at(long_b), "value 7");
  EXPECT_EQ(d.at(keys[0]), "value 0");
}

TEST(memcached_keys, binary_byte_vector_keys) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::vector<unsigned char>, std::int64_t> d(
      options_for(node, "bytes"));
  for (int i = 0; i < 64; ++i) {
    std::vector<unsigned char> key(static_cast<std::size_t>(i) * 7, static_cast<unsigned char>(i));
    d.set(key, i);
  }
  for (int i = 0; i < 64; ++i) {
    std::vector<unsigned char> key(static_cast<std::size_t>(i) * 7, static_cast<unsigned char>(i));
    EXPECT_EQ(d.at(key), i);
  }
}

// ---- values --------------------------------------------------------------------------------

TEST(memcached_values, a_value_over_the_item_size_is_a_size_error_and_changes_nothing) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::string> d(options_for(node, "big"));
  d.set("k", "old");
  const std::string two_mb(2 << 20, 'x');
  EXPECT_THROW(d.set("k", two_mb), ipc::size_error);
  EXPECT_EQ(d.at("k"), "old");
  EXPECT_THROW((void)d.insert("new", two_mb), ipc::size_error);
  EXPECT_FALSE(d.contains("new"));
  EXPECT_THROW(d.update("k", [&](std::optional<std::string>) { return two_mb; }), ipc::size_error);
  EXPECT_EQ(d.at("k"), "old");
  EXPECT_THROW((void)d.compare_exchange("k", std::string("old"), two_mb), ipc::size_error);
  EXPECT_EQ(d.at("k"), "old");

  // Exactly the limit: memcached also counts the key and a header, so it is refused too.
  const std::string one_mb(1 << 20, 'y');
  EXPECT_THROW(d.set("k", one_mb), ipc::size_error);
  EXPECT_EQ(d.at("k"), "old");

  try {
    d.set("k", two_mb);
  } catch (const ipc::size_error& e) {
    EXPECT_NE(std::string(e.what()).find("item size"), std::string::npos) << e.what();
  }

  // A value that fits round-trips.
  const std::string half_mb(512 << 10, 'z');
  d.set("k", half_mb);
  EXPECT_EQ(d.at("k"), half_mb);
}

TEST(memcached_values, a_value_the_server_refuses_is_a_size_error_and_changes_nothing) {
  SMISK_TEST_FIXTURE_NODE(node);
  // A limit above the server's (-I 1m): the value goes out, and memcached refuses it. A plain
  // memcached "set" would also delete the old item then; the library's stores do not.
  auto o = options_for(node, "refused");
  o.max_item_size = 8 << 20;
  ipc::memcached::shared_dict<std::string, std::string> d(o);
  d.set("k", "old");
  const std::string two_mb(2 << 20, 'x');
  for (int i = 0; i < 2; ++i) {  // twice: the connection is still in a good state after a refusal
    try {
      d.set("k", two_mb);
      ADD_FAILURE() << "the server stored a 2 MB value";
    } catch (const ipc::size_error& e) {
      EXPECT_EQ(e.code(), static_cast<int>(MEMCACHED_E2BIG)) << e.what();
    }
    EXPECT_EQ(d.at("k"), "old");
    EXPECT_THROW(d.update("k", [&](std::optional<std::string>) { return two_mb; }),
                 ipc::size_error);
    EXPECT_EQ(d.at("k"), "old");
    EXPECT_THROW((void)d.insert("absent", two_mb), ipc::size_error);
    EXPECT_FALSE(d.contains("absent"));
  }
}

TEST(memcached_values, a_larger_configured_limit_is_honoured) {
  mc::server server({"-I", "4m"});
  auto o = options_for(server.node(), "limit");
  o.max_item_size = 4 << 20;
  ipc::memcached::shared_dict<std::string, std::string> d(o);
  const std::string two_mb(2 << 20, 'x');
  d.set("k", two_mb);
  EXPECT_EQ(d.at("k"), two_mb);
  EXPECT_THROW(d.set("k", std::string(5 << 20, 'x')), ipc::size_error);
}

enum class color : std::int32_t { red, green };
enum class fruit : std::int32_t { apple, pear };

TEST(memcached_values, a_namespace_described_before_enum_tags_named_the_enum_still_opens) {
  SMISK_TEST_FIXTURE_NODE(node);
  const auto o = options_for(node, "legacy");
  const int port = std::stoi(node.substr(node.rfind(':') + 1));
  // The type description as smisk-ipc wrote it before enum tags named the enum.
  const std::string earlier = "smisk-ipc 1\nstr\nenum:i32";
  const std::string reply = mc::raw_request(
      port,
      "set " + o.name + ":meta 0 0 " + std::to_string(earlier.size()) + "\r\n" + earlier + "\r\n",
      "\r\n");
  ASSERT_EQ(reply, "STORED\r\n");
  ipc::memcached::shared_dict<std::string, color> d(o);  // opens, and upgrades the description
  const std::string stored = mc::raw_request(port, "get " + o.name + ":meta\r\n", "END\r\n");
  EXPECT_NE(stored.find("enum:i32:"), std::string::npos) << stored;
  d.set("sky", color::green);
  EXPECT_EQ(d.get("sky"), color::green);
  EXPECT_THROW((ipc::memcached::shared_dict<std::string, fruit>(o)), ipc::type_mismatch);
  EXPECT_THROW((ipc::memcached::shared_dict<std::string, std::int32_t>(o)), ipc::type_mismatch);
}

TEST(memcached_values, counters_are_plain_decimal_text_on_the_server) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::int64_t> d(options_for(node, "text"));
  d.increment("hits", 41);
  d.increment("hits");
  const std::string item = d.backend().item_key_of("hits");
  const int port = std::stoi(node.substr(node.rfind(':') + 1));
  const std::string reply = mc::raw_request(port, "get " + item + "\r\n", "END\r\n");
  EXPECT_EQ(reply, "VALUE " + item + " 0 2\r\n42\r\nEND\r\n");
}

TEST(memcached_values, integer_counters_are_added_to_by_the_server_itself) {
  // 64-bit integer counters use memcached's incr (add for the first one), never gets + cas; the
  // server's own statistics show which commands reached it.
  mc::server own;
  ipc::memcached::shared_dict<std::string, std::int64_t> d(options_for(own.node(), "incr"));
  auto count = [&](const char* stat) { return std::stol(mc::stats(own.port()).at(stat)); };
  const long cas_before = count("cas_hits") + count("cas_misses") + count("cas_badval");
  for (int i = 1; i <= 100; ++i) ASSERT_EQ(d.increment("hits"), i);
  EXPECT_EQ(d.increment("hits", 900), 1000);
  EXPECT_EQ(count("incr_misses"), 1);  // the first one found no item and added it
  EXPECT_EQ(count("incr_hits"), 100);
  EXPECT_EQ(count("cas_hits") + count("cas_misses") + count("cas_badval"), cas_before);

  // A negative number is no counter of memcached's: gets + cas instead (and incr again later).
  d.set("hits", -3);
  EXPECT_EQ(d.increment("hits", 5), 2);
  EXPECT_EQ(count("cas_hits"), 1);
  EXPECT_EQ(d.increment("hits"), 3);
  EXPECT_EQ(count("incr_hits"), 101);  // the incr refused on "-3" is no hit

  // With a ttl, incr would not renew the expiry: gets + cas.
  auto expiring = options_for(own.node(), "incr.ttl");
  expiring.ttl = 600s;
  ipc::memcached::shared_dict<std::string, std::int64_t> e(expiring);
  const long incr_before = count("incr_hits") + count("incr_misses");
  EXPECT_EQ(e.increment("hits"), 1);
  EXPECT_EQ(e.increment("hits"), 2);
  EXPECT_EQ(count("incr_hits") + count("incr_misses"), incr_before);
}

TEST(memcached_values, a_counter_that_wrapped_is_stored_as_plain_digits) {
  // memcached's incr keeps the length of a number and pads a shorter one with spaces: 2^64 - 1
  // plus 1 would be stored as "0" and 19 spaces, which no reader could decode.
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::uint64_t> d(options_for(node, "wrap"));
  d.set("n", std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(d.increment("n", 2), 1u);
  const std::string item = d.backend().item_key_of("n");
  const int port = std::stoi(node.substr(node.rfind(':') + 1));
  EXPECT_EQ(mc::raw_request(port, "get " + item + "\r\n", "END\r\n"),
            "VALUE " + item + " 0 1\r\n1\r\nEND\r\n");
  EXPECT_EQ(d.at("n"), 1u);
}

TEST(memcached_values, items_expire_after_the_ttl) {
  SMISK_TEST_FIXTURE_NODE(node);
  auto o = options_for(node, "ttl");
  o.ttl = 1s;
  ipc::memcached::shared_dict<std::string, int> d(o);
  d.set("k", 1);
  EXPECT_EQ(d.at("k"), 1);
  std::this_thread::sleep_for(2200ms);
  EXPECT_FALSE(d.contains("k"));
  EXPECT_TRUE(d.insert("k", 2));  // an expired key is absent for every operation
}

// ---- types ---------------------------------------------------------------------------------

TEST(memcached_types, other_types_are_a_type_mismatch_from_the_constructor) {
  SMISK_TEST_FIXTURE_NODE(node);
  const auto o = options_for(node, "types");
  ipc::memcached::shared_dict<std::string, std::int64_t> d(o);
  d.set("k", 5);
  try {
    ipc::memcached::shared_dict<std::string, std::string> other(o);
    FAIL() << "opened with other value type";
  } catch (const ipc::type_mismatch& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("str -> i64"), std::string::npos) << what;
    EXPECT_NE(what.find("str -> str"), std::string::npos) << what;
    // Says how to have both: a name of its own.
    EXPECT_NE(what.find("options.name"), std::string::npos) << what;
  }
  EXPECT_THROW((ipc::memcached::shared_dict<std::int64_t, std::int64_t>(o)), ipc::type_mismatch);
  EXPECT_EQ(d.at("k"), 5);
  // clear() keeps the dict's types.
  d.clear();
  EXPECT_THROW((ipc::memcached::shared_dict<std::string, double>(o)), ipc::type_mismatch);
}

// ---- construction --------------------------------------------------------------------------

TEST(memcached_construction, a_server_that_is_down_throws_from_the_constructor_quickly) {
  auto o = options_for("127.0.0.1:" + std::to_string(mc::unused_port()), "down");
  const auto start = mc::clock::now();
  try {
    ipc::memcached::shared_dict<std::string, int> d(o);
    FAIL() << "opened a dict on a server that is not running";
  } catch (const ipc::unavailable_error& e) {
    EXPECT_NE(std::string(e.what()).find(o.nodes[0]), std::string::npos) << e.what();
  }
  const double took = mc::ms_since(start);
  std::cout << "[ measure  ] constructor on a dead server threw after " << took << " ms\n";
  EXPECT_LT(took, 1000.0);

  // A unix socket that does not exist, likewise.
  o.nodes = {"/nonexistent/smisk-ipc-test.sock"};
  EXPECT_THROW((ipc::memcached::shared_dict<std::string, int>(o)), ipc::unavailable_error);
}

TEST(memcached_construction, invalid_nodes_are_refused) {
  for (const char* bad :
       {"", "host:", ":11211", "host:0", "host:65536", "host:12x", "a b:1", "[::1", "[::1]x"}) {
    ipc::memcached::options o;
    o.nodes = {bad};
    o.name = "never-used";
    EXPECT_THROW((ipc::memcached::shared_dict<std::string, int>(o)), ipc::error) << bad;
  }
  ipc::memcached::options none;
  none.nodes.clear();
  EXPECT_THROW((ipc::memcached::shared_dict<std::string, int>(none)), ipc::error);
}

TEST(memcached_construction, node_addresses_are_parsed) {
  using ipc::detail::mc::parse_node;
  EXPECT_EQ(parse_node("10.0.0.5:11311").host, "10.0.0.5");
  EXPECT_EQ(parse_node("10.0.0.5:11311").port, 11311);
  EXPECT_EQ(parse_node("cache.example").port, 11211);
  EXPECT_EQ(parse_node("[::1]:11212").host, "::1");
  EXPECT_EQ(parse_node("[::1]:11212").port, 11212);
  EXPECT_EQ(parse_node("::1").host, "::1");
  EXPECT_TRUE(parse_node("/run/memcached.sock").is_socket());
  EXPECT_EQ(parse_node("[::1]:11212").display(), "[::1]:11212");
}

TEST(memcached_construction, the_default_name_is_the_program_and_user) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::options o;
  o.nodes = {node};
  ipc::memcached::shared_dict<std::string, std::string> d(o);
  EXPECT_EQ(d.backend().name(),
            "smisk-ipc." + ipc::detail::user_name() + "." + ipc::detail::program_name());
}

TEST(memcached_construction, a_unix_socket_node_works) {
  smisk_test::temp_dir dir;
  const std::string socket_path = dir.file("mc.sock");
  mc::server socket_server({}, socket_path);
  ipc::memcached::options o;
  o.nodes = {socket_path};
  o.name = mc::unique_name("unix");
  ipc::memcached::shared_dict<std::string, int> d(o);
  d.set("k", 7);
  EXPECT_EQ(d.at("k"), 7);
  EXPECT_EQ(d.backend().node_of("k"), socket_path);
}

// ---- processes, threads, fork ------------------------------------------------------------

TEST(memcached_processes, clear_by_one_process_is_seen_by_the_others) {
  SMISK_TEST_FIXTURE_NODE(node);
  const auto o = options_for(node, "clear");
  ipc::memcached::shared_dict<std::string, int> d(o);
  for (int i = 0; i < 100; ++i) d.set("k" + std::to_string(i), i);
  EXPECT_EQ(d.at("k42"), 42);  // this process has learnt the generation

  smisk_test::signal_pipe ready, cleared;
  auto pids = smisk_test::fork_children(2, [&](int index) {
    ipc::memcached::shared_dict<std::string, int> mine(o);
    if (index == 0) {
      ASSERT_TRUE(ready.wait());
      mine.clear();
      cleared.send('c', 2);
    } else {
      EXPECT_EQ(mine.at("k1"), 1);
      ready.send();
      ASSERT_TRUE(cleared.wait());
      for (int i = 0; i < 100; ++i) EXPECT_FALSE(mine.contains("k" + std::to_string(i))) << i;
      mine.set("from child", 1);
    }
  });
  ASSERT_TRUE(cleared.wait());
  EXPECT_TRUE(smisk_test::all_ok(smisk_test::wait_children(pids)));
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(d.contains("k" + std::to_string(i))) << i;
  EXPECT_EQ(d.get("k42"), std::nullopt);
  EXPECT_EQ(d.at("from child"), 1);
}

TEST(memcached_processes, a_set_after_another_process_cleared_is_not_lost) {
  // A set is written under the generation this process saw last: after a clear() elsewhere that
  // generation is stale, and the set must notice it (it reads the generation after writing) and
  // write again under the new one, or the value would land in the cleared namespace.
  SMISK_TEST_FIXTURE_NODE(node);
  const auto o = options_for(node, "stale");
  ipc::memcached::shared_dict<std::string, int> d(o);
  d.set("k", 1);
  d.set("other", 1);
  const std::string before = d.backend().item_key_of("k");
  auto pid = smisk_test::fork_child([&] {
    ipc::memcached::shared_dict<std::string, int> mine(o);
    mine.clear();
  });
  ASSERT_TRUE(smisk_test::all_ok(smisk_test::wait_child(pid)));
  d.set("k", 2);  // the first write still goes to the old generation
  EXPECT_NE(d.backend().item_key_of("k"), before) << "the new generation was not learnt";
  ipc::memcached::shared_dict<std::string, int> fresh(o);
  EXPECT_EQ(fresh.get("k"), 2);
  EXPECT_EQ(fresh.get("other"), std::nullopt);
  EXPECT_EQ(d.get("k"), 2);
}

TEST(memcached_processes, an_increment_after_another_process_cleared_counts_from_zero) {
  // The same for memcached's incr: under the stale generation it would add to the cleared
  // counter and return 43; the read of the generation after it must catch that.
  SMISK_TEST_FIXTURE_NODE(node);
  const auto o = options_for(node, "stale.incr");
  ipc::memcached::shared_dict<std::string, std::int64_t> d(o);
  EXPECT_EQ(d.increment("hits", 42), 42);
  auto pid = smisk_test::fork_child([&] {
    ipc::memcached::shared_dict<std::string, std::int64_t> mine(o);
    mine.clear();
  });
  ASSERT_TRUE(smisk_test::all_ok(smisk_test::wait_child(pid)));
  EXPECT_EQ(d.increment("hits"), 1);
  ipc::memcached::shared_dict<std::string, std::int64_t> fresh(o);
  EXPECT_EQ(fresh.at("hits"), 1);
}

TEST(memcached_processes, threads_share_a_dict_without_losing_updates) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::int64_t> d(options_for(node, "threads"));
  constexpr int threads = 8, per_thread = 300;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto copy = d;  // copies share the engine
      for (int i = 0; i < per_thread; ++i) {
        copy.increment("shared");
        copy.set("t" + std::to_string(t), i);
      }
    });
  }
  for (auto& th : pool) th.join();
  EXPECT_EQ(d.at("shared"), threads * per_thread);
  for (int t = 0; t < threads; ++t) EXPECT_EQ(d.at("t" + std::to_string(t)), per_thread - 1);
}

TEST(memcached_processes, a_child_of_fork_reconnects_and_leaves_the_parents_connections_alone) {
  mc::server server;  // a server of our own: the connection counts are ours alone
  ipc::memcached::shared_dict<std::string, int> d(options_for(server.node(), "fork"));
  d.set("k", 1);  // the parent now holds a pooled connection
  const long before = std::stol(mc::stats(server.port()).at("curr_connections"));

  auto status = smisk_test::run_child([&] {
    EXPECT_EQ(d.at("k"), 1);  // the inherited handle works, on the child's own connection
    d.set("k", 2);
    d.increment("n");
  });
  EXPECT_TRUE(smisk_test::all_ok(status));

  // Once the child's connections are closed, the parent's is still open: the child did not
  // close or "quit" it. Allow the server a moment to notice the closed ones.
  long after = -1;
  for (int i = 0; i < 100; ++i) {
    after = std::stol(mc::stats(server.port()).at("curr_connections"));
    if (after == before) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(after, before);
  const long total_before = std::stol(mc::stats(server.port()).at("total_connections"));
  EXPECT_EQ(d.at("k"), 2);
  EXPECT_EQ(d.at("n"), 1);
  // ... and the parent's next calls reuse that connection (only our stats probe is new).
  const long total_after = std::stol(mc::stats(server.port()).at("total_connections"));
  EXPECT_EQ(total_after, total_before + 1);
}

}  // namespace
