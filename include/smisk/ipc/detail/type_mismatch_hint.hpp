// smisk-ipc: what a type_mismatch tells the user to do. SPDX-License-Identifier: MIT
#pragma once

#include <string>

namespace smisk::ipc::detail {

/// Two dicts opened with the same home (or memcached servers) and name are one dict (smisk's
/// semantics: the defaults give every dict of a program the same one), so a second dict of other
/// types meets the first one's type record. The message says how to get two.
inline std::string same_name_hint(const std::string& name, const char* place = "home") {
  return std::string("\nDicts opened with the same ") + place +
         " and name are one dict; give a dict of other types its own options.name (this one is "
         "\"" +
         name + "\").";
}

}  // namespace smisk::ipc::detail
