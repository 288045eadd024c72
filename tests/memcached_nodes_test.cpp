// Several memcached nodes, and nodes that fail: keys spread over three servers and read back
// through a fresh dict; a node killed with SIGKILL makes calls on its keys fail fast with
// unavailable_error while the others keep working, and the same dict uses it again once it is
// restarted on the same port; a frozen node times out. Every server here is the test's own,
// started and stopped by PID.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
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

using dict = ipc::memcached::shared_dict<std::string, std::string>;

struct three_servers {
  std::vector<std::unique_ptr<mc::server>> servers;
  three_servers() {
    for (int i = 0; i < 3; ++i) servers.push_back(std::make_unique<mc::server>());
  }
  ipc::memcached::options options(const std::string& name) const {
    ipc::memcached::options o;
    o.nodes.clear();  // not the default 127.0.0.1:11211
    for (const auto& s : servers) o.nodes.push_back(s->node());
    o.name = name;
    o.connect_timeout = 500ms;
    o.io_timeout = 500ms;
    o.retry_timeout = 1s;
    return o;
  }
};

std::string key(int i) { return "key:" + std::to_string(i); }
std::string value(int i) { return "value " + std::to_string(i); }

TEST(memcached_nodes, keys_spread_over_three_servers_and_read_back_through_a_fresh_dict) {
  three_servers cluster;
  const auto o = cluster.options(mc::unique_name("spread"));
  constexpr int n = 600;
  std::map<std::string, int> per_node;
  {
    dict d(o);
    EXPECT_EQ(d.backend().node_count(), 3u);
    for (int i = 0; i < n; ++i) d.set(key(i), value(i));
    for (int i = 0; i < n; ++i) {
      const std::string node = d.backend().node_of(key(i));
      ++per_node[node];
      // The item is really on the node that node_of() names, under the key item_key_of() names.
      const auto& server = *std::find_if(cluster.servers.begin(), cluster.servers.end(),
                                         [&](const auto& s) { return s->node() == node; });
      EXPECT_TRUE(mc::server_has_item(server->port(), d.backend().item_key_of(key(i)))) << i;
    }
  }
  long total = 0;
  for (const auto& s : cluster.servers) {
    const long items = mc::items_on(s->port());
    std::cout << "[ measure  ] " << s->node() << " holds " << items << " items\n";
    // Each node holds its share of the keys, plus the namespace's type tag and generation.
    EXPECT_EQ(items, per_node[s->node()] + 2) << s->node();
    EXPECT_GE(per_node[s->node()], n / 10)
        << "consistent hashing left " << s->node() << " nearly empty";
    total += items;
  }
  EXPECT_EQ(total, n + 3 * 2);

  dict fresh(o);  // a new backend, a new pool of connections
  for (int i = 0; i < n; ++i)
    EXPECT_EQ(fresh.get(key(i)), std::optional<std::string>(value(i))) << i;
}

TEST(memcached_nodes, a_killed_node_fails_fast_the_others_work_and_it_comes_back) {
  three_servers cluster;
  const auto o = cluster.options(mc::unique_name("failover"));
  dict d(o);
  constexpr int n = 300;
  for (int i = 0; i < n; ++i) d.set(key(i), value(i));

  mc::server& victim = *cluster.servers[1];
  const std::string victim_node = victim.node();
  std::vector<int> on_victim, elsewhere;
  for (int i = 0; i < n; ++i)
    (d.backend().node_of(key(i)) == victim_node ? on_victim : elsewhere).push_back(i);
  ASSERT_FALSE(on_victim.empty());
  ASSERT_FALSE(elsewhere.empty());

  victim.kill(SIGKILL);

  // Every call on the victim's keys fails with unavailable_error, fast; the first one included.
  double slowest = 0, first = -1;
  for (int i : on_victim) {
    for (int op = 0; op < 3; ++op) {
      const auto start = mc::clock::now();
      try {
        if (op == 0) (void)d.get(key(i));
        if (op == 1) d.set(key(i), "new");
        if (op == 2)
          d.update(key(i), [](std::optional<std::string> v) { return v.value_or("") + "!"; });
        ADD_FAILURE() << "a call on key " << i << " of the killed node returned";
      } catch (const ipc::unavailable_error& e) {
        EXPECT_NE(std::string(e.what()).find(victim_node), std::string::npos) << e.what();
      }
      const double took = mc::ms_since(start);
      if (first < 0) first = took;
      slowest = std::max(slowest, took);
    }
  }
  std::cout << "[ measure  ] killed node: first call failed after " << first << " ms, slowest of "
            << on_victim.size() * 3 << " calls " << slowest << " ms\n";
  EXPECT_LT(slowest, 500.0);

  // The other nodes' keys keep working, reads and writes.
  for (int i : elsewhere) EXPECT_EQ(d.at(key(i)), value(i)) << i;
  for (int i : elsewhere) d.set(key(i), value(i) + "'");
  for (int i : elsewhere) EXPECT_EQ(d.at(key(i)), value(i) + "'");

  // clear() cannot reach the dead node and says so, after clearing the others.
  EXPECT_THROW(d.clear(), ipc::unavailable_error);
  for (int i : elsewhere) EXPECT_FALSE(d.contains(key(i))) << i;

  // A fresh dict opens (two of three nodes answer) and sees the same thing.
  {
    dict other(o);
    EXPECT_THROW((void)other.get(key(on_victim.front())), ipc::unavailable_error);
    other.set(key(elsewhere.front()), "from other");
    EXPECT_EQ(d.at(key(elsewhere.front())), "from other");
  }

  // Restart it on the same port: the same dict uses it again once retry_timeout has passed.
  victim.restart();
  const auto restarted = mc::clock::now();
  bool back = false;
  while (mc::ms_since(restarted) < 10000) {
    try {
      (void)d.get(key(on_victim.front()));
      back = true;
      break;
    } catch (const ipc::unavailable_error&) {
      std::this_thread::sleep_for(20ms);
    }
  }
  ASSERT_TRUE(back) << "the restarted node was not used again within 10 s";
  std::cout << "[ measure  ] restarted node used again after " << mc::ms_since(restarted)
            << " ms\n";
  // It came back empty (memcached keeps nothing), and it works for reads and writes.
  for (int i : on_victim) EXPECT_EQ(d.get(key(i)), std::nullopt) << i;
  for (int i : on_victim) d.set(key(i), value(i));
  for (int i : on_victim) EXPECT_EQ(d.at(key(i)), value(i));
  EXPECT_EQ(d.at(key(elsewhere.front())), "from other");
  d.clear();  // every node answers again
  for (int i = 0; i < n; ++i) EXPECT_FALSE(d.contains(key(i))) << i;
}

TEST(memcached_nodes, a_counter_on_a_restarted_node_counts_from_zero) {
  // The counter's connection in the pool died with the server, so the first incr after the
  // restart fails on it; the call reads the node's generation again (the restarted node has a
  // new one) and counts there. The counter comes back at exactly 1 and is read back under the
  // node's current generation (an incr or add left under the old one would make at() fail).
  mc::server server;
  ipc::memcached::options o;
  o.nodes = {server.node()};
  o.name = mc::unique_name("restart.incr");
  ipc::memcached::shared_dict<std::string, std::int64_t> d(o);
  for (int i = 1; i <= 5; ++i) ASSERT_EQ(d.increment("hits"), i);
  server.restart();
  const auto restarted = mc::clock::now();
  std::optional<std::int64_t> first;
  int refused = 0;
  while (!first && mc::ms_since(restarted) < 10000) {
    try {
      first = d.increment("hits");
    } catch (const ipc::unavailable_error&) {
      ++refused;
      std::this_thread::sleep_for(20ms);
    }
  }
  ASSERT_TRUE(first) << "the restarted node was not used again within 10 s";
  std::cout << "[ measure  ] counter on a restarted node: " << refused
            << " increments refused, the first accepted after " << mc::ms_since(restarted)
            << " ms\n";
  EXPECT_EQ(*first, 1);
  EXPECT_EQ(d.increment("hits"), 2);
  EXPECT_EQ(d.at("hits"), 2);
}

TEST(memcached_nodes, a_frozen_node_times_out_within_io_timeout) {
  mc::server server;
  ipc::memcached::options o;
  o.nodes = {server.node()};
  o.name = mc::unique_name("frozen");
  o.io_timeout = 300ms;
  o.retry_timeout = 1s;
  dict d(o);
  d.set("k", "v");

  server.freeze();  // accepts connections, never answers
  auto start = mc::clock::now();
  EXPECT_THROW((void)d.get("k"), ipc::unavailable_error);
  const double first = mc::ms_since(start);
  start = mc::clock::now();
  EXPECT_THROW(d.set("k", "w"), ipc::unavailable_error);  // skipped at once: marked down
  const double second = mc::ms_since(start);
  std::cout << "[ measure  ] frozen node: first call failed after " << first
            << " ms (io_timeout 300 ms), the next after " << second << " ms\n";
  EXPECT_GE(first, 250.0);
  EXPECT_LT(first, 1000.0);
  EXPECT_LT(second, 100.0);

  server.thaw();
  const auto thawed = mc::clock::now();
  bool back = false;
  while (mc::ms_since(thawed) < 10000) {
    try {
      EXPECT_EQ(d.at("k"), "v");  // never the reply to an earlier, timed-out request
      back = true;
      break;
    } catch (const ipc::unavailable_error&) {
      std::this_thread::sleep_for(20ms);
    }
  }
  EXPECT_TRUE(back);
  d.set("k", "w");
  EXPECT_EQ(d.at("k"), "w");
}

TEST(memcached_nodes, a_dict_opens_while_one_of_its_nodes_is_down_but_not_all) {
  three_servers cluster;
  auto o = cluster.options(mc::unique_name("partial"));
  cluster.servers[2]->kill();
  {
    dict d(o);  // two nodes answer
    int failed = 0, worked = 0;
    for (int i = 0; i < 60; ++i) {
      try {
        d.set(key(i), value(i));
        EXPECT_EQ(d.at(key(i)), value(i));
        ++worked;
      } catch (const ipc::unavailable_error&) {
        ++failed;
      }
    }
    EXPECT_GT(failed, 0);
    EXPECT_GT(worked, 0);
  }
  cluster.servers[0]->kill();
  cluster.servers[1]->kill();
  const auto start = mc::clock::now();
  EXPECT_THROW(dict{o}, ipc::unavailable_error);
  std::cout << "[ measure  ] constructor with every node dead threw after " << mc::ms_since(start)
            << " ms\n";
}

TEST(memcached_nodes, a_fourth_node_takes_about_a_quarter_of_the_keys_from_the_others) {
  // Consistent hashing (ketama): adding a node moves only the keys the new node takes over,
  // about 1/4 of them. Modulo placement would move about 3/4.
  three_servers cluster;
  const std::string name = mc::unique_name("ketama");
  const auto three = cluster.options(name);
  mc::server fourth;
  auto four = three;
  four.nodes.push_back(fourth.node());
  dict before(three), after(four);
  ASSERT_EQ(after.backend().node_count(), 4u);
  constexpr int n = 4000;
  int moved = 0, moved_elsewhere = 0;
  for (int i = 0; i < n; ++i) {
    const std::string was = before.backend().node_of(key(i));
    const std::string is = after.backend().node_of(key(i));
    if (was == is) continue;
    ++moved;
    if (is != fourth.node()) ++moved_elsewhere;
  }
  std::cout << "[ measure  ] a 4th node moved " << moved << " of " << n << " keys\n";
  EXPECT_EQ(moved_elsewhere, 0) << "keys moved between the old nodes";
  EXPECT_GT(moved, n / 8);
  EXPECT_LT(moved, n * 2 / 5);
}

// A listening socket whose accept queue is full: the kernel drops new connection attempts, so a
// client's connect() waits (a host that does not answer, on loopback).
class unanswering_listener {
 public:
  unanswering_listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, 0) != 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("cannot listen on loopback");
    port_ = ntohs(addr.sin_port);
    // Fill the accept queue (never accepted).
    for (int i = 0; i < 4; ++i) {
      int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      (void)::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      fillers_.push_back(c);
    }
    std::this_thread::sleep_for(100ms);
  }
  ~unanswering_listener() {
    for (int c : fillers_) ::close(c);
    ::close(fd_);
  }
  unanswering_listener(const unanswering_listener&) = delete;
  unanswering_listener& operator=(const unanswering_listener&) = delete;
  [[nodiscard]] std::string node() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::vector<int> fillers_;
};

TEST(memcached_nodes, a_node_that_never_answers_the_connect_fails_within_connect_timeout) {
  unanswering_listener silent;
  mc::server alive;
  ipc::memcached::options o;
  o.nodes = {silent.node()};
  o.name = mc::unique_name("silent");
  o.connect_timeout = 300ms;
  o.io_timeout = 300ms;
  auto start = mc::clock::now();
  EXPECT_THROW(dict{o}, ipc::unavailable_error);
  const double alone = mc::ms_since(start);
  // Beside a working node: the dict opens, the silent node's keys fail within the timeout.
  o.nodes = {alive.node(), silent.node()};
  dict d(o);
  int failed = 0, worked = 0;
  double slowest = 0;
  for (int i = 0; i < 40; ++i) {
    const auto call = mc::clock::now();
    try {
      d.set(key(i), value(i));
      EXPECT_EQ(d.at(key(i)), value(i));
      ++worked;
    } catch (const ipc::unavailable_error&) {
      ++failed;
    }
    slowest = std::max(slowest, mc::ms_since(call));
  }
  std::cout << "[ measure  ] silent node: constructor failed after " << alone
            << " ms (connect_timeout 300 ms); slowest call beside a live node " << slowest
            << " ms; " << failed << " failed, " << worked << " worked\n";
  EXPECT_GE(alone, 250.0);
  EXPECT_LT(alone, 2000.0);
  EXPECT_LT(slowest, 2000.0);
  EXPECT_GT(failed, 0);
  EXPECT_GT(worked, 0);
}

}  // namespace
