// Must not compile: a backend without modify(). The message must name the missing member.
// expected-error: smisk::ipc backend: missing 'template <class F> void modify
#include <smisk/ipc.hpp>

struct incomplete_backend {
  struct options {};
  incomplete_backend(const options&, std::string_view, std::string_view) {}
  template <class F>
  bool get(std::string_view, F&&) const {
    return false;
  }
  bool exists(std::string_view) const { return false; }
  void put(std::string_view, std::string_view) {}
  bool add(std::string_view, std::string_view) { return false; }
  bool remove(std::string_view) { return false; }
  void sync() {}
};

int main() {
  smisk::ipc::shared_dict<std::string, std::string, incomplete_backend> d;
  (void)d;
}
