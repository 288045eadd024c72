// Must not compile (as a warning made an error here, whatever the build's -Werror): the result of
// insert() and compare_exchange() says whether they stored, and dropping it is a bug.
// expected-error: ignoring return value of .*insert
// expected-error: ignoring return value of .*compare_exchange
#pragma GCC diagnostic error "-Wunused-result"
#include <smisk/ipc.hpp>

int main() {
  smisk::ipc::shared_dict<std::string, std::string> d;
  d.insert("k", "v");
  d.compare_exchange("k", std::nullopt, "w");
}
