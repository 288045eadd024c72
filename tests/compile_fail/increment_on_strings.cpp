// Must not compile: increment() and d[k] += n on a dict of strings. The message must say that
// increment needs an arithmetic value type, without the template noise it used to come with.
// expected-error: increment\(\) needs an arithmetic value type
// expected-error: d\[k\] \+= n needs an arithmetic value type
// unexpected-error: basic_string<char>::basic_string\(int\)
// unexpected-error: enable_if<false
#include <smisk/ipc.hpp>

int main() {
  smisk::ipc::shared_dict<std::string, std::string> d;
  d.increment("k");
  d["k"] += 1;
}
