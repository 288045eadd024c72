// smisk-ipc: the backend concept.
// SPDX-License-Identifier: MIT
//
// A backend stores bytes under bytes and offers the atomic primitives shared_dict is built on.
// shared_dict<K, V, Backend> never looks past this interface, so a new engine (LMDB, Redis, ...)
// is one class that satisfies it; tests/map_backend.hpp is a complete example.
//
//   struct my_backend {
//     using options = ...;   // an aggregate; a default-constructed one must be usable
//
//     // Opens the store, remembering the key and value type tags of a new store and throwing
//     // type_mismatch if an existing one was created with others.
//     my_backend(const options&, std::string_view key_type, std::string_view value_type);
//
//     // Required. Every call is atomic with respect to every other process and thread.
//     template <class F> bool get(std::string_view key, F&& consume) const;
//         // calls consume(std::string_view value) once if the key exists; returns whether it did
//     bool exists(std::string_view key) const;
//     void put(std::string_view key, std::string_view value);
//     bool add(std::string_view key, std::string_view value);   // false if the key was present
//     bool remove(std::string_view key);                        // false if it was absent
//     template <class F> void modify(std::string_view key, F&& step);
//         // read-modify-write: step(const std::string_view* current, std::string& out)
//         // returns modify_action::keep / store (the bytes in out) / erase. `current` is null
//         // when the key is absent. The step may run more than once (conflict retry); only the
//         // last run's action is applied. An exception from step leaves the key unchanged.
//     void sync();                                              // flush to durable storage
//
//     // Optional capabilities; shared_dict's size()/keys()/clear()/... need them.
//     template <class F> void for_each(F&& fn) const;
//         // fn(std::string_view key, std::string_view value) for every record
//     std::size_t count() const;
//     bool empty() const;                                       // else count() == 0
//     void clear();
//     bool increment(std::string_view key, std::uint64_t delta, std::uint64_t& result);
//         // a counter the engine adds to itself (memcached's incr): adds delta to the number
//         // stored under key as unsigned decimal text (absent counts as 0), modulo 2^64, leaves
//         // the canonical decimal text of the sum there and sets result to it. Returns false,
//         // changing nothing, when the stored bytes are not such a number (a negative one, say);
//         // shared_dict::increment then uses modify(). Worth having only when it is cheaper
//         // than modify().
//   };
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace smisk::ipc {

/// What one step of backend::modify() does with its key.
enum class modify_action { keep, store, erase };

namespace detail {

struct probe_consume {
  void operator()(std::string_view) const {}
};
struct probe_step {
  modify_action operator()(const std::string_view*, std::string&) const {
    return modify_action::keep;
  }
};
struct probe_visit {
  void operator()(std::string_view, std::string_view) const {}
};

/// Whether Op<B> is well-formed (the detection idiom): has_member<B, get_call> and the like.
template <class B, template <class> class Op, class = void>
struct has_member : std::false_type {};
template <class B, template <class> class Op>
struct has_member<B, Op, std::void_t<Op<B>>> : std::true_type {};

// One expression per member of the concept, as shared_dict calls it.
template <class B>
using options_type = typename B::options;
template <class B>
using get_call = decltype(bool{std::declval<const B&>().get(std::string_view{}, probe_consume{})});
template <class B>
using exists_call = decltype(bool{std::declval<const B&>().exists(std::string_view{})});
template <class B>
using put_call = decltype(std::declval<B&>().put(std::string_view{}, std::string_view{}));
template <class B>
using add_call = decltype(bool{std::declval<B&>().add(std::string_view{}, std::string_view{})});
template <class B>
using remove_call = decltype(bool{std::declval<B&>().remove(std::string_view{})});
template <class B>
using modify_call = decltype(std::declval<B&>().modify(std::string_view{}, probe_step{}));
template <class B>
using sync_call = decltype(std::declval<B&>().sync());
template <class B>
using for_each_call = decltype(std::declval<const B&>().for_each(probe_visit{}));
template <class B>
using count_call = decltype(std::size_t{std::declval<const B&>().count()});
template <class B>
using empty_call = decltype(bool{std::declval<const B&>().empty()});
template <class B>
using clear_call = decltype(std::declval<B&>().clear());
template <class B>
using increment_call = decltype(bool{std::declval<B&>().increment(std::string_view{},
                                                                  std::uint64_t{},
                                                                  std::declval<std::uint64_t&>())});

template <class B>
using has_options = has_member<B, options_type>;
template <class B>
using has_get = has_member<B, get_call>;
template <class B>
using has_exists = has_member<B, exists_call>;
template <class B>
using has_put = has_member<B, put_call>;
template <class B>
using has_add = has_member<B, add_call>;
template <class B>
using has_remove = has_member<B, remove_call>;
template <class B>
using has_modify = has_member<B, modify_call>;
template <class B>
using has_sync = has_member<B, sync_call>;
template <class B>
using has_for_each = has_member<B, for_each_call>;
template <class B>
using has_count = has_member<B, count_call>;
template <class B>
using has_empty = has_member<B, empty_call>;
template <class B>
using has_clear = has_member<B, clear_call>;
template <class B>
using has_increment = has_member<B, increment_call>;

template <class B, class = void>
struct has_open_constructor : std::false_type {};
template <class B>
struct has_open_constructor<
    B, std::enable_if_t<std::is_constructible_v<B, const typename B::options&, std::string_view,
                                                std::string_view>>> : std::true_type {};

}  // namespace detail

/// What a backend can do beyond the required primitives.
template <class B>
struct backend_traits {
  static constexpr bool can_enumerate = detail::has_for_each<B>::value;
  static constexpr bool can_count = detail::has_count<B>::value;
  static constexpr bool can_clear = detail::has_clear<B>::value;
  static constexpr bool can_increment = detail::has_increment<B>::value;
};

namespace detail {

/// Checks the backend concept with one readable message per missing member.
template <class B>
constexpr bool check_backend() {
  static_assert(has_options<B>::value,
                "smisk::ipc backend: missing 'using options = ...;' (an aggregate of settings)");
  if constexpr (has_options<B>::value) {
    static_assert(has_open_constructor<B>::value,
                  "smisk::ipc backend: missing the constructor 'B(const options&, std::string_view "
                  "key_type, std::string_view value_type)' that opens the store");
  }
  static_assert(
      has_get<B>::value,
      "smisk::ipc backend: missing 'template <class F> bool get(std::string_view key, F&& "
      "consume) const'");
  static_assert(has_exists<B>::value,
                "smisk::ipc backend: missing 'bool exists(std::string_view key) const'");
  static_assert(has_put<B>::value,
                "smisk::ipc backend: missing 'void put(std::string_view key, std::string_view "
                "value)'");
  static_assert(has_add<B>::value,
                "smisk::ipc backend: missing 'bool add(std::string_view key, std::string_view "
                "value)' (insert if absent)");
  static_assert(has_remove<B>::value,
                "smisk::ipc backend: missing 'bool remove(std::string_view key)'");
  static_assert(has_modify<B>::value,
                "smisk::ipc backend: missing 'template <class F> void modify(std::string_view key, "
                "F&& step)' (atomic read-modify-write)");
  static_assert(has_sync<B>::value, "smisk::ipc backend: missing 'void sync()'");
  return true;
}

}  // namespace detail
}  // namespace smisk::ipc
