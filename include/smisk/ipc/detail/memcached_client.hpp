// smisk-ipc: libmemcached plumbing for the memcached backend: node addresses, a fork-aware pool
// of memcached_st handles, node health, error mapping and the key encoding.
// SPDX-License-Identifier: MIT
#pragma once

#include <libmemcached-1.0/memcached.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "posix.hpp"
#include "sha256.hpp"

namespace smisk::ipc::detail::mc {

// ---- node addresses ----------------------------------------------------------------------------

/// One memcached server: a host (name or IP address) and a TCP port, or a unix socket path.
struct node_address {
  std::string host;
  in_port_t port = 0;  // 0: `host` is a unix socket path

  [[nodiscard]] bool is_socket() const noexcept { return port == 0; }
  [[nodiscard]] std::string display() const {
    if (is_socket()) return host;
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
  }
};

[[noreturn]] inline void bad_node(const std::string& spec, const char* why) {
  throw error("smisk::ipc: memcached node \"" + spec + "\" is not valid: " + why, 0,
              "memcached::options::nodes");
}

/// Parses "host:port", "host" (port 11211), "[ipv6]:port", "[ipv6]", a bare IPv6 address, or
/// "/path/to/socket". @throws error if the text is not one of those.
inline node_address parse_node(const std::string& spec) {
  if (spec.empty()) bad_node(spec, "it is empty");
  if (spec.find_first_of(" \t\r\n") != std::string::npos) bad_node(spec, "it contains white space");
  node_address n;
  if (spec.front() == '/') {
    n.host = spec;
    return n;
  }
  std::string port_text;
  if (spec.front() == '[') {
    auto close = spec.find(']');
    if (close == std::string::npos || close == 1) bad_node(spec, "unbalanced [ ]");
    n.host = spec.substr(1, close - 1);
    if (close + 1 < spec.size()) {
      if (spec[close + 1] != ':') bad_node(spec, "expected ':' after ']'");
      port_text = spec.substr(close + 2);
      if (port_text.empty()) bad_node(spec, "empty port");
    }
  } else {
    auto colon = spec.find(':');
    if (colon != std::string::npos && spec.find(':', colon + 1) == std::string::npos) {
      n.host = spec.substr(0, colon);
      port_text = spec.substr(colon + 1);
      if (n.host.empty()) bad_node(spec, "empty host");
      if (port_text.empty()) bad_node(spec, "empty port");
    } else {
      n.host = spec;  // a host name, or an IPv6 address without brackets
    }
  }
  n.port = MEMCACHED_DEFAULT_PORT;
  if (!port_text.empty()) {
    unsigned long port = 0;
    for (char c : port_text) {
      if (c < '0' || c > '9' || port > 65535) bad_node(spec, "the port is not a number 1..65535");
      port = port * 10 + static_cast<unsigned long>(c - '0');
    }
    if (port == 0 || port > 65535) bad_node(spec, "the port is not a number 1..65535");
    n.port = static_cast<in_port_t>(port);
  }
  return n;
}

/// What the handles of one pool are configured with.
struct client_config {
  std::vector<node_address> nodes;
  std::chrono::milliseconds connect_timeout{1000};
  std::chrono::milliseconds io_timeout{1000};
  std::chrono::seconds retry_timeout{1};

  /// Pools are shared by every backend of the process with the same identity.
  [[nodiscard]] std::string identity() const {
    std::string id;
    for (const auto& n : nodes) id += n.display() + '\n';
    id += std::to_string(connect_timeout.count()) + '/' + std::to_string(io_timeout.count()) + '/' +
          std::to_string(retry_timeout.count());
    return id;
  }
};

// ---- errors ------------------------------------------------------------------------------------

/// Return codes that mean "the node could not be reached or did not answer in time".
inline bool is_unavailable(memcached_return_t rc) noexcept {
  switch (rc) {
    case MEMCACHED_HOST_LOOKUP_FAILURE:
    case MEMCACHED_CONNECTION_FAILURE:
    case MEMCACHED_CONNECTION_BIND_FAILURE:
    case MEMCACHED_WRITE_FAILURE:
    case MEMCACHED_READ_FAILURE:
    case MEMCACHED_UNKNOWN_READ_FAILURE:
    case MEMCACHED_PARTIAL_READ:
    case MEMCACHED_SOME_ERRORS:
    case MEMCACHED_NO_SERVERS:
    case MEMCACHED_ERRNO:
    case MEMCACHED_FAIL_UNIX_SOCKET:
    case MEMCACHED_TIMEOUT:
    case MEMCACHED_SERVER_MARKED_DEAD:
    case MEMCACHED_SERVER_TEMPORARILY_DISABLED:
    case MEMCACHED_IN_PROGRESS:
      return true;
    default:
      return false;
  }
}

/// Failures that a connection which died while it sat in the pool gives at once (the server
/// restarted, or dropped idle connections): repeating a read on a new connection is worth it.
/// Not a timeout: repeating that would only double the wait.
inline bool is_broken_connection(memcached_return_t rc) noexcept {
  switch (rc) {
    case MEMCACHED_CONNECTION_FAILURE:
    case MEMCACHED_WRITE_FAILURE:
    case MEMCACHED_READ_FAILURE:
    case MEMCACHED_UNKNOWN_READ_FAILURE:
    case MEMCACHED_PARTIAL_READ:
    case MEMCACHED_ERRNO:
      return true;
    default:
      return false;
  }
}

/// Throws the exception for a failed libmemcached call on `node`: unavailable_error when the node
/// could not be reached, size_error for an item that is too large, engine_error otherwise.
/// `err` is the errno value behind the failure, if any (memcached_last_error_errno).
[[noreturn]] inline void raise(const memcached_st* handle, memcached_return_t rc,
                               const char* origin, const std::string& node, int err) {
  std::string what = std::string("smisk::ipc: memcached ") + origin + " on " + node + " failed: ";
  if (rc == MEMCACHED_SERVER_TEMPORARILY_DISABLED)
    what += "the node could not be reached and is retried later (";
  what += memcached_strerror(handle, rc);
  if (rc == MEMCACHED_SERVER_TEMPORARILY_DISABLED) what += ")";
  if (err != 0) what += std::string(" (") + std::strerror(err) + ")";
  const int code = static_cast<int>(rc);
  if (is_unavailable(rc)) throw unavailable_error(what, code, origin);
  if (rc == MEMCACHED_E2BIG || rc == MEMCACHED_KEY_TOO_BIG)
    throw size_error(what + " (larger than the server's item size limit)", code, origin);
  throw engine_error(what, code, origin);
}

// ---- the handle pool ---------------------------------------------------------------------------

/// Handles that belonged to a parent process: never used, freed or closed in the child (freeing
/// would send "quit" on the parent's connections), only kept reachable.
inline void park_foreign_handles(std::vector<memcached_st*>& handles) noexcept {
  static auto* mutex = new fork_safe_mutex;  // never destroyed: usable during exit
  static auto* parked = new (std::nothrow) std::vector<memcached_st*>;
  std::lock_guard<fork_safe_mutex> lock(*mutex);
  try {
    if (parked != nullptr) parked->insert(parked->end(), handles.begin(), handles.end());
  } catch (...) {  // out of memory: leaking them unreachable is the only other choice
  }
  handles.clear();
}

/// A pool of configured memcached_st handles. A handle is used by one thread at a time (leased),
/// so no memcached_st is ever shared between threads; after fork() the child leaves the parent's
/// handles alone and creates its own. Also remembers which nodes failed recently, for every
/// thread at once, so that a dead node costs one timeout per retry period, not one per call.
class client_pool {
 public:
  explicit client_pool(client_config config)
      : config_(std::move(config)),
        generation_(fork_generation()),
        down_until_(new std::atomic<std::int64_t>[config_.nodes.size()]) {
    for (std::size_t i = 0; i < config_.nodes.size(); ++i) down_until_[i].store(0);
    memcached_st* probe = create_handle();
    find_node_keys(probe);
    idle_.push_back(probe);
  }

  client_pool(const client_pool&) = delete;
  client_pool& operator=(const client_pool&) = delete;

  ~client_pool() {
    std::vector<memcached_st*> mine;
    {
      // fork_safe_mutexes are never nested: the handles are moved out first.
      std::lock_guard<fork_safe_mutex> lock(mutex_);
      if (generation_ == fork_generation()) {
        mine.swap(idle_);
      } else {
        foreign_.insert(foreign_.end(), idle_.begin(), idle_.end());
        idle_.clear();
      }
    }
    for (memcached_st* h : mine) memcached_free(h);
    if (!foreign_.empty()) park_foreign_handles(foreign_);
  }

  /// A handle for the calling thread; it goes back to the pool when the lease ends.
  class lease {
   public:
    lease(client_pool& pool, memcached_st* handle, unsigned generation) noexcept
        : pool_(&pool), handle_(handle), generation_(generation) {}
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() { pool_->release(handle_, generation_); }
    [[nodiscard]] memcached_st* get() const noexcept { return handle_; }

   private:
    client_pool* pool_;
    memcached_st* handle_;
    unsigned generation_;
  };

  /// @throws engine_error if a new handle cannot be created.
  [[nodiscard]] lease acquire() {
    const unsigned generation = fork_generation();
    {
      std::lock_guard<fork_safe_mutex> lock(mutex_);
      if (generation != generation_) {
        // A child of fork(): the idle handles are the parent's connections.
        foreign_.insert(foreign_.end(), idle_.begin(), idle_.end());
        idle_.clear();
        generation_ = generation;
      }
      if (!idle_.empty()) {
        memcached_st* h = idle_.back();
        idle_.pop_back();
        return lease(*this, h, generation);
      }
    }
    return lease(*this, create_handle(), generation);
  }

  [[nodiscard]] const client_config& config() const noexcept { return config_; }
  [[nodiscard]] std::size_t node_count() const noexcept { return config_.nodes.size(); }
  [[nodiscard]] std::string node_name(std::size_t node) const {
    return node < config_.nodes.size() ? config_.nodes[node].display() : std::string("memcached");
  }

  /// A group key that libmemcached places on `node`, for records that every node keeps (the
  /// namespace's type tag and generation).
  [[nodiscard]] const std::string& node_key(std::size_t node) const { return node_keys_[node]; }

  /// The node that libmemcached places `group_key` on.
  [[nodiscard]] static std::size_t node_of(const memcached_st* handle, std::string_view group_key) {
    return memcached_generate_hash(handle, group_key.data(), group_key.size());
  }

  /// @throws unavailable_error if `node` failed less than retry_timeout ago.
  void check_node(std::size_t node) const {
    const std::int64_t until = down_until_[node].load(std::memory_order_relaxed);
    if (until == 0) return;
    const std::int64_t now = now_ms();
    if (now >= until) return;
    throw unavailable_error("smisk::ipc: memcached node " + node_name(node) +
                                " is unavailable: it failed recently and is retried in " +
                                std::to_string(until - now) + " ms",
                            static_cast<int>(MEMCACHED_SERVER_TEMPORARILY_DISABLED),
                            "memcached node health");
  }

  /// Records that `node` failed: calls on it fail at once until retry_timeout has passed.
  void mark_down(std::size_t node) noexcept {
    const auto retry = std::chrono::duration_cast<std::chrono::milliseconds>(config_.retry_timeout);
    if (retry.count() > 0) down_until_[node].store(now_ms() + retry.count());
  }

 private:
  static std::int64_t now_ms() noexcept {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  memcached_st* create_handle() const {
    memcached_st* h = memcached_create(nullptr);
    if (h == nullptr)
      throw engine_error("smisk::ipc: memcached_create failed (out of memory)", 0,
                         "memcached_create");
    auto fail = [&](memcached_return_t rc, const char* origin, const std::string& node) {
      std::string what = std::string("smisk::ipc: memcached ") + origin + " (" + node +
                         ") failed: " + memcached_strerror(h, rc);
      memcached_free(h);
      throw engine_error(what, static_cast<int>(rc), origin);
    };
    auto behave = [&](memcached_behavior_t flag, std::uint64_t value, const char* name) {
      memcached_return_t rc = memcached_behavior_set(h, flag, value);
      if (rc != MEMCACHED_SUCCESS) fail(rc, "memcached_behavior_set", name);
    };
    // Consistent hashing (ketama, MD5, the libketama-compatible placement), and no automatic
    // ejection: a dead node's keys are never silently moved to another node.
    behave(MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1, "KETAMA_WEIGHTED");
    behave(MEMCACHED_BEHAVIOR_AUTO_EJECT_HOSTS, 0, "AUTO_EJECT_HOSTS");
    behave(MEMCACHED_BEHAVIOR_SUPPORT_CAS, 1, "SUPPORT_CAS");
    behave(MEMCACHED_BEHAVIOR_TCP_NODELAY, 1, "TCP_NODELAY");
    const auto connect_ms = static_cast<std::uint64_t>(config_.connect_timeout.count());
    const auto io_ms = static_cast<std::uint64_t>(config_.io_timeout.count());
    behave(MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, connect_ms, "CONNECT_TIMEOUT");
    behave(MEMCACHED_BEHAVIOR_POLL_TIMEOUT, io_ms, "POLL_TIMEOUT");
    behave(MEMCACHED_BEHAVIOR_SND_TIMEOUT, io_ms * 1000, "SND_TIMEOUT");
    behave(MEMCACHED_BEHAVIOR_RCV_TIMEOUT, io_ms * 1000, "RCV_TIMEOUT");
    behave(MEMCACHED_BEHAVIOR_RETRY_TIMEOUT,
           static_cast<std::uint64_t>(config_.retry_timeout.count()), "RETRY_TIMEOUT");
    for (const auto& n : config_.nodes) {
      memcached_return_t rc = n.is_socket() ? memcached_server_add_unix_socket(h, n.host.c_str())
                                            : memcached_server_add(h, n.host.c_str(), n.port);
      if (rc != MEMCACHED_SUCCESS) fail(rc, "memcached_server_add", n.display());
    }
    return h;
  }

  void find_node_keys(memcached_st* h) {
    const std::size_t n = config_.nodes.size();
    node_keys_.assign(n, std::string());
    std::size_t found = 0;
    for (std::uint32_t i = 0; found < n && i < (1u << 20); ++i) {
      std::string key = "smisk-ipc.node." + std::to_string(i);
      std::size_t node = node_of(h, key);
      if (node < n && node_keys_[node].empty()) {
        node_keys_[node] = std::move(key);
        ++found;
      }
    }
    if (found < n) {
      memcached_free(h);
      throw engine_error("smisk::ipc: libmemcached places no key on some memcached node", 0,
                         "memcached_generate_hash");
    }
  }

  void release(memcached_st* handle, unsigned generation) noexcept {
    std::lock_guard<fork_safe_mutex> lock(mutex_);
    try {
      if (generation == generation_ && generation == fork_generation())
        idle_.push_back(handle);
      else
        foreign_.push_back(handle);
    } catch (...) {
      if (generation == fork_generation()) memcached_free(handle);
    }
  }

  const client_config config_;
  /// Short critical sections only: fork() takes it (see fork_safe_mutex), so a child never finds
  /// it held by a parent thread.
  fork_safe_mutex mutex_;
  unsigned generation_;  // fork generation of the handles in idle_
  std::vector<memcached_st*> idle_;
  std::vector<memcached_st*> foreign_;  // a parent's handles, see park_foreign_handles
  std::unique_ptr<std::atomic<std::int64_t>[]> down_until_;  // steady ms; 0: up
  std::vector<std::string> node_keys_;
};

/// The pool of this process for `config`: every backend with the same nodes and timeouts shares
/// one, so that opening many dicts does not open many connections.
inline std::shared_ptr<client_pool> shared_pool(const client_config& config) {
  // Never destroyed. The mutex is a fork_safe_mutex, held only to look up and insert: a new pool
  // connects to its servers, which is done outside it (two threads may both connect; one pool
  // is kept).
  static auto* mutex = new fork_safe_mutex;
  static auto* pools = new std::map<std::string, std::weak_ptr<client_pool>>;
  const std::string id = config.identity();
  {
    std::lock_guard<fork_safe_mutex> lock(*mutex);
    for (auto it = pools->begin(); it != pools->end();) {
      if (it->second.expired() && it->first != id)
        it = pools->erase(it);
      else
        ++it;
    }
    if (std::shared_ptr<client_pool> pool = (*pools)[id].lock()) return pool;
  }
  auto fresh = std::make_shared<client_pool>(config);
  std::shared_ptr<client_pool> kept;
  {
    std::lock_guard<fork_safe_mutex> lock(*mutex);
    kept = (*pools)[id].lock();
    if (!kept) (*pools)[id] = kept = fresh;
  }
  return kept;  // `fresh`, if not kept, is freed here, outside the mutex
}

// ---- keys --------------------------------------------------------------------------------------

/// memcached's longest key.
inline constexpr std::size_t max_key_length = 250;
/// The longest generation number, in decimal digits (a uint64_t).
inline constexpr std::size_t max_generation_digits = 20;
/// Escaped namespace names longer than this are replaced by their digest.
inline constexpr std::size_t max_namespace_length = 100;
/// The marker of a digest in place of a key or a name; '%' followed by '#' never occurs in an
/// escaped text, where '%' is always followed by two uppercase hexadecimal digits.
inline constexpr std::string_view digest_marker = "%#";

/// Appends `raw` with every byte outside '!'..'~', '%' and (with `escape_colon`) ':' written as
/// %XX: the result is a valid memcached key fragment, and different inputs give different results.
inline void escape_into(std::string& out, std::string_view raw, bool escape_colon) {
  static constexpr char hex[] = "0123456789ABCDEF";
  for (char c : raw) {
    const auto u = static_cast<unsigned char>(c);
    if (u > 0x20 && u < 0x7f && c != '%' && !(escape_colon && c == ':')) {
      out += c;
    } else {
      out += '%';
      out += hex[u >> 4];
      out += hex[u & 15];
    }
  }
}

/// The key prefix of a namespace name: escaped (':' too, so that the prefix ends at the first ':'),
/// or, when that is longer than max_namespace_length, "%#" and the SHA-256 of the name.
inline std::string namespace_prefix(std::string_view name) {
  std::string out;
  escape_into(out, name, true);
  if (out.size() > max_namespace_length) out = std::string(digest_marker) + sha256::hex(name);
  return out;
}

/// The part of an item key that names the dict key: the escaped key when the whole item key
/// ("<namespace>:<generation>:<this>") fits in 250 bytes for any generation, otherwise "%#" and
/// the SHA-256 of the raw key bytes.
inline std::string key_fragment(std::string_view prefix, std::string_view raw) {
  const std::size_t room = max_key_length - prefix.size() - 2 - max_generation_digits;
  std::string out;
  if (raw.size() <= room) {
    out.reserve(raw.size());
    escape_into(out, raw, false);
    if (out.size() <= room) return out;
  }
  out.assign(digest_marker);
  out += sha256::hex(raw);
  return out;
}

}  // namespace smisk::ipc::detail::mc
