// smisk-ipc: the memcached backend, for a shared_dict that outgrows one machine.
// SPDX-License-Identifier: MIT
//
// Link with smisk::ipc_memcached (libmemcached). Nothing else in smisk-ipc includes this header,
// so Berkeley DB users never need libmemcached.
//
// How a dict maps onto memcached:
//
//   <ns>:meta               the key and value type tags of the dict (on every node)
//   <ns>:gen                the node's generation of the namespace, a decimal counter (every node)
//   <ns>:<gen>:<key>        one item per dict key, on the node that consistent hashing picks
//
// <ns> is the escaped namespace name (options::name), with ':' escaped too. <key> is the dict key
// with every byte outside '!'..'~' and '%' written as %XX, or, when the whole item key would not
// fit memcached's 250 bytes, "%#" followed by the SHA-256 of the key in hex. The two forms cannot
// collide ('%' is otherwise always followed by two hex digits); two long keys collide only if
// SHA-256 does: for n long keys the probability is below n^2 / 2^257.
//
// An item is placed by "<ns>:<key>" (the generation left out), and each node keeps its own
// <ns>:gen, so a key and the generation it is read under always live on the same node. clear()
// increments the generation on every node: the old items become invisible at once for every
// client (memcached evicts them later). A missing generation record (a restarted node, an
// eviction) is recreated with a random 62-bit value, so an old generation never comes back.
//
// Values are stored verbatim (item flags 0), so counters are readable decimal text. Every read
// fetches the node's generation and the item together (one round trip); read-modify-writes are
// gets + cas (add when absent), retried on conflict, except that 64-bit integer counters are
// added to by memcached's incr (see backend::increment). A set is one round trip: a noreply set
// under the generation last seen, pipelined with a read of the generation (see backend::put);
// values over the servers' item size limit are refused before anything is sent, since memcached's
// set deletes the old item when it refuses a new one. An erase is stored as a short-lived tombstone
// item (flags 'tomb', expiring after a second) written with cas, because memcached has no
// delete-if-unchanged; every operation treats it as absent.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "detail/memcached_client.hpp"
#include "detail/posix.hpp"
#include "error.hpp"
#include "shared_dict.hpp"

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

/// memcached backend of shared_dict. See the top of this header for the stored layout.
///
/// Failover: none, deliberately. A node that is down, unreachable or too slow makes calls on the
/// keys it holds throw unavailable_error within connect_timeout / io_timeout (and at once for the
/// next retry_timeout); keys of other nodes keep working. Keys are never redistributed to the
/// remaining nodes, so no process ever reads a stale or missing value because another process
/// saw the node in a different state. When the node is back, the same dict uses it again (a
/// restarted memcached comes back empty). A call that throws unavailable_error may or may not
/// have taken effect.
///
/// No enumeration: memcached cannot list or count keys, so size(), empty(), keys(), values(),
/// items() and iteration are compile-time errors on a memcached dict. clear() works.
class backend {
 public:
  using options = memcached::options;

  /// Connects, checks (or records) the key and value type tags on every node that answers, and
  /// learns each node's generation.
  /// @throws unavailable_error if no node can be reached; type_mismatch if the namespace was
  /// created with other types; error for invalid options.
  backend(const options& o, std::string_view key_type, std::string_view value_type)
      : ttl_(o.ttl), max_item_size_(o.max_item_size) {
    (void)detail::fork_generation();  // registers the fork handler before any fork()
    if (o.nodes.empty())
      throw error("smisk::ipc: memcached::options::nodes is empty", 0, "memcached::options");
    detail::mc::client_config config;
    for (const auto& spec : o.nodes) config.nodes.push_back(detail::mc::parse_node(spec));
    config.connect_timeout = o.connect_timeout;
    config.io_timeout = o.io_timeout;
    config.retry_timeout = o.retry_timeout;
    name_ =
        o.name.empty() ? "smisk-ipc." + detail::user_name() + "." + detail::program_name() : o.name;
    prefix_ = detail::mc::namespace_prefix(name_);
    gen_key_ = prefix_ + ":gen";
    meta_key_ = prefix_ + ":meta";
    type_tag_ = "smisk-ipc 1\n" + std::string(key_type) + "\n" + std::string(value_type);
    pool_ = detail::mc::shared_pool(config);
    generations_.reset(new std::atomic<std::uint64_t>[pool_->node_count()]);
    for (std::size_t i = 0; i < pool_->node_count(); ++i) generations_[i].store(0);

    // Contact every node: an unreachable engine or other types throw here, not later.
    std::size_t reached = 0;
    std::string first_failure;
    int first_code = 0;
    for (std::size_t node = 0; node < pool_->node_count(); ++node) {
      try {
        auto lease = pool_->acquire();
        prepare_node(lease.get(), node, pool_->node_key(node), true);
        ++reached;
      } catch (const unavailable_error& e) {
        if (first_failure.empty()) {
          first_failure = e.what();
          first_code = e.code();
        }
      }
    }
    if (reached == 0) throw unavailable_error(first_failure, first_code, "memcached::backend");
    if (reached == pool_->node_count()) learn_item_size_limit();
  }

  backend(const backend&) = delete;
  backend& operator=(const backend&) = delete;

  template <class F>
  bool get(std::string_view key, F&& consume) const {
    std::string value;
    {
      auto lease = pool_->acquire();
      located k = locate(lease.get(), key);
      snapshot s = read(lease.get(), k, true);
      if (!s.live()) return false;
      value = std::move(s.value);
    }
    consume(std::string_view(value));
    return true;
  }

  bool exists(std::string_view key) const {
    auto lease = pool_->acquire();
    located k = locate(lease.get(), key);
    return read(lease.get(), k, true).live();
  }

  /// One round trip: a `set` under the generation last seen on the key's node, sent without
  /// waiting for its reply (noreply), followed on the same connection by a read of the
  /// node's generation. memcached runs a connection's commands in order, and a generation never
  /// comes back once changed, so reading the same generation after the write proves that the
  /// write landed while that generation was current. If it changed (a clear() meanwhile), the
  /// value is written again under the new one (the first copy is invisible garbage).
  ///
  /// A noreply set has no reply to fail with, so every refusal must be ruled out first: values
  /// over the item size limit (the smaller of options::max_item_size and the servers' own, read
  /// at construction) are refused with size_error before anything is sent, because memcached's
  /// set deletes the old item when it refuses a new one. A server that runs out of memory drops
  /// the write silently, as it may evict any item at any time.
  void put(std::string_view key, std::string_view value) {
    check_size(value, 0);
    auto lease = pool_->acquire();
    memcached_st* h = lease.get();
    located k = locate(h, key);
    repeat_once once;
    for (unsigned round = 0;; ++round) {
      if (round == max_rounds) give_up(k.node);
      const std::uint64_t generation = last_generation(h, k);
      const std::string item = item_key(k, generation);
      check_size(value, item.size());
      pool_->check_node(k.node);
      memcached_return_t rc = set_without_reply(h, k, item, value);
      fetched seen, unused;
      if (rc == MEMCACHED_SUCCESS) rc = fetch(h, k.group, gen_key_, std::string(), seen, unused);
      if (rc != MEMCACHED_SUCCESS) {
        if (once.again(h, rc)) continue;  // a set is safe to repeat
        fail_retried(h, rc, once.first_rc, once.first_errno, k.node, "set");
      }
      if (!seen.present) {  // the node lost the namespace's records: recreate, write again
        prepare_node(h, k.node, k.group, true);
        continue;
      }
      const std::uint64_t current = parse_generation(seen.value, k.node);
      if (current == generation) return;
      generations_[k.node].store(current, std::memory_order_relaxed);
    }
  }

  bool add(std::string_view key, std::string_view value) {
    check_size(value, 0);
    bool added = false;
    update_item(key, [&](const snapshot& s, std::string& out) {
      added = !s.live();
      if (!added) return modify_action::keep;
      out.assign(value);
      return modify_action::store;
    });
    return added;
  }

  bool remove(std::string_view key) {
    bool removed = false;
    update_item(key, [&](const snapshot& s, std::string&) {
      removed = s.live();
      return removed ? modify_action::erase : modify_action::keep;
    });
    return removed;
  }

  /// Read-modify-write with gets + cas (add when absent), retried from the read on conflict.
  template <class F>
  void modify(std::string_view key, F&& step) {
    update_item(key, [&](const snapshot& s, std::string& out) {
      std::string_view current(s.value);
      return run_step(step, s.live() ? &current : nullptr, out);
    });
  }

  /// A counter added to by memcached itself: `incr` (or `add` when the key is absent) under the
  /// generation last seen on the key's node, then a read of the generation, which proves, as in
  /// put(), that the change landed while that generation was current (else it is made again
  /// under the new one; the first is invisible). Two round trips and never a conflict, where
  /// gets + cas is two round trips retried whenever another client got in between.
  ///
  /// Returns false, changing nothing, when the stored bytes are not an unsigned decimal (a
  /// negative number, an erased key's tombstone), and whenever options::ttl is set (incr does
  /// not renew an item's expiry): shared_dict then uses modify().
  bool increment(std::string_view key, std::uint64_t delta, std::uint64_t& result) {
    if (ttl_.count() > 0) return false;
    auto lease = pool_->acquire();
    memcached_st* h = lease.get();
    located k = locate(h, key);
    std::string text;
    repeat_once once;
    for (unsigned round = 0;; ++round) {
      if (round == max_rounds) give_up(k.node);
      const std::uint64_t generation = last_generation(h, k);
      const std::string item = item_key(k, generation);
      std::uint64_t sum = 0;
      pool_->check_node(k.node);
      memcached_return_t rc = memcached_increment_by_key(h, k.group.data(), k.group.size(),
                                                         item.data(), item.size(), delta, &sum);
      if (rc == MEMCACHED_NOTFOUND) {
        text = std::to_string(delta);
        rc = memcached_add_by_key(h, k.group.data(), k.group.size(), item.data(), item.size(),
                                  text.data(), text.size(), 0, live_flags);
        if (rc == MEMCACHED_NOTSTORED || rc == MEMCACHED_DATA_EXISTS) continue;  // added by another
        sum = delta;
      } else if (rc == MEMCACHED_CLIENT_ERROR) {
        return false;  // "cannot increment or decrement non-numeric value"
      }
      if (rc != MEMCACHED_SUCCESS) {
        // A pooled connection to a node that restarted fails at its first use. The change can
        // be made again only if it cannot have landed where anyone will look: when the node's
        // generation is no longer the one it was made under.
        if (once.again(h, rc)) {
          if (read(h, k, false).generation != generation) continue;
          // The node is up and kept its generation: the incr may have landed. Say so; do not
          // mark the node down.
          detail::mc::raise(h, rc, "incr", pool_->node_name(k.node), once.first_errno);
        }
        fail_retried(h, rc, once.first_rc, once.first_errno, k.node, "incr");
      }
      if (read(h, k, false).generation != generation) continue;  // a clear() got in between
      if (sum < delta) normalise_counter(key);  // wrapped past 2^64: memcached pads with spaces
      result = sum;
      return true;
    }
  }

  /// memcached keeps nothing on disk; a returned write is already on its node.
  void sync() {}

  /// Makes the dict empty for every client: increments the namespace generation on every node.
  /// @throws unavailable_error if some node could not be reached: the nodes that answered were
  /// cleared, the others were not (call clear() again once they are back).
  void clear() {
    std::string failures;
    int code = 0;
    for (std::size_t node = 0; node < pool_->node_count(); ++node) {
      try {
        pool_->check_node(node);
        auto lease = pool_->acquire();
        memcached_st* h = lease.get();
        const std::string& group = pool_->node_key(node);
        std::uint64_t next = 0;
        auto increment = [&] {
          return memcached_increment_by_key(h, group.data(), group.size(), gen_key_.data(),
                                            gen_key_.size(), 1, &next);
        };
        memcached_return_t rc = increment();
        // A pooled connection to a node that restarted fails once (see read()). Repeating the
        // increment is harmless: any new generation clears.
        if (detail::mc::is_broken_connection(rc)) {
          const memcached_return_t first_rc = rc;
          const int first_errno = memcached_last_error_errno(h);
          rc = increment();
          if (detail::mc::is_unavailable(rc))
            fail_retried(h, rc, first_rc, first_errno, node, "incr");
        } else if (detail::mc::is_unavailable(rc)) {
          fail(h, rc, node, "incr");
        }
        if (rc == MEMCACHED_SUCCESS) {
          generations_[node].store(next, std::memory_order_relaxed);
        } else if (rc == MEMCACHED_NOTFOUND) {
          // No generation on the node (restarted, or evicted): a fresh random one hides
          // whatever older items it still holds.
          prepare_node(h, node, group, false);
        } else {
          fail(h, rc, node, "incr");
        }
      } catch (const unavailable_error& e) {
        failures += failures.empty() ? e.what() : std::string("; ") + e.what();
        code = e.code();
      }
    }
    if (!failures.empty())
      throw unavailable_error(
          "smisk::ipc: memcached clear() did not reach every node, the keys "
          "of the others were not cleared: " +
              failures,
          code, "memcached clear");
  }

  // ---- introspection ------------------------------------------------------------------------

  /// The namespace name in use (options::name, or the default).
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// The number of nodes.
  [[nodiscard]] std::size_t node_count() const noexcept { return pool_->node_count(); }
  /// The node ("host:port" or socket path) that stores the dict key whose bytes are `key`.
  [[nodiscard]] std::string node_of(std::string_view key) const {
    auto lease = pool_->acquire();
    return pool_->node_name(locate(lease.get(), key).node);
  }
  /// The memcached item key that stores `key` in the current generation (as the last call saw
  /// it), for looking at the data with other tools.
  [[nodiscard]] std::string item_key_of(std::string_view key) const {
    auto lease = pool_->acquire();
    located k = locate(lease.get(), key);
    return item_key(k, generations_[k.node].load(std::memory_order_relaxed));
  }

 private:
  static constexpr std::uint32_t live_flags = 0;
  static constexpr std::uint32_t tombstone_flags = 0x746f6d62;  // "tomb"
  static constexpr time_t tombstone_expiry = 1;                 // seconds

  /// A dict key's place: the group key that picks its node (namespace and key fragment, no
  /// generation), the node, and the key fragment.
  struct located {
    std::string fragment;
    std::string group;
    std::size_t node = 0;
  };

  /// What a read saw on the key's node.
  struct snapshot {
    std::uint64_t generation = 0;
    bool present = false;  // an item, live or tombstone
    std::uint32_t flags = 0;
    std::uint64_t cas = 0;
    std::string value;
    [[nodiscard]] bool live() const noexcept { return present && flags != tombstone_flags; }
  };

  located locate(const memcached_st* h, std::string_view key) const {
    located k;
    k.fragment = detail::mc::key_fragment(prefix_, key);
    k.group.reserve(prefix_.size() + 1 + k.fragment.size());
    k.group.append(prefix_).append(1, ':').append(k.fragment);
    k.node = detail::mc::client_pool::node_of(h, k.group);
    if (k.node >= pool_->node_count())
      throw engine_error("smisk::ipc: libmemcached placed a key on no node", 0,
                         "memcached_generate_hash");
    return k;
  }

  /// The generation last seen on the key's node (read from the node the first time).
  std::uint64_t last_generation(memcached_st* h, const located& k) const {
    const std::uint64_t seen = generations_[k.node].load(std::memory_order_relaxed);
    return seen != 0 ? seen : read(h, k, false).generation;
  }

  std::string item_key(const located& k, std::uint64_t generation) const {
    std::string key;
    key.reserve(prefix_.size() + 2 + detail::mc::max_generation_digits + k.fragment.size());
    key.append(prefix_).append(1, ':').append(std::to_string(generation)).append(1, ':');
    key.append(k.fragment);
    return key;
  }

  time_t expiry() const noexcept {
    const auto seconds = ttl_.count();
    if (seconds <= 0) return 0;
    // memcached reads more than 30 days as an absolute Unix time.
    if (seconds > 30L * 24 * 3600) return std::time(nullptr) + static_cast<time_t>(seconds);
    return static_cast<time_t>(seconds);
  }

  /// memcached's item header and key terminator, about 50 bytes, rounded up.
  static constexpr std::size_t item_overhead = 64;

  /// @throws size_error if `value` stored under an item key of `key_size` bytes would exceed
  /// max_item_size, before anything is sent.
  void check_size(std::string_view value, std::size_t key_size) const {
    if (value.size() <= max_item_size_ && value.size() + key_size + item_overhead <= max_item_size_)
      return;
    throw size_error("smisk::ipc: memcached value of " + std::to_string(value.size()) +
                         " bytes is larger than the item size limit (" +
                         std::to_string(max_item_size_) +
                         " bytes with the key and the item header: options::max_item_size, or the "
                         "servers' own limit if smaller)",
                     static_cast<int>(MEMCACHED_E2BIG), "memcached store");
  }

  [[noreturn]] void fail(const memcached_st* h, memcached_return_t rc, std::size_t node,
                         const char* origin) const {
    fail(h, rc, node, origin, memcached_last_error_errno(h));
  }
  [[noreturn]] void fail(const memcached_st* h, memcached_return_t rc, std::size_t node,
                         const char* origin, int err) const {
    if (detail::mc::is_unavailable(rc) && rc != MEMCACHED_SERVER_TEMPORARILY_DISABLED)
      pool_->mark_down(node);
    detail::mc::raise(h, rc, origin, pool_->node_name(node), err);
  }

  /// A call that failed a second time after a retry: report the first failure when the second
  /// one is only libmemcached refusing to retry so soon.
  [[noreturn]] void fail_retried(const memcached_st* h, memcached_return_t rc,
                                 memcached_return_t first_rc, int first_errno, std::size_t node,
                                 const char* origin) const {
    if (first_rc != MEMCACHED_SUCCESS && rc == MEMCACHED_SERVER_TEMPORARILY_DISABLED)
      fail(h, first_rc, node, origin, first_errno);
    fail(h, rc, node, origin);
  }

  /// Runs one libmemcached call on `node` (refused at once while the node is marked down) and
  /// returns its code; an unavailable node throws (and is marked down).
  template <class Call>
  memcached_return_t attempt(const memcached_st* h, std::size_t node, const char* origin,
                             Call&& call) const {
    pool_->check_node(node);
    memcached_return_t rc = call();
    if (detail::mc::is_unavailable(rc)) fail(h, rc, node, origin);
    return rc;
  }

  /// memcached's incr keeps a number's length when it can, padding a shorter one with spaces:
  /// after a wrap past 2^64 the counter is rewritten as plain digits (the same number).
  void normalise_counter(std::string_view key) {
    update_item(key, [](const snapshot& s, std::string& out) {
      if (!s.live()) return modify_action::keep;
      const std::size_t digits = s.value.find_last_not_of(' ') + 1;
      if (digits == s.value.size() || digits == 0) return modify_action::keep;
      out.assign(s.value, 0, digits);
      return modify_action::store;
    });
  }

  /// memcached_set with noreply (the behaviour is switched on for this one call only).
  memcached_return_t set_without_reply(memcached_st* h, const located& k, const std::string& item,
                                       std::string_view value) const {
    memcached_return_t rc = memcached_behavior_set(h, MEMCACHED_BEHAVIOR_NOREPLY, 1);
    if (rc != MEMCACHED_SUCCESS) return rc;
    rc = memcached_set_by_key(h, k.group.data(), k.group.size(), item.data(), item.size(),
                              value.data(), value.size(), expiry(), live_flags);
    const memcached_return_t off = memcached_behavior_set(h, MEMCACHED_BEHAVIOR_NOREPLY, 0);
    if (rc == MEMCACHED_BUFFERED) rc = MEMCACHED_SUCCESS;
    return rc != MEMCACHED_SUCCESS ? rc : off;
  }

  /// Lowers max_item_size_ to the smallest item size limit of the servers ("stats settings",
  /// item_size_max), so that a value a server would refuse is refused here first (see put()).
  void learn_item_size_limit() {
    struct context {
      std::size_t smallest = 0;
    } found;
    auto on_stat = [](const memcached_instance_st*, const char* key, size_t key_length,
                      const char* value, size_t value_length, void* p) -> memcached_return_t {
      if (std::string_view(key, key_length) != "item_size_max") return MEMCACHED_SUCCESS;
      std::size_t limit = 0;
      for (char c : std::string_view(value, value_length)) {
        if (c < '0' || c > '9') return MEMCACHED_SUCCESS;
        limit = limit * 10 + static_cast<std::size_t>(c - '0');
      }
      auto* f = static_cast<context*>(p);
      if (limit > 0 && (f->smallest == 0 || limit < f->smallest)) f->smallest = limit;
      return MEMCACHED_SUCCESS;
    };
    auto lease = pool_->acquire();
    char args[] = "settings";
    (void)memcached_stat_execute(lease.get(), args, on_stat, &found);
    if (found.smallest != 0 && found.smallest < max_item_size_) max_item_size_ = found.smallest;
  }

  /// The rule of calls that are safe to repeat: a pooled connection to a node that restarted
  /// fails once (libmemcached has closed it, and the retry connects anew), so the first
  /// broken-connection failure is retried; any other failure, or a second one, is reported.
  struct repeat_once {
    memcached_return_t first_rc = MEMCACHED_SUCCESS;
    int first_errno = 0;
    /// @returns true if the call should be made again.
    bool again(const memcached_st* h, memcached_return_t rc) noexcept {
      if (first_rc != MEMCACHED_SUCCESS || !detail::mc::is_broken_connection(rc)) return false;
      first_rc = rc;
      first_errno = memcached_last_error_errno(h);
      return true;
    }
  };

  /// One item of a fetch.
  struct fetched {
    bool present = false;
    std::uint32_t flags = 0;
    std::uint64_t cas = 0;
    std::string value;
  };

  /// Fetches `first` and, if `second` is not empty, `second` from the node of `group` in one
  /// request (gets). Reads every reply even if storing one fails, so that the connection never
  /// goes back to the pool with a reply pending. Callers ask for a record that must exist first
  /// (the generation), so a reply that ends early is never mistaken for a missing item.
  /// @returns MEMCACHED_SUCCESS or the failure.
  static memcached_return_t fetch(memcached_st* h, std::string_view group, const std::string& first,
                                  const std::string& second, fetched& a, fetched& b) {
    const char* keys[2] = {first.data(), second.data()};
    std::size_t lengths[2] = {first.size(), second.size()};
    const std::size_t count = second.empty() ? 1 : 2;
    a.present = b.present = false;
    memcached_return_t rc =
        memcached_mget_by_key(h, group.data(), group.size(), keys, lengths, count);
    if (rc != MEMCACHED_SUCCESS) return rc;
    memcached_result_st result{};
    if (memcached_result_create(h, &result) == nullptr) return MEMCACHED_MEMORY_ALLOCATION_FAILURE;
    bool out_of_memory = false;
    while (memcached_fetch_result(h, &result, &rc) != nullptr) {
      std::string_view key(memcached_result_key_value(&result),
                           memcached_result_key_length(&result));
      fetched* into = key == first ? &a : (count == 2 && key == second) ? &b : nullptr;
      if (into == nullptr) continue;
      try {
        into->value.assign(memcached_result_value(&result), memcached_result_length(&result));
        into->flags = memcached_result_flags(&result);
        into->cas = memcached_result_cas(&result);
        into->present = true;
      } catch (...) {  // out of memory: keep reading the replies
        out_of_memory = true;
      }
    }
    memcached_result_free(&result);
    if (out_of_memory) return MEMCACHED_MEMORY_ALLOCATION_FAILURE;
    if (rc == MEMCACHED_END || rc == MEMCACHED_NOTFOUND || rc == MEMCACHED_SUCCESS)
      return MEMCACHED_SUCCESS;
    return rc;
  }

  /// Reads the key's node generation and (with `want_item`) its item under that generation.
  /// Starts from the generation last seen on the node, so that the usual read is one round trip.
  snapshot read(memcached_st* h, const located& k, bool want_item) const {
    snapshot s;
    fetched generation, item;
    repeat_once once;
    for (unsigned round = 0;; ++round) {
      if (round == max_rounds) give_up(k.node);
      pool_->check_node(k.node);
      const std::uint64_t guess = generations_[k.node].load(std::memory_order_relaxed);
      const std::string item_name = want_item && guess != 0 ? item_key(k, guess) : std::string();
      memcached_return_t rc = fetch(h, k.group, gen_key_, item_name, generation, item);
      if (rc != MEMCACHED_SUCCESS) {
        if (once.again(h, rc)) continue;  // reads are safe to repeat
        fail_retried(h, rc, once.first_rc, once.first_errno, k.node, "get");
      }
      if (!generation.present) {
        prepare_node(h, k.node, k.group, false);
        continue;
      }
      const std::uint64_t current = parse_generation(generation.value, k.node);
      if (current != guess) {
        generations_[k.node].store(current, std::memory_order_relaxed);
        if (want_item) continue;
      }
      s.generation = current;
      if (want_item && item.present) {
        s.present = true;
        s.flags = item.flags;
        s.cas = item.cas;
        s.value = std::move(item.value);
      }
      return s;
    }
  }

  /// Reads that keep finding the generation changed or missing: a node that cannot keep the
  /// namespace's records (for example one that evicts everything at once).
  static constexpr unsigned max_rounds = 1000;
  [[noreturn]] void give_up(std::size_t node) const {
    throw engine_error("smisk::ipc: memcached node " + pool_->node_name(node) +
                           " does not keep the records of namespace \"" + name_ + "\"",
                       0, "memcached get");
  }

  std::uint64_t parse_generation(std::string_view text, std::size_t node) const {
    std::uint64_t g = 0;
    bool ok = !text.empty() && text.size() <= detail::mc::max_generation_digits;
    for (char c : text) {
      if (c < '0' || c > '9') {
        ok = false;
        break;
      }
      g = g * 10 + static_cast<std::uint64_t>(c - '0');
    }
    if (!ok || g == 0)
      throw engine_error("smisk::ipc: memcached record " + gen_key_ + " on " +
                             pool_->node_name(node) + " is not a generation number",
                         0, "memcached get");
    return g;
  }

  /// Makes sure the node has the namespace's type tag (checking it against ours) and a
  /// generation. With `learn`, also reads the generation into the cache.
  void prepare_node(memcached_st* h, std::size_t node, std::string_view group, bool learn) const {
    repeat_once once;
    for (unsigned round = 0;; ++round) {
      if (round == max_rounds) give_up(node);
      pool_->check_node(node);
      // The tag and the generation in one request.
      fetched tag_item, generation_item;
      memcached_return_t rc = fetch(h, group, meta_key_, gen_key_, tag_item, generation_item);
      const bool have_tag = tag_item.present, have_generation = generation_item.present;
      const std::string& tag = tag_item.value;
      const std::string& generation = generation_item.value;
      if (rc != MEMCACHED_SUCCESS) {
        if (once.again(h, rc)) continue;
        fail_retried(h, rc, once.first_rc, once.first_errno, node, "get");
      }
      if (have_tag && tag != type_tag_) {
        // Written before enum tags named the enum: upgraded (cas) to the current description.
        const std::string legacy = detail::without_enum_names(type_tag_);
        if (legacy == type_tag_ || tag != legacy) throw_type_mismatch(tag);
        rc = attempt(h, node, "cas", [&] {
          return memcached_cas_by_key(h, group.data(), group.size(), meta_key_.data(),
                                      meta_key_.size(), type_tag_.data(), type_tag_.size(), 0,
                                      live_flags, tag_item.cas);
        });
        if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_DATA_EXISTS && rc != MEMCACHED_NOTFOUND)
          fail(h, rc, node, "cas");
        continue;  // re-read
      }
      if (!have_tag) {
        rc = attempt(h, node, "add", [&] {
          return memcached_add_by_key(h, group.data(), group.size(), meta_key_.data(),
                                      meta_key_.size(), type_tag_.data(), type_tag_.size(), 0,
                                      live_flags);
        });
        if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTSTORED && rc != MEMCACHED_DATA_EXISTS)
          fail(h, rc, node, "add");
        continue;  // re-read: someone else may have added another tag first
      }
      if (!have_generation) {
        const std::string fresh = std::to_string(fresh_generation());
        rc = attempt(h, node, "add", [&] {
          return memcached_add_by_key(h, group.data(), group.size(), gen_key_.data(),
                                      gen_key_.size(), fresh.data(), fresh.size(), 0, live_flags);
        });
        if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTSTORED && rc != MEMCACHED_DATA_EXISTS)
          fail(h, rc, node, "add");
        continue;
      }
      const std::uint64_t g = parse_generation(generation, node);
      if (learn) generations_[node].store(g, std::memory_order_relaxed);
      return;
    }
  }

  [[noreturn]] void throw_type_mismatch(const std::string& stored) const {
    auto show = [](std::string tag) {
      const std::string header = "smisk-ipc 1\n";
      if (tag.compare(0, header.size(), header) == 0) tag.erase(0, header.size());
      auto nl = tag.find('\n');
      if (nl != std::string::npos) tag.replace(nl, 1, " -> ");
      return tag;
    };
    throw type_mismatch("smisk::ipc: memcached namespace \"" + name_ + "\" holds a dict of " +
                        show(stored) + ", opened as " + show(type_tag_));
  }

  /// A random generation in [1, 2^62): never one that was used before, with overwhelming
  /// probability, and far from overflowing memcached's 64-bit incr.
  static std::uint64_t fresh_generation() {
    static auto* mutex = new detail::fork_safe_mutex;  // never destroyed; see fork_safe_mutex
    static std::mt19937_64 engine = [] {
      std::random_device device;
      std::seed_seq seed{device(), device(), device(), device(), static_cast<unsigned>(::getpid())};
      return std::mt19937_64(seed);
    }();
    static unsigned seeded_in = detail::fork_generation();
    std::lock_guard<detail::fork_safe_mutex> lock(*mutex);
    if (seeded_in != detail::fork_generation()) {  // a child must not repeat its parent
      std::random_device device;
      std::seed_seq seed{device(), device(), device(), device(), static_cast<unsigned>(::getpid())};
      engine.seed(seed);
      seeded_in = detail::fork_generation();
    }
    return (engine() >> 2) | 1;
  }

  /// Calls the user's step out of line: inlined into the CAS loop, GCC 12 reports the
  /// "absent" path of steps that assume a value as uninitialised reads (-Wmaybe-uninitialized).
  template <class F>
  [[gnu::noinline]] static modify_action run_step(F& step, const std::string_view* current,
                                                  std::string& out) {
    return step(current, out);
  }

  /// The gets + cas loop behind add, remove and modify. `decide(snapshot, out)` says what to do
  /// with the current item; store and erase are applied with cas (add when there is no item) and
  /// the whole step is retried when another client changed the item in between.
  template <class Decide>
  void update_item(std::string_view key, Decide&& decide) {
    auto lease = pool_->acquire();
    memcached_st* h = lease.get();
    located k = locate(h, key);
    std::string out;
    for (unsigned conflicts = 0;; ++conflicts) {
      if (conflicts > 2) backoff(conflicts);
      snapshot s = read(h, k, true);
      out.clear();
      const modify_action action = decide(s, out);
      if (action == modify_action::keep) return;
      if (action == modify_action::erase && !s.live()) return;
      const std::string item = item_key(k, s.generation);
      const bool erase = action == modify_action::erase;
      if (!erase) check_size(out, item.size());
      const std::string_view bytes = erase ? std::string_view() : std::string_view(out);
      const std::uint32_t flags = erase ? tombstone_flags : live_flags;
      const time_t expires = erase ? tombstone_expiry : expiry();
      memcached_return_t rc;
      if (s.present) {
        rc = attempt(h, k.node, "cas", [&] {
          return memcached_cas_by_key(h, k.group.data(), k.group.size(), item.data(), item.size(),
                                      bytes.data(), bytes.size(), expires, flags, s.cas);
        });
        if (rc == MEMCACHED_SUCCESS) return;
        if (rc != MEMCACHED_DATA_EXISTS && rc != MEMCACHED_NOTFOUND) fail(h, rc, k.node, "cas");
      } else {
        rc = attempt(h, k.node, "add", [&] {
          return memcached_add_by_key(h, k.group.data(), k.group.size(), item.data(), item.size(),
                                      bytes.data(), bytes.size(), expires, flags);
        });
        if (rc == MEMCACHED_SUCCESS) return;
        if (rc != MEMCACHED_NOTSTORED && rc != MEMCACHED_DATA_EXISTS) fail(h, rc, k.node, "add");
      }
    }
  }

  /// After a few CAS conflicts in a row, waits a little (randomised, growing to about 1 ms) so
  /// that contending processes stop colliding.
  static void backoff(unsigned conflicts) {
    thread_local std::minstd_rand jitter;
    thread_local pid_t seeded_in = 0;
    if (seeded_in != ::getpid()) {  // forked children must not all wait alike
      seeded_in = ::getpid();
      jitter.seed(static_cast<unsigned>(
          std::chrono::steady_clock::now().time_since_epoch().count() ^ (seeded_in << 16)));
    }
    const unsigned cap = conflicts < 12 ? (1u << (conflicts - 2)) : 1024u;
    std::this_thread::sleep_for(std::chrono::microseconds(jitter() % (cap + 1)));
  }

  std::chrono::seconds ttl_;
  std::size_t max_item_size_;
  std::string name_;
  std::string prefix_;
  std::string gen_key_;
  std::string meta_key_;
  std::string type_tag_;
  std::shared_ptr<detail::mc::client_pool> pool_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> generations_;  // per node; 0: not known yet
};

/// `memcached::shared_dict<K, V>`: a shared_dict on memcached.
template <class K, class V>
using shared_dict = ::smisk::ipc::shared_dict<K, V, backend>;

}  // namespace smisk::ipc::memcached
