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
#include "detail/memcached_store.hpp"
#include "detail/posix.hpp"
#include "error.hpp"
#include "memcached_options.hpp"
#include "shared_dict.hpp"

namespace smisk::ipc::memcached {

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
class backend : private detail::mc::store_core {
 public:
  using options = memcached::options;

  /// Connects, checks (or records) the key and value type tags on every node that answers, and
  /// learns each node's generation.
  /// @throws unavailable_error if no node can be reached; type_mismatch if the namespace was
  /// created with other types; error for invalid options.
  backend(const options& o, std::string_view key_type, std::string_view value_type)
      : store_core(o, key_type, value_type) {
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
};

/// `memcached::shared_dict<K, V>`: a shared_dict on memcached.
template <class K, class V>
using shared_dict = ::smisk::ipc::shared_dict<K, V, backend>;

}  // namespace smisk::ipc::memcached
