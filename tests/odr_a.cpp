// One of two translation units that include <smisk/ipc.hpp> (see odr_main.cpp).

#include <optional>
#include <string>

#include <smisk/ipc.hpp>

std::optional<std::string> odr_a_set_get(const std::string& homedir, const std::string& key,
                                         const std::string& value) {
  using dict = smisk::ipc::shared_dict<std::string, std::string>;
  dict::options options;
  options.homedir = homedir;
  dict d{options};
  d.set(key, value);
  return d.get(key);
}
