// smisk-ipc: Berkeley DB's error codes and messages as smisk::ipc exceptions.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>

#include <cerrno>
#include <string>

#if DB_VERSION_MAJOR != 5 || DB_VERSION_MINOR != 3
#error \
    "smisk-ipc needs Berkeley DB 5.3 (Debian: libdb5.3-dev or libdb5.3++-dev): its crash safety relies on libdb 5.3's calls and region layout"
#endif

#include "../error.hpp"

namespace smisk::ipc::detail::bdb {

/// The last message Berkeley DB reported on this thread (through set_errcall).
inline std::string& last_message() {
  thread_local std::string message;
  return message;
}

extern "C" inline void on_bdb_error(const DB_ENV*, const char*, const char* msg) {
  last_message() = msg ? msg : "";
}
extern "C" inline void on_bdb_message(const DB_ENV*, const char*) {}

/// Why the last write of this thread was refused for want of space (set by the space guard,
/// bdb_space_guard.hpp), for the size_error's message.
inline std::string& space_message() {
  thread_local std::string message;
  return message;
}

/// @throws size_error for ENOSPC (a write the home's filesystem has no room for), engine_error
/// for anything else.
[[noreturn]] inline void raise(const char* origin, int rc, const std::string& context = {}) {
  if (rc == ENOSPC) {
    std::string why = space_message().empty()
                          ? std::string(
                                "the filesystem of the home is full: free space, give the "
                                "container a larger /dev/shm (docker run --shm-size=256m) "
                                "or put the home on a disk (options::homedir)")
                          : space_message();
    space_message().clear();
    last_message().clear();
    throw size_error(std::string("smisk::ipc: ") + origin + " refused: " + why, rc, origin);
  }
  std::string what = std::string("smisk::ipc: ") + origin + " failed: " + db_strerror(rc);
  if (!context.empty()) what += " (" + context + ")";
  if (!last_message().empty()) {
    what += ": " + last_message();
    last_message().clear();
  }
  throw engine_error(what, rc, origin);
}

}  // namespace smisk::ipc::detail::bdb
