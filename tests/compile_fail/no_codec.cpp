// Must not compile: a value type without a codec. The message must say what to write.
// expected-error: has no codec\. .*For your own type write 'template <> struct smisk::ipc::codec<T>
#include <smisk/ipc.hpp>

struct no_codec {};

int main() {
  smisk::ipc::shared_dict<std::string, no_codec> d;
  (void)d;
}
