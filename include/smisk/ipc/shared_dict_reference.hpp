// smisk-ipc: what `d[k]` returns, the Python-like sugar of shared_dict.
// SPDX-License-Identifier: MIT
#pragma once

#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "shared_dict.hpp"

namespace smisk::ipc {

/// What `d[k]` returns: a live reference to the value stored under `k`, which behaves like
/// the value where it can. `d[k] = v` stores; `V v = d[k]`, comparisons with a value
/// (`d[k] == "x"`), `std::cout << d[k]` and `d[k]->member()` read (and throw key_error when
/// the key is absent); on arithmetic values `+=` and `-=`, and on integers `++` and `--`, are
/// atomic increments.
/// Every use reads or writes the dict again: `auto v = d[k];` keeps the reference, not the
/// value (write `V v = d[k]` or `d.at(k)` for a copy).
namespace detail {
/// Marks the references of every shared_dict, so that the comparison templates below leave
/// them (and std::optional, which compares through its own templates) alone.
struct dict_reference_tag {};
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
}  // namespace detail

template <class K, class V, class Backend>
class shared_dict<K, V, Backend>::reference : detail::dict_reference_tag {
  /// Comparisons with a plain value: not another dict's reference, not an optional (whose own
  /// operators compare its value with this reference's).
  template <class U>
  using other = std::enable_if_t<
      !std::is_base_of_v<detail::dict_reference_tag, U> && !detail::is_optional<U>::value, int>;
  static constexpr bool integer_value = std::is_integral_v<V> && !std::is_same_v<V, bool>;

 public:
  reference(shared_dict& d, const K& key) : dict_(&d), key_(key) {}
  reference(const reference&) = default;

  reference& operator=(const V& value) {
    dict_->set(key_, value);
    return *this;
  }
  /// `d[a] = d[b]` stores b's value under a.
  reference& operator=(const reference& other) {
    dict_->set(key_, other.value());
    return *this;
  }
  /// Atomic `increment(k, delta)`.
  template <class U>
  reference& operator+=(const U& delta) {
    static_assert(counter_value,
                  "smisk::ipc: d[k] += n needs an arithmetic value type; use "
                  "update() otherwise");
    if constexpr (counter_value) dict_->increment(key_, static_cast<V>(delta));
    return *this;
  }
  /// Atomic `increment(k, -delta)`.
  template <class U>
  reference& operator-=(const U& delta) {
    static_assert(counter_value,
                  "smisk::ipc: d[k] -= n needs an arithmetic value type; use "
                  "update() otherwise");
    if constexpr (counter_value) dict_->subtract(key_, static_cast<V>(delta));
    return *this;
  }
  /// Atomic `increment(k)`; `d[k]++` returns the value before it.
  reference& operator++() {
    static_assert(integer_value, "smisk::ipc: ++d[k] needs an integer value type");
    dict_->increment(key_, one());
    return *this;
  }
  V operator++(int) {
    static_assert(integer_value, "smisk::ipc: d[k]++ needs an integer value type");
    return static_cast<V>(dict_->increment(key_, one()) - one());
  }
  reference& operator--() {
    static_assert(integer_value, "smisk::ipc: --d[k] needs an integer value type");
    dict_->subtract(key_, one());
    return *this;
  }
  V operator--(int) {
    static_assert(integer_value, "smisk::ipc: d[k]-- needs an integer value type");
    return static_cast<V>(dict_->subtract(key_, one()) + one());
  }

  /// @throws key_error when absent.
  [[nodiscard]] V value() const { return dict_->at(key_); }
  operator V() const { return value(); }  // NOLINT(google-explicit-constructor): dict sugar

  /// `d[k]->size()`: a member of a copy of the value. @throws key_error when absent.
  class arrow {
   public:
    const V* operator->() const noexcept { return std::addressof(value_); }

   private:
    friend class reference;
    explicit arrow(V v) : value_(std::move(v)) {}
    V value_;
  };
  [[nodiscard]] arrow operator->() const { return arrow(value()); }

  // Comparisons with a value (`d[k] == "x"`, `0 < d[k]`) and with another reference of the same
  // dict type compare the stored values. @throws key_error when absent.
  friend bool operator==(const reference& a, const reference& b) { return a.value() == b.value(); }
  friend bool operator!=(const reference& a, const reference& b) { return a.value() != b.value(); }
  friend bool operator<(const reference& a, const reference& b) { return a.value() < b.value(); }
  friend bool operator>(const reference& a, const reference& b) { return a.value() > b.value(); }
  friend bool operator<=(const reference& a, const reference& b) { return a.value() <= b.value(); }
  friend bool operator>=(const reference& a, const reference& b) { return a.value() >= b.value(); }
  template <class U, other<U> = 0>
  friend auto operator==(const reference& a, const U& b)
      -> decltype(std::declval<const V&>() == b) {
    return a.value() == b;
  }
  template <class U, other<U> = 0>
  friend auto operator==(const U& a, const reference& b)
      -> decltype(a == std::declval<const V&>()) {
    return a == b.value();
  }
  template <class U, other<U> = 0>
  friend auto operator!=(const reference& a, const U& b)
      -> decltype(std::declval<const V&>() != b) {
    return a.value() != b;
  }
  template <class U, other<U> = 0>
  friend auto operator!=(const U& a, const reference& b)
      -> decltype(a != std::declval<const V&>()) {
    return a != b.value();
  }
  template <class U, other<U> = 0>
  friend auto operator<(const reference& a, const U& b) -> decltype(std::declval<const V&>() < b) {
    return a.value() < b;
  }
  template <class U, other<U> = 0>
  friend auto operator<(const U& a, const reference& b) -> decltype(a < std::declval<const V&>()) {
    return a < b.value();
  }
  template <class U, other<U> = 0>
  friend auto operator>(const reference& a, const U& b) -> decltype(std::declval<const V&>() > b) {
    return a.value() > b;
  }
  template <class U, other<U> = 0>
  friend auto operator>(const U& a, const reference& b) -> decltype(a > std::declval<const V&>()) {
    return a > b.value();
  }
  template <class U, other<U> = 0>
  friend auto operator<=(const reference& a, const U& b)
      -> decltype(std::declval<const V&>() <= b) {
    return a.value() <= b;
  }
  template <class U, other<U> = 0>
  friend auto operator<=(const U& a, const reference& b)
      -> decltype(a <= std::declval<const V&>()) {
    return a <= b.value();
  }
  template <class U, other<U> = 0>
  friend auto operator>=(const reference& a, const U& b)
      -> decltype(std::declval<const V&>() >= b) {
    return a.value() >= b;
  }
  template <class U, other<U> = 0>
  friend auto operator>=(const U& a, const reference& b)
      -> decltype(a >= std::declval<const V&>()) {
    return a >= b.value();
  }

  /// `std::cout << d[k]` prints the value. @throws key_error when absent.
  template <class Stream>
  friend auto operator<<(Stream& out, const reference& r)
      -> decltype(out << std::declval<const V&>()) {
    return out << r.value();
  }

 private:
  shared_dict* dict_;
  K key_;
};

}  // namespace smisk::ipc
