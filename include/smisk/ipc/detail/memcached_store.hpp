// smisk-ipc: the mechanics under memcached::backend: where a key lives, the namespace's
// generations, reads of a node, the cas loop.
// SPDX-License-Identifier: MIT
//
// The stored layout they implement is described at the top of memcached.hpp.
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

#include "../backend.hpp"
#include "../codec.hpp"
#include "../error.hpp"
#include "../memcached_options.hpp"
#include "memcached_client.hpp"
#include "posix.hpp"
#include "type_tags.hpp"

namespace smisk::ipc::detail::mc {

/// The state of a memcached::backend and the protocol steps its operations are made of. The
/// backend derives from it; its public member functions are the dict's operations.
class store_core {
 protected:
  /// Reads the options and joins the process's connection pool for their nodes; contacts no
  /// node (the backend does, once it is constructed).
  store_core(const memcached::options& o, std::string_view key_type, std::string_view value_type)
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
    type_tag_ = type_description{std::string(key_type), std::string(value_type)}.compact();
    pool_ = detail::mc::shared_pool(config);
    generations_.reset(new std::atomic<std::uint64_t>[pool_->node_count()]);
    for (std::size_t i = 0; i < pool_->node_count(); ++i) generations_[i].store(0);
  }
  ~store_core() = default;
  store_core(const store_core&) = delete;
  store_core& operator=(const store_core&) = delete;

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
        if (match_tags(tag, type_tag_) != tag_match::upgrade) throw_type_mismatch(tag);
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
      const std::string_view header = type_description::header;
      if (tag.compare(0, header.size(), header) == 0) tag.erase(0, header.size());
      auto nl = tag.find('\n');
      if (nl != std::string::npos) tag.replace(nl, 1, " -> ");
      return tag;
    };
    throw type_mismatch("smisk::ipc: memcached namespace \"" + name_ + "\" holds a dict of " +
                        show(stored) + ", opened as " + show(type_tag_) +
                        same_name_hint(name_, "servers"));
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

}  // namespace smisk::ipc::detail::mc
