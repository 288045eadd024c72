// Must not compile: memcached cannot count its keys, so size() is a compile-time error whose
// message says why.
// expected-error: cannot count its keys \(memcached
#include <smisk/ipc/memcached.hpp>

int main() {
  smisk::ipc::memcached::shared_dict<std::string, int> d;
  return static_cast<int>(d.size());
}
