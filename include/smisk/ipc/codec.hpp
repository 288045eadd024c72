// smisk-ipc: how keys and values become bytes.
// SPDX-License-Identifier: MIT
//
// Stored format (stable; a persistent dict written by one build is read by the next):
//   std::string                          the bytes themselves
//   byte vectors (std::byte, char,       the bytes themselves
//     signed/unsigned char)
//   integers                             decimal ASCII, e.g. "-42" (std::to_chars)
//   bool                                 "0" or "1"
//   float, double, long double           shortest round-trip decimal ASCII, e.g. "0.1", "inf"
//   enums                                their underlying integer, as above
// Text formats keep keys readable in `db5.3_dump` and let memcached's `incr` work on counters.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "error.hpp"

namespace smisk::ipc {

/// The customisation point: `codec<T>` turns a T into bytes and back.
///
/// The primary template means "no codec". Specialise it for your own types:
/// @code
/// template <> struct smisk::ipc::codec<point> {
///   static constexpr std::string_view name = "point";           // stored type tag
///   static void encode(const point& p, std::string& out);      // replace `out` with the bytes
///   static point decode(std::string_view bytes);               // throw codec_error if malformed
/// };
/// @endcode
template <class T, class Enable = void>
struct codec {
  using smisk_ipc_no_codec = void;  // marks the primary template
};

namespace detail {

template <class T, class = void>
struct has_codec : std::true_type {};
template <class T>
struct has_codec<T, std::void_t<typename codec<T>::smisk_ipc_no_codec>> : std::false_type {};

template <class T, class = void>
struct codec_has_name : std::false_type {};
template <class T>
struct codec_has_name<T, std::void_t<decltype(codec<T>::name)>> : std::true_type {};

template <class T, class = void>
struct codec_has_view : std::false_type {};
template <class T>
struct codec_has_view<T, std::void_t<decltype(codec<T>::view(std::declval<const T&>()))>>
    : std::true_type {};

template <class T, class = void>
struct codec_is_complete : std::false_type {};
template <class T>
struct codec_is_complete<T, std::void_t<decltype(codec<T>::encode(std::declval<const T&>(),
                                                                  std::declval<std::string&>())),
                                        decltype(codec<T>::decode(std::string_view{}))>>
    : std::is_convertible<decltype(codec<T>::decode(std::string_view{})), T> {};

template <class T>
constexpr void check_codec() {
  static_assert(
      has_codec<T>::value,
      "smisk::ipc: this key or value type has no codec. Built-in codecs cover std::string, "
      "byte vectors, arithmetic types and enums. For your own type write "
      "'template <> struct smisk::ipc::codec<T> { static constexpr std::string_view name "
      "= \"mytype\"; static void encode(const T&, std::string& out); static T "
      "decode(std::string_view bytes); };'");
  if constexpr (has_codec<T>::value) {
    static_assert(codec_is_complete<T>::value,
                  "smisk::ipc: codec<T> must have 'static void encode(const T&, std::string& out)' "
                  "and 'static T decode(std::string_view bytes)'");
  }
}

template <class T, class = void>
struct codec_names_type : std::false_type {};
template <class T>
struct codec_names_type<T, std::void_t<decltype(codec<T>::smisk_ipc_names_type)>> : std::true_type {
};

/// The type tag stored with a dict; `codec<T>::name` when given (followed by the ABI's name of T
/// for the built-in enum codec: two enums are different types even when they store the same
/// integers), else the ABI's type name.
template <class T>
std::string codec_name() {
  if constexpr (codec_has_name<T>::value && codec_names_type<T>::value) {
    return std::string(codec<T>::name) + ":" + typeid(T).name();
  } else if constexpr (codec_has_name<T>::value) {
    return std::string(codec<T>::name);
  } else {
    return std::string("type:") + typeid(T).name();
  }
}

[[noreturn]] inline void throw_decode_error(std::string_view type, std::string_view bytes) {
  std::string shown;
  for (char c : bytes.substr(0, 40)) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\') {
      shown += c;
    } else {
      static const char hex[] = "0123456789abcdef";
      shown += "\\x";
      shown += hex[u >> 4];
      shown += hex[u & 15];
    }
  }
  if (bytes.size() > 40) shown += "...";
  throw codec_error("smisk::ipc: stored bytes are not a valid " + std::string(type) + ": \"" +
                    shown + "\" (" + std::to_string(bytes.size()) + " bytes)");
}

template <class T>
constexpr const char* arithmetic_name() {
  if constexpr (std::is_same_v<T, bool>) {
    return "bool";
  } else if constexpr (std::is_floating_point_v<T>) {
    return sizeof(T) == 4 ? "f32" : sizeof(T) == 8 ? "f64" : "f80";
  } else if constexpr (std::is_signed_v<T>) {
    return sizeof(T) == 1 ? "i8" : sizeof(T) == 2 ? "i16" : sizeof(T) == 4 ? "i32" : "i64";
  } else {
    return sizeof(T) == 1 ? "u8" : sizeof(T) == 2 ? "u16" : sizeof(T) == 4 ? "u32" : "u64";
  }
}

template <class U>
constexpr const char* enum_name() {
  if constexpr (std::is_signed_v<U>) {
    return sizeof(U) == 1   ? "enum:i8"
           : sizeof(U) == 2 ? "enum:i16"
           : sizeof(U) == 4 ? "enum:i32"
                            : "enum:i64";
  } else {
    return sizeof(U) == 1   ? "enum:u8"
           : sizeof(U) == 2 ? "enum:u16"
           : sizeof(U) == 4 ? "enum:u32"
                            : "enum:u64";
  }
}

template <class T>
struct byte_vector_codec {
  static constexpr std::string_view name = "bytes";
  static std::string_view view(const T& v) noexcept {
    return {reinterpret_cast<const char*>(v.data()), v.size()};
  }
  static void encode(const T& v, std::string& out) { out.assign(view(v)); }
  static T decode(std::string_view bytes) {
    const auto* p = reinterpret_cast<const typename T::value_type*>(bytes.data());
    return T(p, p + bytes.size());
  }
};

}  // namespace detail

template <>
struct codec<std::string> {
  static constexpr std::string_view name = "str";
  static std::string_view view(const std::string& v) noexcept { return v; }
  static void encode(const std::string& v, std::string& out) { out.assign(v); }
  static std::string decode(std::string_view bytes) { return std::string(bytes); }
};

template <>
struct codec<std::vector<std::byte>> : detail::byte_vector_codec<std::vector<std::byte>> {};
template <>
struct codec<std::vector<char>> : detail::byte_vector_codec<std::vector<char>> {};
template <>
struct codec<std::vector<unsigned char>> : detail::byte_vector_codec<std::vector<unsigned char>> {};
template <>
struct codec<std::vector<signed char>> : detail::byte_vector_codec<std::vector<signed char>> {};

/// Arithmetic types: decimal ASCII.
template <class T>
struct codec<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr std::string_view name = detail::arithmetic_name<T>();
  static constexpr bool smisk_ipc_decimal = true;  // the format an engine's own counter uses
  static void encode(T v, std::string& out) {
    if constexpr (std::is_same_v<T, bool>) {
      out.assign(1, v ? '1' : '0');
    } else {
      char buf[64];
      auto r = std::to_chars(buf, buf + sizeof buf, v);
      out.assign(buf, r.ptr);
    }
  }
  static T decode(std::string_view bytes) {
    if constexpr (std::is_same_v<T, bool>) {
      if (bytes == "1") return true;
      if (bytes == "0") return false;
    } else {
      T v{};
      const char* end = bytes.data() + bytes.size();
      auto r = std::from_chars(bytes.data(), end, v);
      if (!bytes.empty() && r.ec == std::errc() && r.ptr == end) return v;
    }
    detail::throw_decode_error(name, bytes);
  }
};

/// Enums: their underlying integer, in decimal ASCII. The stored type tag names the enum too.
template <class T>
struct codec<T, std::enable_if_t<std::is_enum_v<T>>> {
  using underlying = std::underlying_type_t<T>;
  static constexpr std::string_view name = detail::enum_name<underlying>();
  static constexpr bool smisk_ipc_names_type = true;
  static void encode(T v, std::string& out) {
    codec<underlying>::encode(static_cast<underlying>(v), out);
  }
  static T decode(std::string_view bytes) {
    return static_cast<T>(codec<underlying>::decode(bytes));
  }
};

namespace detail {

/// The bytes of one key or value, borrowed when the codec can give a view, else encoded into a
/// small owned buffer.
template <class T>
class encoded {
 public:
  explicit encoded(const T& v) {
    if constexpr (codec_has_view<T>::value) {
      bytes_ = codec<T>::view(v);
    } else {
      codec<T>::encode(v, buffer_);
      bytes_ = buffer_;
    }
  }
  encoded(const encoded&) = delete;
  encoded& operator=(const encoded&) = delete;
  [[nodiscard]] std::string_view bytes() const noexcept { return bytes_; }

 private:
  std::string buffer_;
  std::string_view bytes_;
};

template <class T>
T decode(std::string_view bytes) {
  return codec<T>::decode(bytes);
}

/// Parses `text` as the decimal digits of a uint64_t, and nothing else.
inline bool parse_unsigned(std::string_view text, std::uint64_t& out) noexcept {
  const char* end = text.data() + text.size();
  auto r = std::from_chars(text.data(), end, out);
  return !text.empty() && r.ec == std::errc() && r.ptr == end;
}

/// Whether T is stored by the built-in decimal codec of arithmetic types (not a user's own).
template <class T, class = void>
struct is_decimal_coded : std::false_type {};
template <class T>
struct is_decimal_coded<T, std::void_t<decltype(codec<T>::smisk_ipc_decimal)>> : std::true_type {};

}  // namespace detail
}  // namespace smisk::ipc
