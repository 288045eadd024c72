// Atomicity under contention on the memcached backend: 8 processes x 2,000 increments of one key
// end exact, and the same through update() and compare_exchange(). The dict is opened before
// fork(), as a prefork server does, so the children also prove that they reconnect.
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>

#include <gtest/gtest.h>

#include <smisk/ipc/memcached.hpp>

#include "memcached_test_util.hpp"
#include "test_util.hpp"

namespace ipc = smisk::ipc;
namespace mc = smisk_test::mc;
using namespace std::chrono_literals;

namespace {

constexpr int processes = 8;
constexpr int per_process = 2000;

ipc::memcached::options options_for(const std::string& node, const std::string& what) {
  ipc::memcached::options o;
  o.nodes = {node};
  o.name = mc::unique_name(what);
  return o;
}

template <class Body>
void run_contended(const char* what, Body&& body) {
  smisk_test::process_barrier start(processes);
  auto pids = smisk_test::fork_children(processes, [&](int index) {
    ASSERT_TRUE(start.arrive_and_wait());
    body(index);
  });
  ASSERT_TRUE(start.release_when_all_arrived());
  const auto begin = mc::clock::now();
  EXPECT_TRUE(smisk_test::all_ok(smisk_test::wait_children(pids, 240s)));
  const double took = mc::ms_since(begin);
  std::cout << "[ measure  ] " << what << ": " << processes * per_process << " operations by "
            << processes << " processes in " << took << " ms ("
            << static_cast<long>(processes * per_process / (took / 1000.0)) << " ops/s)\n";
}

TEST(memcached_contention, increments_from_8_processes_end_exact) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::int64_t> d(options_for(node, "incr"));
  d.set("counter", 0);
  run_contended("increment", [&](int) {
    for (int i = 0; i < per_process; ++i) d.increment("counter");
  });
  EXPECT_EQ(d.at("counter"), processes * per_process);
}

TEST(memcached_contention, updates_from_8_processes_end_exact) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::string> d(options_for(node, "update"));
  // A string counter: update() works for any codec, not only for numbers.
  run_contended("update", [&](int) {
    for (int i = 0; i < per_process; ++i) {
      d.update("counter", [](std::optional<std::string> v) {
        return std::to_string(std::stol(v.value_or("0")) + 1);
      });
    }
  });
  EXPECT_EQ(d.at("counter"), std::to_string(processes * per_process));
}

TEST(memcached_contention, compare_exchange_loops_from_8_processes_end_exact) {
  SMISK_TEST_FIXTURE_NODE(node);
  ipc::memcached::shared_dict<std::string, std::int64_t> d(options_for(node, "cas"));
  run_contended("compare_exchange loop", [&](int) {
    for (int i = 0; i < per_process; ++i) {
      for (;;) {
        std::optional<std::int64_t> seen = d.get("counter");
        if (d.compare_exchange("counter", seen, seen.value_or(0) + 1)) break;
      }
    }
  });
  EXPECT_EQ(d.at("counter"), processes * per_process);
}

TEST(memcached_contention, insert_and_pop_hand_each_key_to_exactly_one_process) {
  SMISK_TEST_FIXTURE_NODE(node);
  const auto o = options_for(node, "claims");
  ipc::memcached::shared_dict<std::string, std::int64_t> d(o);
  constexpr int keys = 200;
  // Every process tries to insert every key, then to pop every key: each key is inserted by
  // exactly one process and popped by exactly one process.
  smisk_test::signal_pipe inserted, popped;
  // Two barriers: a process_barrier is single-use (a fast child would otherwise take a
  // slow child's release token of the first round).
  smisk_test::process_barrier start(processes), pop_phase(processes);
  auto pids = smisk_test::fork_children(processes, [&](int index) {
    ASSERT_TRUE(start.arrive_and_wait());
    for (int k = 0; k < keys; ++k)
      if (d.insert("k" + std::to_string(k), index)) inserted.send('i');
    ASSERT_TRUE(pop_phase.arrive_and_wait());
    for (int k = 0; k < keys; ++k)
      if (d.pop("k" + std::to_string(k))) popped.send('p');
  });
  ASSERT_TRUE(start.release_when_all_arrived());
  ASSERT_TRUE(pop_phase.release_when_all_arrived());
  EXPECT_TRUE(smisk_test::all_ok(smisk_test::wait_children(pids, 240s)));
  EXPECT_EQ(inserted.drain().size(), static_cast<std::size_t>(keys));
  EXPECT_EQ(popped.drain().size(), static_cast<std::size_t>(keys));
  for (int k = 0; k < keys; ++k) EXPECT_FALSE(d.contains("k" + std::to_string(k)));
}

}  // namespace
