// smisk-ipc: the options of a memcached shared dict (smisk::ipc::memcached::options).
// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace smisk::ipc::memcached {

/// How to reach the memcached servers and how to use them. An aggregate: set fields in C++17,
/// or use designated initialisers in C++20 (`{.nodes = {"10.0.0.5:11211"}, .ttl = 60s}`).
struct options {
  /// The servers: "host:port", "host" (port 11211), "[ipv6]:port", or "/path/to/unix.socket".
  /// Keys are spread over them by consistent hashing (ketama), so adding a node moves few keys.
  /// Every process sharing the dict must list the same nodes.
  std::vector<std::string> nodes = {"127.0.0.1:11211"};
  /// The key namespace: dicts with the same name on the same nodes are the same dict. Default
  /// (empty): "smisk-ipc.<user>.<program>", shared by every process of this program and user.
  std::string name{};
  /// How long an item lives after it was last written; 0 means no expiry (memcached may still
  /// evict it when it runs out of memory).
  std::chrono::seconds ttl{0};
  /// How long connecting to a node may take.
  std::chrono::milliseconds connect_timeout{1000};
  /// How long a node may take to answer (each wait for the socket).
  std::chrono::milliseconds io_timeout{1000};
  /// How long a node that failed is skipped: calls on its keys fail at once with
  /// unavailable_error, then the node is tried again (libmemcached rounds to whole seconds).
  std::chrono::seconds retry_timeout{1};
  /// The largest value accepted, in bytes: memcached's item size limit (its -I option, 1 MiB by
  /// default). Larger values are refused with size_error before anything is sent. The server's
  /// own limit applies too (it counts the key and a header), and also gives size_error.
  std::size_t max_item_size = std::size_t{1} << 20;
};

}  // namespace smisk::ipc::memcached
