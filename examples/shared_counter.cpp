// Forks worker processes that share one dict, as the prefork workers of a FastCGI server do.
// Each worker counts requests in a shared counter, leaves a note under its own key, and then
// reads what the others left. Run it twice in a row: the temporary dict of the first run is
// gone, so the counts start from zero again.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <smisk/ipc.hpp>

namespace ipc = smisk::ipc;

int main(int argc, char** argv) {
  const int workers = argc > 1 ? std::stoi(argv[1]) : 4;
  const int requests = argc > 2 ? std::stoi(argv[2]) : 1000;

  // The convenience form: a temporary dict shared by every process of this program and user,
  // in a private directory on /dev/shm. Opened before fork(); each child reopens its own engine.
  ipc::shared_dict<std::string, std::int64_t> counters;
  // A second dict in the same home needs its own name (the default name is the program's).
  ipc::bsddb::options notes_options;
  notes_options.name = "notes";
  ipc::shared_dict<std::string, std::string> notes(notes_options);
  std::printf("home: %s\n", counters.backend().home().c_str());

  for (int w = 0; w < workers; ++w) {
    if (fork() == 0) {
      for (int i = 0; i < requests; ++i) counters.increment("requests");
      notes.set("worker:" + std::to_string(getpid()),
                "served " + std::to_string(requests) + " requests");
      counters.increment("workers done");
      std::_Exit(0);
    }
  }
  for (int w = 0; w < workers; ++w) wait(nullptr);

  std::printf("%-20s %s\n", "key", "value (written by another process)");
  for (const auto& [key, note] : notes.items())
    std::printf("%-20s %s\n", key.c_str(), note.c_str());
  std::int64_t total = counters.get("requests", 0);
  std::printf("requests counted: %lld (expected %d)\n", static_cast<long long>(total),
              workers * requests);
  std::printf("workers done:     %lld\n", static_cast<long long>(counters.get("workers done", 0)));
  return total == static_cast<std::int64_t>(workers) * requests ? 0 : 1;
}
