// Helpers of the memcached backend tests: the fixture server's address, unique namespaces,
// memcached servers that a test starts and stops itself (by PID), and a raw loopback client for
// looking at a server behind the library's back (stats, items).
#ifndef SMISK_TEST_MEMCACHED_UTIL_HPP
#define SMISK_TEST_MEMCACHED_UTIL_HPP

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#ifndef SMISK_IPC_TEST_MEMCACHED
#define SMISK_IPC_TEST_MEMCACHED "/usr/bin/memcached"
#endif

namespace smisk_test::mc {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

/// Milliseconds since `start`.
inline double ms_since(clock::time_point start) {
  return std::chrono::duration<double, std::milli>(clock::now() - start).count();
}

/// The memcached executable: $SMISK_IPC_MEMCACHED_BIN, else the one CMake found.
inline std::string memcached_executable() {
  const char* env = std::getenv("SMISK_IPC_MEMCACHED_BIN");
  return env && *env ? env : SMISK_IPC_TEST_MEMCACHED;
}

/// The port of the memcached that ctest started for the test run (the memcached_fixture.sh
/// fixture): $SMISK_IPC_MEMCACHED_PORT, else the number in the file $SMISK_IPC_MEMCACHED_PORT_FILE.
/// nullopt when neither is set (the test was run outside ctest).
inline std::optional<int> fixture_port() {
  if (const char* port = std::getenv("SMISK_IPC_MEMCACHED_PORT"); port && *port)
    return std::atoi(port);
  const char* file = std::getenv("SMISK_IPC_MEMCACHED_PORT_FILE");
  if (!file || !*file) return std::nullopt;
  std::ifstream in(file);
  int port = 0;
  if (!(in >> port) || port <= 0) return std::nullopt;
  return port;
}

/// "127.0.0.1:<fixture port>"; skips the current test (from a void function) when there is none.
#define SMISK_TEST_FIXTURE_NODE(var)                                                              \
  std::string var;                                                                                \
  do {                                                                                            \
    auto smisk_test_port = ::smisk_test::mc::fixture_port();                                      \
    if (!smisk_test_port)                                                                         \
      GTEST_SKIP() << "no memcached fixture: run through ctest, or set SMISK_IPC_MEMCACHED_PORT"; \
    var = "127.0.0.1:" + std::to_string(*smisk_test_port);                                        \
  } while (0)

/// A namespace no other test (process, run) uses: the fixture server outlives single tests.
inline std::string unique_name(const std::string& what) {
  static std::atomic<int> counter{0};
  const auto now = std::chrono::system_clock::now().time_since_epoch().count();
  return "test." + what + "." + std::to_string(::getpid()) + "." + std::to_string(now) + "." +
         std::to_string(counter++);
}

// ---- raw loopback client -------------------------------------------------------------------

/// One request/response exchange with a memcached server on 127.0.0.1:port over the text
/// protocol; reads until the reply ends with `terminator` (or a timeout). Never through the
/// library under test.
inline std::string raw_request(int port, const std::string& request, const std::string& terminator,
                               std::chrono::milliseconds timeout = 2000ms) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) +
                             " failed: " + std::strerror(errno));
  }
  std::size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      ::close(fd);
      throw std::runtime_error("send failed");
    }
    sent += static_cast<std::size_t>(n);
  }
  std::string reply;
  const auto deadline = clock::now() + timeout;
  while (reply.size() < terminator.size() ||
         reply.compare(reply.size() - terminator.size(), terminator.size(), terminator) != 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return reply;
}

/// The server's "stats": name -> value.
inline std::map<std::string, std::string> stats(int port) {
  std::map<std::string, std::string> out;
  std::istringstream lines(raw_request(port, "stats\r\n", "END\r\n"));
  std::string tag, name, value;
  while (lines >> tag) {
    if (tag != "STAT") break;
    lines >> name >> value;
    out[name] = value;
  }
  return out;
}

/// The number of items a server holds (its "curr_items").
inline long items_on(int port) { return std::stol(stats(port).at("curr_items")); }

/// Whether the server holds an item under exactly `key` (a valid memcached key).
inline bool server_has_item(int port, const std::string& key) {
  return raw_request(port, "get " + key + "\r\n", "END\r\n").rfind("VALUE ", 0) == 0;
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
inline int unused_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("cannot find an unused port");
  ::close(fd);
  return ntohs(addr.sin_port);
}

// ---- servers a test owns -------------------------------------------------------------------

/// A memcached on 127.0.0.1 that the test starts (fork + exec, in the foreground) and stops by
/// its PID. The kernel picks the port on the first start; restart() reuses it. The server dies
/// with the test process (PR_SET_PDEATHSIG).
class server {
 public:
  /// @param extra  more memcached arguments, e.g. {"-I", "2m"}
  /// @param socket_path  listen on this unix socket instead of TCP
  explicit server(std::vector<std::string> extra = {}, std::string socket_path = {})
      : extra_(std::move(extra)), socket_path_(std::move(socket_path)) {
    start(0);
  }
  ~server() { kill(); }
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] std::string node() const { return "127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] bool running() const { return pid_ > 0; }

  /// Sends `sig` (SIGKILL by default) to the server's PID and reaps it.
  void kill(int sig = SIGKILL) {
    if (pid_ <= 0) return;
    if (stopped_) ::kill(pid_, SIGCONT);
    ::kill(pid_, sig);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    stopped_ = false;
  }
  /// Freezes the server (SIGSTOP): it accepts connections but never answers.
  void freeze() {
    ::kill(pid_, SIGSTOP);
    stopped_ = true;
    std::this_thread::sleep_for(50ms);  // let the signal take effect
  }
  void thaw() {
    ::kill(pid_, SIGCONT);
    stopped_ = false;
  }
  /// Starts a new (empty) server on the same port.
  void restart() {
    kill();
    start(port_);
  }

 private:
  void start(int port) {
    char dir_template[] = "/tmp/smisk-ipc-mc-XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) throw std::runtime_error("mkdtemp failed");
    const std::string dir = dir_template;
    const std::string port_file = dir + "/ports";
    std::vector<std::string> args = {memcached_executable(), "-U", "0", "-t", "2", "-m", "64"};
    if (socket_path_.empty()) {
      args.insert(args.end(), {"-l", "127.0.0.1", "-p", port == 0 ? "-1" : std::to_string(port)});
    } else {
      args.insert(args.end(), {"-s", socket_path_, "-a", "0700"});
    }
    if (::geteuid() == 0) {
      struct passwd* pw = ::getpwuid(0);
      args.push_back("-u");
      args.push_back(pw && pw->pw_name ? pw->pw_name : "root");
    }
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string env_entry = "MEMCACHED_PORT_FILENAME=" + port_file;

    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::putenv(env_entry.data());
      int null = ::open("/dev/null", O_RDWR);
      if (null >= 0) {
        ::dup2(null, STDIN_FILENO);
        ::dup2(null, STDOUT_FILENO);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    // Wait until it listens: the port file names the port (also when we gave it).
    const auto deadline = clock::now() + 10s;
    port_ = 0;
    while (clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        cleanup(dir, port_file);
        throw std::runtime_error("memcached exited at start (port " + std::to_string(port) + ")");
      }
      if (!socket_path_.empty()) {
        if (socket_listens()) {
          port_ = -1;
          break;
        }
      } else {
        std::ifstream in(port_file);
        std::string line;
        while (std::getline(in, line)) {
          if (line.rfind("TCP INET: ", 0) == 0) port_ = std::stoi(line.substr(10));
        }
        if (port_ != 0) break;
      }
      std::this_thread::sleep_for(10ms);
    }
    cleanup(dir, port_file);
    if (port_ == 0) {
      kill();
      throw std::runtime_error("memcached did not report its port");
    }
  }

  bool socket_listens() const {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof addr.sun_path - 1);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
  }

  static void cleanup(const std::string& dir, const std::string& port_file) {
    ::unlink(port_file.c_str());
    ::unlink((port_file + ".lck").c_str());
    ::rmdir(dir.c_str());
  }

  std::vector<std::string> extra_;
  std::string socket_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool stopped_ = false;
};

}  // namespace smisk_test::mc

#endif  // SMISK_TEST_MEMCACHED_UTIL_HPP
