// A third backend, written only against include/smisk/ipc/backend.hpp: a std::map behind a
// mutex, shared by the handles of one process. It proves that shared_dict needs no change for a
// new engine: tests/api_test.cpp runs the same typed suite on it as on Berkeley DB.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <smisk/ipc/backend.hpp>
#include <smisk/ipc/codec.hpp>
#include <smisk/ipc/error.hpp>

namespace smisk_test {

class map_backend {
 public:
  struct options {
    std::string name = "default";
  };

  map_backend(const options& o, std::string_view key_type, std::string_view value_type)
      : store_(store_named(o.name)) {
    std::lock_guard<std::mutex> lock(store_->mutex);
    std::string wanted = std::string(key_type) + " -> " + std::string(value_type);
    if (store_->types.empty()) store_->types = wanted;
    if (store_->types != wanted)
      throw smisk::ipc::type_mismatch("map_backend: created as " + store_->types + ", opened as " +
                                      wanted);
  }

  template <class F>
  bool get(std::string_view key, F&& consume) const {
    std::string copy;
    {
      std::lock_guard<std::mutex> lock(store_->mutex);
      auto it = store_->data.find(std::string(key));
      if (it == store_->data.end()) return false;
      copy = it->second;
    }
    consume(std::string_view(copy));
    return true;
  }
  bool exists(std::string_view key) const {
    std::lock_guard<std::mutex> lock(store_->mutex);
    return store_->data.count(std::string(key)) != 0;
  }
  void put(std::string_view key, std::string_view value) {
    std::lock_guard<std::mutex> lock(store_->mutex);
    store_->data[std::string(key)] = std::string(value);
  }
  bool add(std::string_view key, std::string_view value) {
    std::lock_guard<std::mutex> lock(store_->mutex);
    return store_->data.emplace(std::string(key), std::string(value)).second;
  }
  bool remove(std::string_view key) {
    std::lock_guard<std::mutex> lock(store_->mutex);
    return store_->data.erase(std::string(key)) != 0;
  }
  template <class F>
  void modify(std::string_view key, F&& step) {
    std::lock_guard<std::mutex> lock(store_->mutex);
    auto it = store_->data.find(std::string(key));
    std::string_view current;
    if (it != store_->data.end()) current = it->second;
    std::string out;
    switch (step(it != store_->data.end() ? &current : nullptr, out)) {
      case smisk::ipc::modify_action::keep:
        break;
      case smisk::ipc::modify_action::store:
        store_->data[std::string(key)] = std::move(out);
        break;
      case smisk::ipc::modify_action::erase:
        if (it != store_->data.end()) store_->data.erase(it);
        break;
    }
  }
  void sync() {}

  // Optional: a counter the engine adds to itself (shared_dict::increment uses it for 64-bit
  // integers), written the way memcached's incr behaves: unsigned decimal text, modulo 2^64.
  bool increment(std::string_view key, std::uint64_t delta, std::uint64_t& result) {
    std::lock_guard<std::mutex> lock(store_->mutex);
    ++store_->native_increments;  // every call, refused ones included
    auto it = store_->data.find(std::string(key));
    std::uint64_t n = 0;
    if (it != store_->data.end() && !smisk::ipc::detail::parse_unsigned(it->second, n))
      return false;
    result = n + delta;
    store_->data[std::string(key)] = std::to_string(result);
    return true;
  }
  /// How many times shared_dict called increment() (refused calls included).
  [[nodiscard]] long native_increments() const {
    std::lock_guard<std::mutex> lock(store_->mutex);
    return store_->native_increments;
  }

  template <class F>
  void for_each(F&& fn) const {
    std::vector<std::pair<std::string, std::string>> copy;
    {
      std::lock_guard<std::mutex> lock(store_->mutex);
      copy.assign(store_->data.begin(), store_->data.end());
    }
    for (const auto& [k, v] : copy) fn(std::string_view(k), std::string_view(v));
  }
  [[nodiscard]] std::size_t count() const {
    std::lock_guard<std::mutex> lock(store_->mutex);
    return store_->data.size();
  }
  void clear() {
    std::lock_guard<std::mutex> lock(store_->mutex);
    store_->data.clear();
  }

 private:
  struct store {
    std::mutex mutex;
    std::string types;
    std::map<std::string, std::string> data;
    long native_increments = 0;
  };
  static std::shared_ptr<store> store_named(const std::string& name) {
    static std::mutex mutex;
    static std::map<std::string, std::shared_ptr<store>> stores;
    std::lock_guard<std::mutex> lock(mutex);
    auto& s = stores[name];
    if (!s) s = std::make_shared<store>();
    return s;
  }
  std::shared_ptr<store> store_;
};

}  // namespace smisk_test
