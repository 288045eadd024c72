// smisk-ipc: shared_dict, a dictionary that the processes of one application share.
// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "codec.hpp"
#include "detail/scoped_set.hpp"
#include "error.hpp"

namespace smisk::ipc {

namespace bsddb {
class backend;
}

namespace detail {
/// The backend whose read-modify-write function is running on this thread, if any (see
/// shared_dict::check_reentry).
inline const void*& active_modify() noexcept {
  thread_local const void* backend = nullptr;
  return backend;
}
/// Marks a read-modify-write function of `backend` as running on this thread.
class modify_scope : scoped_set<const void*> {
 public:
  explicit modify_scope(const void* backend) noexcept : scoped_set(active_modify(), backend) {}
};
}  // namespace detail

/// A dictionary shared by every process and thread that opens it with the same options.
///
/// Every single-key operation is atomic across processes and threads. Handles are cheap to copy;
/// copies share one open engine. The README's Guarantees say what survives what.
template <class K, class V, class Backend = bsddb::backend>
class shared_dict {
  static_assert((detail::check_codec<K>(), true));
  static_assert((detail::check_codec<V>(), true));
  static_assert(detail::check_backend<Backend>());

 public:
  using key_type = K;
  using mapped_type = V;
  using value_type = std::pair<K, V>;
  using backend_type = Backend;
  using options = typename Backend::options;

  class reference;
  class const_iterator;
  using iterator = const_iterator;
  /// For std::string keys, lookups (get, at, contains, erase, d[k]) also take anything that
  /// converts to std::string_view, a literal or a view, without building a std::string.
  template <class T>
  using if_view = std::enable_if_t<std::is_same_v<K, std::string> && !std::is_same_v<T, K> &&
                                       std::is_convertible_v<const T&, std::string_view>,
                                   int>;

  /// Opens the dict with default options (for bsddb: a temporary dict shared by every process
  /// of this program and user).
  /// @throws error (home_error, type_mismatch, engine_error, ...) if it cannot be opened.
  shared_dict() : shared_dict(options{}) {}

  /// Opens the dict. Type mismatches, a refused home and an unreachable engine throw here.
  explicit shared_dict(options opts)
      : backend_(
            std::make_shared<Backend>(opts, detail::codec_name<K>(), detail::codec_name<V>())) {}

  // ---- lookup -----------------------------------------------------------------------------

  /// The value stored under `key`, or nothing.
  /// @throws codec_error if the stored bytes do not decode as V.
  [[nodiscard]] std::optional<V> get(const K& key) const {
    detail::encoded<K> k(key);
    return lookup(k.bytes());
  }
  template <class T, if_view<T> = 0>
  [[nodiscard]] std::optional<V> get(const T& key) const {
    return lookup(std::string_view(key));
  }

  /// The value stored under `key`, or `fallback`.
  [[nodiscard]] V get(const K& key, V fallback) const {
    return get(key).value_or(std::move(fallback));
  }
  template <class T, if_view<T> = 0>
  [[nodiscard]] V get(const T& key, V fallback) const {
    return get(key).value_or(std::move(fallback));
  }

  /// The value stored under `key`.
  /// @throws key_error if there is none.
  [[nodiscard]] V at(const K& key) const { return found(get(key), key); }
  template <class T, if_view<T> = 0>
  [[nodiscard]] V at(const T& key) const {
    return found(get(key), std::string_view(key));
  }

  /// Whether `key` is stored.
  [[nodiscard]] bool contains(const K& key) const {
    detail::encoded<K> k(key);
    return exists(k.bytes());
  }
  template <class T, if_view<T> = 0>
  [[nodiscard]] bool contains(const T& key) const {
    return exists(std::string_view(key));
  }

  /// `d[k] = v` stores, `V v = d[k]` reads (throwing key_error when absent, like Python); see
  /// shared_dict_reference.hpp for what else it does.
  [[nodiscard]] reference operator[](const K& key) { return reference(*this, key); }
  template <class T, if_view<T> = 0>
  [[nodiscard]] reference operator[](const T& key) {
    return reference(*this, K(std::string_view(key)));
  }
  /// Reads `key`. @throws key_error when absent. (A const value: `cd[k] = v` on a const dict
  /// would otherwise compile and change nothing.)
  [[nodiscard]] const V operator[](const K& key) const {  // NOLINT(readability-const-return-type)
    return at(key);
  }
  template <class T, if_view<T> = 0>
  [[nodiscard]] const V operator[](const T& key) const {  // NOLINT(readability-const-return-type)
    return at(key);
  }

  // ---- change -----------------------------------------------------------------------------

  /// Stores `value` under `key`, replacing what was there.
  void set(const K& key, const V& value) {
    check_reentry();
    detail::encoded<K> k(key);
    detail::encoded<V> v(value);
    backend_->put(k.bytes(), v.bytes());
  }

  /// Stores `value` only if `key` is absent. @returns true if it was absent (and so stored).
  [[nodiscard]] bool insert(const K& key, const V& value) {
    check_reentry();
    detail::encoded<K> k(key);
    detail::encoded<V> v(value);
    return backend_->add(k.bytes(), v.bytes());
  }

  /// Stores `value` if `key` is absent. @returns the value now stored.
  V setdefault(const K& key, const V& value) {
    detail::encoded<K> k(key);
    detail::encoded<V> v(value);
    std::optional<V> existing;
    modify(k.bytes(), [&](const std::string_view* current, std::string& out) {
      if (current) {
        existing.emplace(detail::decode<V>(*current));
        return modify_action::keep;
      }
      existing.reset();
      out.assign(v.bytes());
      return modify_action::store;
    });
    return existing ? std::move(*existing) : value;
  }

  /// Removes `key`. @returns true if it was there.
  bool erase(const K& key) {
    detail::encoded<K> k(key);
    return remove(k.bytes());
  }
  template <class T, if_view<T> = 0>
  bool erase(const T& key) {
    return remove(std::string_view(key));
  }

  /// Removes `key` and returns the value it had, or nothing if it was absent.
  std::optional<V> pop(const K& key) {
    detail::encoded<K> k(key);
    std::optional<V> old;
    modify(k.bytes(), [&](const std::string_view* current, std::string&) {
      if (!current) {
        old.reset();
        return modify_action::keep;
      }
      old.emplace(detail::decode<V>(*current));
      return modify_action::erase;
    });
    return old;
  }

  /// Atomically replaces the value with `fn(current)`, where `current` is the stored value or
  /// nothing. `fn` may be called more than once when processes contend; only the last call's
  /// result is stored, so `fn` should have no side effects. An exception from `fn` leaves the
  /// value unchanged and propagates. @returns the value stored.
  template <class F>
  V update(const K& key, F&& fn) {
    static_assert(std::is_invocable_v<F&, std::optional<V>>,
                  "smisk::ipc: update(key, fn) needs fn callable as fn(std::optional<V>) -> V");
    detail::encoded<K> k(key);
    std::optional<V> result;
    modify(k.bytes(), [&](const std::string_view* current, std::string& out) {
      std::optional<V> old;
      if (current) old.emplace(detail::decode<V>(*current));
      result.emplace(fn(std::move(old)));
      codec<V>::encode(*result, out);
      return modify_action::store;
    });
    return std::move(*result);
  }

  /// Atomically adds `delta` to the stored number (absent counts as 0). Unsigned integers wrap
  /// around, as in C++; a signed integer that would go past the range of its type is left
  /// unchanged. On a backend with a counter of its own (memcached's incr), 64-bit integers are
  /// added to by the engine itself when `delta` is not negative. @returns the new value.
  /// @throws overflow_error if a signed integer would overflow; codec_error if the stored bytes
  /// are not a V.
  V increment(const K& key, V delta) {
    static_assert(counter_value,
                  "smisk::ipc: increment() needs an arithmetic value type (an "
                  "integer or a floating-point number); use update() otherwise");
    if constexpr (counter_value) {
      if constexpr (native_increment) {
        if (!(delta < V(0))) {
          check_reentry();
          detail::encoded<K> k(key);
          const auto d = static_cast<std::uint64_t>(delta);
          std::uint64_t sum = 0;
          if (backend_->increment(k.bytes(), d, sum)) {
            if (sum <= static_cast<std::uint64_t>(std::numeric_limits<V>::max()))
              return static_cast<V>(sum);
            // A signed counter went past its maximum: take this call's delta back out.
            modify(k.bytes(), [d](const std::string_view* current, std::string& out) {
              std::uint64_t n = 0;
              if (current == nullptr || !detail::parse_unsigned(*current, n))
                return modify_action::keep;  // replaced meanwhile: nothing of this call is left
              out = std::to_string(n - d);
              return modify_action::store;
            });
            throw_overflow("increment", delta);
          }
        }
      }
      return update(key, [delta](std::optional<V> v) {
        const V current = v.value_or(V(0));
        if constexpr (std::is_integral_v<V> && std::is_signed_v<V>) {
          V sum;
          if (__builtin_add_overflow(current, delta, &sum)) throw_overflow("increment", delta);
          return sum;
        } else {
          return static_cast<V>(current + delta);  // unsigned: modulo 2^N, as in C++
        }
      });
    } else {
      return delta;
    }
  }
  /// increment(key, 1).
  V increment(const K& key) { return increment(key, one()); }

  /// Stores `desired` if the stored value equals `expected` (nothing means "absent"). Values are
  /// compared by their stored bytes. @returns whether it stored.
  [[nodiscard]] bool compare_exchange(const K& key, const std::optional<V>& expected,
                                      const V& desired) {
    detail::encoded<K> k(key);
    detail::encoded<V> d(desired);
    std::optional<std::string> want;
    if (expected) {
      want.emplace();
      codec<V>::encode(*expected, *want);
    }
    bool swapped = false;
    modify(k.bytes(), [&](const std::string_view* current, std::string& out) {
      swapped = want ? (current && *current == *want) : (current == nullptr);
      if (!swapped) return modify_action::keep;
      out.assign(d.bytes());
      return modify_action::store;
    });
    return swapped;
  }

  /// Stores every (key, value) pair of `pairs`. Each pair is stored atomically; the range as a
  /// whole is not one transaction.
  template <class Range>
  void set_many(const Range& pairs) {
    for (const auto& [key, value] : pairs) set(key, value);
  }

  // ---- whole dict (where the backend can enumerate) --------------------------------------------

  /// The number of keys. Counts by walking the store: O(n).
  [[nodiscard]] std::size_t size() const {
    static_assert(backend_traits<Backend>::can_count,
                  "smisk::ipc: this backend cannot count its keys (memcached, for one, has no way "
                  "to list or count keys), so size() is not available");
    check_reentry();
    if constexpr (backend_traits<Backend>::can_count)
      return backend_->count();
    else
      return 0;
  }

  /// Whether the dict has no keys.
  [[nodiscard]] bool empty() const {
    static_assert(backend_traits<Backend>::can_count,
                  "smisk::ipc: this backend cannot count its keys (memcached, for one, has no way "
                  "to list or count keys), so empty() is not available");
    check_reentry();
    if constexpr (detail::has_empty<Backend>::value)
      return backend_->empty();
    else if constexpr (backend_traits<Backend>::can_count)
      return backend_->count() == 0;
    else
      return true;
  }

  /// Removes every key, atomically for every process.
  void clear() {
    static_assert(backend_traits<Backend>::can_clear,
                  "smisk::ipc: this backend cannot clear itself, so clear() is not available");
    check_reentry();
    if constexpr (backend_traits<Backend>::can_clear) backend_->clear();
  }

  /// A snapshot of the keys.
  [[nodiscard]] std::vector<K> keys() const {
    std::vector<K> out;
    visit([&](std::string_view k, std::string_view) { out.push_back(detail::decode<K>(k)); });
    return out;
  }

  /// A snapshot of the values.
  [[nodiscard]] std::vector<V> values() const {
    std::vector<V> out;
    visit([&](std::string_view, std::string_view v) { out.push_back(detail::decode<V>(v)); });
    return out;
  }

  /// A snapshot of the (key, value) pairs; key-ordered for an ordered backend (bsddb btree).
  [[nodiscard]] std::vector<std::pair<K, V>> items() const {
    std::vector<std::pair<K, V>> out;
    visit([&](std::string_view k, std::string_view v) {
      out.emplace_back(detail::decode<K>(k), detail::decode<V>(v));
    });
    return out;
  }

  /// Iterates over a snapshot of the items taken when begin() is called.
  [[nodiscard]] const_iterator begin() const {
    return const_iterator(std::make_shared<const std::vector<value_type>>(items()), 0);
  }
  [[nodiscard]] const_iterator end() const { return const_iterator(); }

  /// Flushes what is stored to durable storage.
  void sync() {
    check_reentry();
    backend_->sync();
  }

  /// The backend, for backend-specific calls (statistics and the like).
  [[nodiscard]] Backend& backend() const noexcept { return *backend_; }

  // ---- the proxy and the iterator --------------------------------------------------------------

  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = std::pair<K, V>;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    const_iterator() = default;
    reference operator*() const { return (*items_)[index_]; }
    pointer operator->() const { return &(*items_)[index_]; }
    const_iterator& operator++() {
      ++index_;
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator old = *this;
      ++index_;
      return old;
    }
    friend bool operator==(const const_iterator& a, const const_iterator& b) {
      return a.at_end() == b.at_end() && (a.at_end() || a.index_ == b.index_);
    }
    friend bool operator!=(const const_iterator& a, const const_iterator& b) { return !(a == b); }

   private:
    friend class shared_dict;
    const_iterator(std::shared_ptr<const std::vector<value_type>> items, std::size_t index)
        : items_(std::move(items)), index_(index) {}
    [[nodiscard]] bool at_end() const { return !items_ || index_ >= items_->size(); }

    std::shared_ptr<const std::vector<value_type>> items_;
    std::size_t index_ = 0;
  };

 private:
  template <class F>
  void visit(F&& fn) const {
    static_assert(
        backend_traits<Backend>::can_enumerate,
        "smisk::ipc: this backend cannot enumerate its keys (memcached, for one, has no "
        "way to list keys), so keys(), values(), items() and iteration are not available");
    check_reentry();
    if constexpr (backend_traits<Backend>::can_enumerate) backend_->for_each(fn);
  }

  /// Refuses a call made on this thread from inside one of this dict's own read-modify-write
  /// functions: on bsddb it would wait for the lock that read-modify-write holds, for ever; on
  /// memcached a write there would make the outer compare-and-swap fail again and again.
  void check_reentry() const {
    if (detail::active_modify() == backend_.get()) throw_reentry();
  }

  /// backend_->modify(), with the function marked as running on this thread.
  template <class Step>
  void modify(std::string_view key, Step&& step) {
    check_reentry();
    detail::modify_scope scope(backend_.get());
    backend_->modify(key, std::forward<Step>(step));
  }

  [[noreturn]] static void throw_reentry() {
    throw reentry_error(
        "smisk::ipc: the dict was used from inside its own update(), compare_exchange(), "
        "setdefault(), pop() or increment() function on the same thread; that call would wait "
        "for the lock the read-modify-write holds. Read what the function needs before calling "
        "update(), or use the value passed to it. The key is unchanged");
  }

  /// Whether increment() and the arithmetic of d[k] work on V.
  static constexpr bool counter_value = std::is_arithmetic_v<V> && !std::is_same_v<V, bool>;
  static V one() {
    if constexpr (counter_value)
      return V(1);
    else
      return V();
  }

  /// Atomically subtracts `delta` (d[k] -= delta). Negating the smallest signed integer is
  /// undefined, so that one delta is subtracted as it is.
  V subtract(const K& key, V delta) {
    if constexpr (std::is_integral_v<V> && std::is_signed_v<V>) {
      if (delta == std::numeric_limits<V>::min())
        return update(key, [delta](std::optional<V> v) {
          V difference;
          if (__builtin_sub_overflow(v.value_or(V(0)), delta, &difference))
            throw_overflow("decrement", delta);
          return difference;
        });
    }
    return increment(key, static_cast<V>(-delta));  // unsigned: modulo 2^N, as in C++
  }

  /// Whether increment() lets the backend add to 64-bit integers itself.
  static constexpr bool native_increment =
      backend_traits<Backend>::can_increment && std::is_integral_v<V> &&
      sizeof(V) == sizeof(std::uint64_t) && detail::is_decimal_coded<V>::value;

  [[noreturn]] static void throw_overflow(const char* what, V delta) {
    throw overflow_error(std::string("smisk::ipc: ") + what + " by " + std::to_string(delta) +
                         " would overflow the stored " + std::string(codec<V>::name) +
                         "; the value is unchanged");
  }

  std::optional<V> lookup(std::string_view key) const {
    check_reentry();
    std::optional<V> result;
    backend_->get(key, [&](std::string_view bytes) { result.emplace(detail::decode<V>(bytes)); });
    return result;
  }
  bool exists(std::string_view key) const {
    check_reentry();
    return backend_->exists(key);
  }
  bool remove(std::string_view key) {
    check_reentry();
    return backend_->remove(key);
  }
  template <class Key>
  static V found(std::optional<V>&& v, const Key& key) {
    if (!v) throw_key_error(key);
    return std::move(*v);
  }

  template <class Key>
  [[noreturn]] static void throw_key_error(const Key& key) {
    std::string shown;
    if constexpr (std::is_convertible_v<const K&, std::string_view>) {
      shown = std::string(std::string_view(key).substr(0, 200));
    } else if constexpr (std::is_arithmetic_v<K>) {
      shown = std::to_string(key);
    } else {
      shown = "<key>";
    }
    throw key_error("smisk::ipc: no such key: " + shown);
  }

  std::shared_ptr<Backend> backend_;
};

}  // namespace smisk::ipc

#include "shared_dict_reference.hpp"  // NOLINT(misc-header-include-cycle): defines shared_dict::reference
