// The consumer program of the packaging tests: it is built once through
// find_package(smisk_ipc) against the install tree and once through
// add_subdirectory(smisk-ipc), and must compile, link and count in both.

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <system_error>

#include <smisk/ipc.hpp>

int main() {
  char home_template[] = "/tmp/smisk_ipc_consumer.XXXXXX";
  if (::mkdtemp(home_template) == nullptr) {
    std::cerr << "consumer: mkdtemp failed\n";
    return EXIT_FAILURE;
  }
  const std::string home = home_template;

  int status = EXIT_SUCCESS;
  try {
    using dict = smisk::ipc::shared_dict<std::string, std::int64_t>;
    dict::options options;
    options.homedir = home;
    dict hits{options};

    hits.increment("hits");
    hits.increment("hits", 41);
    const std::int64_t value = hits.get("hits", 0);
    std::cout << "consumer: hits = " << value << '\n';
    if (value != 42) {
      std::cerr << "consumer: expected 42\n";
      status = EXIT_FAILURE;
    }
  } catch (const std::exception& e) {
    std::cerr << "consumer: " << e.what() << '\n';
    status = EXIT_FAILURE;
  }

  std::error_code ignored;
  std::filesystem::remove_all(home, ignored);
  return status;
}
