// smisk-ipc: the type tags stored with every dict, for every backend: how they are written, how a
// stored description is checked against the types a dict is opened with (with the upgrade of
// descriptions written before enum tags named the enum), and what a mismatch tells the user.
// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace smisk::ipc::detail {

/// What a dict holds, as stored with it so that a dict opened with other types is refused
/// instead of misread: the key and value type tags (codec_name<T>(): "str", "i64",
/// "enum:u8:5color", ...) and, for a backend that has them, settings that change how the stored
/// bytes are read (Berkeley DB: the access method and the key order).
///
/// Two stored layouts exist, both stable (a dict written by one version is opened by the next):
///   record()  "smisk-ipc 1\nkey str\nvalue i64\nmethod hash\n"   Berkeley DB's "meta" record
///   compact() "smisk-ipc 1\nstr\ni64"                            memcached's "<ns>:meta" item
struct type_description {
  std::string key;
  std::string value;
  /// ("method", "btree"), ("order", "numeric"): one "name value" line each, in this order.
  std::vector<std::pair<std::string, std::string>> settings{};

  [[nodiscard]] std::string record() const {
    std::string r(header);
    r += "key " + key + "\nvalue " + value + "\n";
    for (const auto& [name, setting] : settings) r += name + " " + setting + "\n";
    return r;
  }
  [[nodiscard]] std::string compact() const { return std::string(header) + key + "\n" + value; }

  static constexpr std::string_view header = "smisk-ipc 1\n";
};

/// A stored type description (one tag per line) as smisk-ipc before 2026-11-25 wrote it: enum
/// tags without the enum's name ("enum:i32" for "enum:i32:5color"). A dict created then is
/// opened (and its description upgraded) as the enum it holds.
inline std::string without_enum_names(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    const std::size_t tag = line.find("enum:");
    if (tag != std::string_view::npos) {
      const std::size_t name = line.find(':', tag + 5);
      if (name != std::string_view::npos) line = line.substr(0, name);
    }
    out.append(line);
    if (eol == std::string_view::npos) break;
    out.push_back('\n');
    text.remove_prefix(eol + 1);
  }
  return out;
}

/// How a stored description compares with the one a dict is opened with.
enum class tag_match {
  same,      ///< the dict holds these types
  upgrade,   ///< it holds them, described as before enum tags named the enum: rewrite it
  different  ///< it holds other types: type_mismatch
};

inline tag_match match_tags(std::string_view stored, std::string_view wanted) {
  if (stored == wanted) return tag_match::same;
  const std::string legacy = without_enum_names(wanted);
  return legacy != wanted && stored == legacy ? tag_match::upgrade : tag_match::different;
}

/// Two dicts opened with the same home (or memcached servers) and name are one dict (smisk's
/// semantics: the defaults give every dict of a program the same one), so a second dict of other
/// types meets the first one's type record. The message says how to get two.
inline std::string same_name_hint(const std::string& name, const char* place = "home") {
  return std::string("\nDicts opened with the same ") + place +
         " and name are one dict; give a dict of other types its own options.name (this one is "
         "\"" +
         name + "\").";
}

/// Whether a key tag names a type stored as decimal integer text (integers and enums), and if
/// so whether it is signed: such keys can be ordered by number rather than by their bytes.
inline bool is_integer_tag(std::string_view tag, bool& is_signed) noexcept {
  if (tag.substr(0, 5) == "enum:") tag.remove_prefix(5);
  if (tag.size() < 2 || (tag[0] != 'i' && tag[0] != 'u')) return false;
  std::string_view bits = tag.substr(
      1, tag.find(':') == std::string_view::npos ? std::string_view::npos : tag.find(':') - 1);
  if (bits != "8" && bits != "16" && bits != "32" && bits != "64") return false;
  is_signed = tag[0] == 'i';
  return true;
}

}  // namespace smisk::ipc::detail
