// The consumer program of the memcached packaging tests: built once through
// find_package(smisk_ipc COMPONENTS memcached) against the install tree and once
// through add_subdirectory(smisk-ipc); it must compile, link and count against
// the memcached that ctest started (its port is in $SMISK_IPC_MEMCACHED_PORT_FILE).

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>

// Only the umbrella header: linking smisk::ipc_memcached brings the memcached backend into it.
#include <smisk/ipc.hpp>

int main() {
  const char* port_file = std::getenv("SMISK_IPC_MEMCACHED_PORT_FILE");
  std::ifstream in(port_file ? port_file : "");
  int port = 0;
  if (!(in >> port) || port <= 0) {
    std::cerr << "consumer: no memcached port (SMISK_IPC_MEMCACHED_PORT_FILE)\n";
    return EXIT_FAILURE;
  }
  try {
    smisk::ipc::memcached::options options;
    options.nodes = {"127.0.0.1:" + std::to_string(port)};
    options.name = "smisk-ipc-consumer." + std::to_string(::getpid());
    smisk::ipc::memcached::shared_dict<std::string, std::int64_t> hits{options};
    hits.increment("hits");
    hits.increment("hits", 41);
    const std::int64_t value = hits.get("hits", 0);
    std::cout << "consumer: hits = " << value << '\n';
    hits.clear();
    if (value != 42) {
      std::cerr << "consumer: expected 42\n";
      return EXIT_FAILURE;
    }
  } catch (const std::exception& e) {
    std::cerr << "consumer: " << e.what() << '\n';
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
