// Must not compile: memcached cannot list its keys, so keys() is a compile-time error whose
// message says why.
// expected-error: cannot enumerate its keys \(memcached
#include <smisk/ipc/memcached.hpp>

int main() {
  smisk::ipc::memcached::shared_dict<std::string, int> d;
  return static_cast<int>(d.keys().size());
}
