// smisk-ipc: errors.
// SPDX-License-Identifier: MIT
#pragma once

#include <stdexcept>
#include <string>

namespace smisk::ipc {

/// Base of every error the library throws. `code()` is the engine's error code (a Berkeley DB
/// code, an errno value or a libmemcached return code; 0 when none applies) and `origin()` names
/// the call that failed, e.g. "DB->put".
class error : public std::runtime_error {
 public:
  error(const std::string& what, int code = 0, std::string origin = {})
      : std::runtime_error(what), code_(code), origin_(std::move(origin)) {}
  [[nodiscard]] int code() const noexcept { return code_; }
  [[nodiscard]] const std::string& origin() const noexcept { return origin_; }

 private:
  int code_;
  std::string origin_;
};

/// A key that is not in the dict was read with `at()` or `d[k]`.
class key_error : public error {
 public:
  using error::error;
};

/// The dict was created with other key or value types than the ones it is opened with.
class type_mismatch : public error {
 public:
  using error::error;
};

/// Stored bytes do not decode as the value type (corrupt or foreign data), or a value cannot be
/// encoded.
class codec_error : public error {
 public:
  using error::error;
};

/// The home directory was refused: a symlink, a regular file, owned by another user, or not
/// writable. Nothing of it was touched.
class home_error : public error {
 public:
  using error::error;
};

/// A key or value the engine cannot store (for example larger than memcached's item size).
class size_error : public error {
 public:
  using error::error;
};

/// increment() of a signed integer would go past the range of its type; nothing was changed.
class overflow_error : public error {
 public:
  using error::error;
};

/// The dict was used from inside one of its own read-modify-write functions (update(),
/// compare_exchange(), setdefault(), pop(), increment()) on the same thread. That call would wait
/// for the lock the read-modify-write itself holds, so it is refused instead; the key is unchanged.
class reentry_error : public error {
 public:
  using error::error;
};

/// The crash-safety machinery (robust mutexes for libdb, the fault guard) cannot be set up in this
/// process and bsddb::options::require_crash_safety is true. runtime_status() says why.
class crash_safety_error : public error {
 public:
  using error::error;
};

/// The engine failed (I/O error, out of space, a server that cannot be reached, ...).
class engine_error : public error {
 public:
  using error::error;
};

/// The engine could not be reached (a memcached server that is down or timed out).
class unavailable_error : public engine_error {
 public:
  using engine_error::engine_error;
};

}  // namespace smisk::ipc
