// Must not compile: empty() needs a count of the keys, which memcached cannot give.
// expected-error: cannot count its keys \(memcached
#include <smisk/ipc/memcached.hpp>

int main() {
  smisk::ipc::memcached::shared_dict<std::string, int> d;
  return d.empty() ? 0 : 1;
}
