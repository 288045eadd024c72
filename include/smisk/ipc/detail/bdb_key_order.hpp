// smisk-ipc: how a Berkeley DB dict describes itself in its "meta" record, and the numeric key
// order of btree dicts whose keys are integers.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>

#include <charconv>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "../bsddb_options.hpp"
#include "type_tags.hpp"

namespace smisk::ipc::detail::bdb {

/// What the "meta" record of a dict says: its type tags, its access method, and for a btree of
/// integer (or enum) keys "order numeric". Integers are stored as decimal text (so that dumps
/// stay readable and the format stays one for every backend), whose byte order is not numeric
/// (-5 1 10 100 2 9); such a btree gets a comparison function instead (numeric_order below).
/// A btree of integer keys made before the order existed has no "order" line and keeps the
/// byte order it was built with: a tree cannot change its order without being rebuilt.
inline type_description describe(std::string_view key_type, std::string_view value_type,
                                 bsddb::access_method method) {
  type_description d{std::string(key_type), std::string(value_type)};
  const bool btree = method == bsddb::access_method::btree;
  d.settings.emplace_back("method", btree ? "btree" : "hash");
  bool is_signed = false;
  if (btree && is_integer_tag(key_type, is_signed)) d.settings.emplace_back("order", "numeric");
  return d;
}

/// The record in the "meta" database that remembers what a dict holds.
inline std::string format_record(std::string_view key_type, std::string_view value_type,
                                 bsddb::access_method method) {
  return describe(key_type, value_type, method).record();
}

/// The same description as it was written before btree dicts of integers had a numeric order.
inline std::string byte_order_record(type_description d) {
  if (!d.settings.empty() && d.settings.back().first == "order") d.settings.pop_back();
  return d.record();
}

/// Berkeley DB's btree comparison (DB->set_bt_compare) for keys stored as decimal integers:
/// numeric order. It must be a total order over any bytes, so keys that do not parse (corrupt,
/// or written by hand) come after every number, in byte order, and two spellings of one number
/// ("7", "07") are told apart by their bytes.
template <class Integer>
int numeric_order(DB*, const DBT* a, const DBT* b) {
  const char* pa = static_cast<const char*>(a->data);
  const char* pb = static_cast<const char*>(b->data);
  Integer x{}, y{};
  const auto ra = std::from_chars(pa, pa + a->size, x);
  const auto rb = std::from_chars(pb, pb + b->size, y);
  const bool number_a = a->size != 0 && ra.ec == std::errc() && ra.ptr == pa + a->size;
  const bool number_b = b->size != 0 && rb.ec == std::errc() && rb.ptr == pb + b->size;
  if (number_a != number_b) return number_a ? -1 : 1;
  if (number_a && x != y) return x < y ? -1 : 1;
  const u_int32_t common = a->size < b->size ? a->size : b->size;
  if (common != 0) {
    const int c = std::memcmp(pa, pb, common);
    if (c != 0) return c;
  }
  return a->size < b->size ? -1 : a->size > b->size ? 1 : 0;
}

/// The comparison for keys of this type tag, or nullptr for byte order.
inline int (*numeric_order_for(std::string_view key_type))(DB*, const DBT*, const DBT*) {
  bool is_signed = false;
  if (!is_integer_tag(key_type, is_signed)) return nullptr;
  return is_signed ? &numeric_order<std::int64_t> : &numeric_order<std::uint64_t>;
}

}  // namespace smisk::ipc::detail::bdb
