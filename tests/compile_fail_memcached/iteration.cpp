// Must not compile: iterating over a memcached dict (and items()) needs a list of its keys, which
// memcached cannot give; the message says so.
// expected-error: cannot enumerate its keys \(memcached
#include <smisk/ipc/memcached.hpp>

int main() {
  smisk::ipc::memcached::shared_dict<std::string, int> d;
  int sum = 0;
  for (const auto& [k, v] : d) sum += v;
  return sum + static_cast<int>(d.items().size());
}
