// smisk-ipc: a thread-local variable set for a scope and restored after it.
// SPDX-License-Identifier: MIT
#pragma once

namespace smisk::ipc::detail {

/// Sets `variable` (a thread_local of the calling thread) to `value` until the end of the scope,
/// then gives it back the value it had, so that scopes nest: which environment a libdb call is
/// for, which arena libdb allocates from, which dict's read-modify-write function is running.
template <class T>
class scoped_set {
 public:
  scoped_set(T& variable, T value) noexcept : variable_(variable), previous_(variable) {
    variable_ = value;
  }
  ~scoped_set() { variable_ = previous_; }
  scoped_set(const scoped_set&) = delete;
  scoped_set& operator=(const scoped_set&) = delete;

 private:
  T& variable_;
  T previous_;
};

}  // namespace smisk::ipc::detail
