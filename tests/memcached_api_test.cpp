// The whole shared_dict API (tests/api_suite.hpp) on the memcached backend, against the
// memcached that ctest starts for the run (the memcached_server fixture). Built as C++17 and as
// C++20. Each test uses namespaces of its own, so the cases run in parallel.
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include <smisk/ipc/memcached.hpp>

#include "api_suite.hpp"
#include "memcached_test_util.hpp"

namespace ipc = smisk::ipc;

namespace {

struct memcached_store {
  std::string prefix = smisk_test::mc::unique_name("api");

  template <class K, class V>
  ipc::memcached::shared_dict<K, V> open(const std::string& name) {
    auto port = smisk_test::mc::fixture_port();
    if (!port) throw std::runtime_error("no memcached fixture (SMISK_IPC_MEMCACHED_PORT_FILE)");
    ipc::memcached::options o;
    o.nodes = {"127.0.0.1:" + std::to_string(*port)};
    o.name = prefix + "." + name;
    return ipc::memcached::shared_dict<K, V>(o);
  }
};

}  // namespace

namespace api_suite {
INSTANTIATE_TYPED_TEST_SUITE_P(memcached, api, ::testing::Types<memcached_store>);
}

namespace {

TEST(memcached_api, the_default_backend_alias_and_options_are_the_memcached_ones) {
  static_assert(std::is_same_v<ipc::memcached::shared_dict<std::string, int>::backend_type,
                               ipc::memcached::backend>);
  static_assert(std::is_same_v<ipc::memcached::shared_dict<std::string, int>::options,
                               ipc::memcached::options>);
  static_assert(!ipc::backend_traits<ipc::memcached::backend>::can_enumerate);
  static_assert(!ipc::backend_traits<ipc::memcached::backend>::can_count);
  static_assert(ipc::backend_traits<ipc::memcached::backend>::can_clear);
  ipc::memcached::options defaults;
  EXPECT_EQ(defaults.nodes, std::vector<std::string>{"127.0.0.1:11211"});
  EXPECT_TRUE(defaults.name.empty());
  EXPECT_EQ(defaults.ttl.count(), 0);
}

TEST(memcached_api, clear_empties_the_dict_for_every_handle) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::options o;
  o.nodes = {node};
  o.name = smisk_test::mc::unique_name("clear");
  ipc::memcached::shared_dict<std::string, int> a(o), b(o);
  for (int i = 0; i < 50; ++i) a.set("k" + std::to_string(i), i);
  EXPECT_EQ(b.at("k7"), 7);
  b.clear();
  for (int i = 0; i < 50; ++i) EXPECT_FALSE(a.contains("k" + std::to_string(i))) << i;
  a.set("after", 1);
  EXPECT_EQ(b.at("after"), 1);
  EXPECT_FALSE(b.contains("k1"));
}

#if __cplusplus >= 202002L
TEST(memcached_api, designated_initialisers_in_cxx20) {
  SMISK_TEST_FIXTURE_NODE(node);
  using namespace std::chrono_literals;
  ipc::memcached::shared_dict<std::string, std::int64_t> hits{
      {.nodes = {node}, .name = smisk_test::mc::unique_name("cxx20"), .ttl = 600s}};
  EXPECT_EQ(hits.increment("/index"), 1);
  EXPECT_EQ(hits.increment("/index", 41), 42);
}
#endif

}  // namespace
