// The FastCGI example of smisk.ipc, in C++: prefork workers behind a web server share one dict.
//
// smisk.ipc's documentation shows the canonical use, in Python:
//
//   class App(Application):
//     def application_will_start(self):
//       self.sd = shared_dict()
//     def service(self):
//       try:
//         response = self.sd[request.url.path]
//       except KeyError:
//         response = 'Hello! This was built by process #%d' % os.getpid()
//         self.sd[request.url.path] = response
//       self.response(response)
//
// Here too, each worker process (spawn-fcgi forks them) creates its dicts once, when it starts,
// and service() answers a path from the shared dict, or builds the answer and stores it. One
// change: the answer is stored with setdefault(), not d[path] = answer, so that when two workers
// miss the same path at the same moment, both serve the answer that was stored first; with
// d[path] = answer the second would overwrite the first, and the first client would have seen an
// answer that nobody else ever sees again.
//
// Every response says which process served it (X-Served-By) and whether the answer was built for
// it (X-Cache: miss) or found in the dict (X-Cache: hit). /stats shows the counters that every
// worker increments (hits per path, requests per worker); /stats?tsv is the same, tab-separated.
//
// The application is a template over the dict backend: Berkeley DB by default (--home DIR), or
// memcached (--memcached HOST:PORT[,HOST:PORT...]); nothing else changes. Run it with --help.
//
// Run outside a FastCGI server (fd 0 is not a socket), it answers the one CGI request described
// by its environment (REQUEST_URI, QUERY_STRING) on stdout, e.g.
//   REQUEST_URI=/hello ./fastcgi_example --home /tmp/fastcgi-example
#include <fcgiapp.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <smisk/ipc.hpp>
#if defined(SMISK_IPC_WITH_MEMCACHED) && SMISK_IPC_WITH_MEMCACHED
#define FASTCGI_EXAMPLE_MEMCACHED 1
#include <smisk/ipc/memcached.hpp>
#else
#define FASTCGI_EXAMPLE_MEMCACHED 0
#endif

namespace ipc = smisk::ipc;

namespace {

const char usage[] =
    "usage: fastcgi_example [options]\n"
    "\n"
    "A FastCGI application (run it with spawn-fcgi behind nginx): every worker process shares\n"
    "the answers it builds and the hit counters through smisk::ipc::shared_dict.\n"
    "\n"
    "  --backend bsddb|memcached   the dict backend (default bsddb)\n"
    "  --home DIR                  bsddb: the dicts' home directory (default: the library's,\n"
    "                              /dev/shm/smisk-ipc.<user>.<program>)\n"
    "  --persistent                bsddb: keep the dicts on disk when the last worker exits\n"
    "  --memcached NODES           memcached: comma-separated host:port list (implies\n"
    "                              --backend memcached; default 127.0.0.1:11211)\n"
    "  --name NAME                 the dicts are NAME.pages, NAME.hits and NAME.index\n"
    "                              (bsddb: database names in the home; memcached: namespaces)\n"
    "                              (default smisk-fastcgi)\n"
    "  --log FILE                  append messages (start, stop, errors) to FILE; spawn-fcgi\n"
    "                              sends the workers' stderr to /dev/null\n"
    "\n"
    "Pages: any path answers \"Hello! This was built by process #PID\" (built once, then shared);\n"
    "/stats shows the shared counters (/stats?tsv tab-separated).\n";

struct settings {
  std::string backend = "bsddb";
  std::string home;
  bool persistent = false;
  std::vector<std::string> nodes;
  std::string name = "smisk-fastcgi";
  std::string log;
};

// Parses the command line; exits with a message on a bad one.
settings parse_arguments(int argc, char** argv) {
  settings s;
  auto fail = [](const std::string& message) {
    std::fprintf(stderr, "fastcgi_example: %s\n%s", message.c_str(), usage);
    std::exit(2);
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else if (arg == "--backend") {
      s.backend = value();
    } else if (arg == "--home") {
      s.home = value();
    } else if (arg == "--persistent") {
      s.persistent = true;
    } else if (arg == "--memcached") {
      s.backend = "memcached";
      std::string list = value();
      for (std::size_t start = 0; start <= list.size();) {
        std::size_t comma = list.find(',', start);
        if (comma == std::string::npos) comma = list.size();
        if (comma > start) s.nodes.push_back(list.substr(start, comma - start));
        start = comma + 1;
      }
    } else if (arg == "--name") {
      s.name = value();
    } else if (arg == "--log") {
      s.log = value();
    } else {
      fail("unknown argument " + arg);
    }
  }
  if (s.backend != "bsddb" && s.backend != "memcached") fail("unknown backend " + s.backend);
  if (s.name.empty()) fail("--name must not be empty");
  return s;
}

struct response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

const char* reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

// The header block (CGI style: nginx turns Status into the status line) and the body.
std::string serialize(const response& r) {
  std::string out = "Status: " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
  for (const auto& [name, value] : r.headers) out += name + ": " + value + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n\r\n";
  out += r.body;
  return out;
}

// The lines of a newline-terminated list.
std::vector<std::string> lines_of(std::string_view list) {
  std::vector<std::string> lines;
  while (!list.empty()) {
    std::size_t end = list.find('\n');
    if (end == std::string_view::npos) end = list.size();
    if (end > 0) lines.emplace_back(list.substr(0, end));
    list.remove_prefix(std::min(end + 1, list.size()));
  }
  return lines;
}

bool has_line(std::string_view list, std::string_view line) {
  for (const auto& l : lines_of(list))
    if (l == line) return true;
  return false;
}

std::string pad_left(std::string s, std::size_t width) {
  if (s.size() < width) s.insert(0, width - s.size(), ' ');
  return s;
}

std::string pad_right(std::string s, std::size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

// The pid in an answer "Hello! This was built by process #PID", or the whole answer.
std::string builder_of(const std::string& answer) {
  std::size_t hash = answer.rfind('#');
  return hash == std::string::npos ? answer : answer.substr(hash + 1);
}

// The application, over any shared_dict backend.
template <class Backend>
class application {
 public:
  template <class V>
  using dict = ipc::shared_dict<std::string, V, Backend>;

  // Opens the three dicts, whose options make_options("pages" / "hits" / "index") gives, and
  // records this worker. Called once per worker process, when it starts.
  template <class MakeOptions>
  application(std::string backend_name, MakeOptions&& make_options)
      : backend_name_(std::move(backend_name)),
        pid_(std::to_string(::getpid())),
        pages_(make_options("pages")),
        hits_(make_options("hits")),
        index_(make_options("index")) {
    remember("workers", pid_);
  }

  const std::string& pid() const { return pid_; }

  response service(const std::string& path, std::string_view query) {
    if (path == "/stats") return stats(query == "tsv" || query == "format=tsv");
    response r;
    std::optional<std::string> answer = pages_.get(path);
    bool built = false;
    if (!answer) {
      // Listed before the answer is stored: a path that has an answer is always listed (the
      // memcached backend cannot enumerate its keys, so /stats reads this list).
      remember("paths", path);
      std::string mine = "Hello! This was built by process #" + pid_;
      answer = pages_.setdefault(path, mine);  // another worker's answer if it stored one first
      built = *answer == mine;
    }
    hits_.increment(path);
    hits_.increment("worker:" + pid_);
    r.headers.emplace_back("Content-Type", "text/plain; charset=utf-8");
    r.headers.emplace_back("X-Cache", built ? "miss" : "hit");
    r.body = *answer + "\n";
    return r;
  }

 private:
  // Adds item to the newline-separated list under key, once; the list is capped at 64 KiB.
  void remember(const std::string& key, const std::string& item) {
    if (item.find('\n') != std::string::npos) return;
    index_.update(key, [&item](std::optional<std::string> list) {
      std::string s = list.value_or(std::string());
      if (has_line(s, item) || s.size() + item.size() >= 64 * 1024) return s;
      return s + item + "\n";
    });
  }

  response stats(bool tsv) {
    std::vector<std::string> paths = lines_of(index_.get("paths", std::string()));
    std::vector<std::string> workers = lines_of(index_.get("workers", std::string()));
    std::int64_t total = 0;
    std::string path_rows, worker_rows;
    for (const auto& path : paths) {
      std::int64_t hits = hits_.get(path, 0);
      total += hits;
      std::string builder = builder_of(pages_.get(path, std::string("?")));
      if (tsv)
        path_rows += "path\t" + path + "\t" + std::to_string(hits) + "\t" + builder + "\n";
      else
        path_rows += pad_left(std::to_string(hits), 8) + "  " + pad_right("#" + builder, 10) + " " +
                     path + "\n";
    }
    for (const auto& worker : workers) {
      std::int64_t requests = hits_.get("worker:" + worker, 0);
      if (tsv)
        worker_rows += "worker\t" + worker + "\t" + std::to_string(requests) + "\n";
      else
        worker_rows += pad_left(std::to_string(requests), 8) + "  #" + worker +
                       (worker == pid_ ? " (served this page)" : "") + "\n";
    }
    response r;
    r.headers.emplace_back("Content-Type", "text/plain; charset=utf-8");
    r.headers.emplace_back("Cache-Control", "no-store");
    if (tsv) {
      r.body = "backend\t" + backend_name_ + "\nserved_by\t" + pid_ + "\n" + path_rows +
               worker_rows + "total\t" + std::to_string(total) + "\n";
    } else {
      r.body = "smisk-ipc FastCGI example: counters that every worker shares (backend " +
               backend_name_ + ")\nThis page was served by process #" + pid_ +
               ".\n\n    hits  built by   path\n" + path_rows + pad_left(std::to_string(total), 8) +
               "             (all paths)\n\nrequests  worker\n" + worker_rows;
    }
    return r;
  }

  std::string backend_name_;
  std::string pid_;
  dict<std::string> pages_;  // path -> the answer served for it
  dict<std::int64_t> hits_;  // path -> requests; "worker:PID" -> requests that PID served
  dict<std::string> index_;  // "paths", "workers": newline-separated lists, for /stats
};

// The path of a request: REQUEST_URI up to the query (what the client asked for, undecoded).
std::string request_path(const char* request_uri, const char* document_uri) {
  std::string uri = request_uri && *request_uri ? request_uri : (document_uri ? document_uri : "");
  if (auto q = uri.find('?'); q != std::string::npos) uri.resize(q);
  return uri.empty() ? "/" : uri;
}

// service(), with every error turned into a 503 that says what failed; X-Served-By on all.
template <class Backend>
response handle(application<Backend>& app, const std::string& path, std::string_view query,
                std::string& error) {
  response r;
  try {
    r = app.service(path, query);
  } catch (const std::exception& e) {
    r = response{};
    r.status = 503;
    r.headers.emplace_back("Content-Type", "text/plain; charset=utf-8");
    r.body = std::string("smisk-ipc: ") + e.what() + "\n";
    error = "fastcgi_example[" + app.pid() + "]: " + path + ": " + e.what() + "\n";
  }
  r.headers.emplace_back("X-Served-By", app.pid());
  return r;
}

volatile std::sig_atomic_t stop_requested = 0;
pid_t main_thread_id = 0;

extern "C" void on_stop_signal(int signal_number) {
  int saved_errno = errno;
  stop_requested = 1;
  FCGX_ShutdownPending();  // sets a flag: FCGX_Accept_r returns instead of accepting again
  // The library's threads (its Berkeley DB watchdog) may take a signal meant for the process:
  // pass it on to the main thread, so that its accept() returns with EINTR.
  if (static_cast<pid_t>(::syscall(SYS_gettid)) != main_thread_id)
    ::syscall(SYS_tgkill, ::getpid(), main_thread_id, signal_number);
  errno = saved_errno;
}

// SIGTERM, SIGINT, SIGHUP: finish the request in progress, then exit normally (which closes the
// dicts; the last worker out removes a temporary Berkeley DB home).
void install_stop_handlers() {
  main_thread_id = static_cast<pid_t>(::syscall(SYS_gettid));
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: a blocked accept() returns EINTR
  for (int signal_number : {SIGTERM, SIGINT, SIGHUP}) sigaction(signal_number, &action, nullptr);
}

template <class Backend, class MakeOptions>
int serve(const settings& s, MakeOptions&& make_options) {
  std::optional<application<Backend>> app;
  try {
    app.emplace(s.backend, make_options);  // the canonical pattern: once per worker, at start
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fastcgi_example[%d]: cannot open the shared dicts: %s\n",
                 static_cast<int>(::getpid()), e.what());
    return 1;
  }

  if (FCGX_IsCGI()) {  // not under a FastCGI server: answer the CGI request in the environment
    const char* query = std::getenv("QUERY_STRING");
    std::string error;
    response r = handle(*app, request_path(std::getenv("REQUEST_URI"), std::getenv("DOCUMENT_URI")),
                        query ? query : "", error);
    std::fputs(error.c_str(), stderr);
    std::string out = serialize(r);
    std::fwrite(out.data(), 1, out.size(), stdout);
    return r.status == 200 ? 0 : 1;
  }

  std::fprintf(stderr, "fastcgi_example[%s]: serving, backend %s\n", app->pid().c_str(),
               s.backend.c_str());
  FCGX_Request request;
  FCGX_InitRequest(&request, 0 /* FCGI_LISTENSOCK_FILENO */, FCGI_FAIL_ACCEPT_ON_INTR);
  int failures = 0;
  while (!stop_requested) {
    int rc = FCGX_Accept_r(&request);
    if (rc < 0) {
      if (stop_requested || rc == -EINTR) continue;
      std::fprintf(stderr, "fastcgi_example[%s]: accept failed: %s\n", app->pid().c_str(),
                   std::strerror(-rc));
      if (++failures > 100) return 1;
      ::usleep(100 * 1000);
      continue;
    }
    failures = 0;
    const char* query = FCGX_GetParam("QUERY_STRING", request.envp);
    std::string error;
    response r = handle(*app,
                        request_path(FCGX_GetParam("REQUEST_URI", request.envp),
                                     FCGX_GetParam("DOCUMENT_URI", request.envp)),
                        query ? query : "", error);
    if (!error.empty()) FCGX_PutStr(error.data(), static_cast<int>(error.size()), request.err);
    std::string out = serialize(r);
    FCGX_PutStr(out.data(), static_cast<int>(out.size()), request.out);
    FCGX_Finish_r(&request);
  }
  FCGX_Finish_r(&request);
  std::fprintf(stderr, "fastcgi_example[%s]: stopped\n", app->pid().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const settings s = parse_arguments(argc, argv);
  if (!s.log.empty()) {  // stderr to the log file (fd 0 is the FastCGI socket: left alone)
    int fd = ::open(s.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || ::dup2(fd, STDERR_FILENO) < 0) {
      std::fprintf(stderr, "fastcgi_example: cannot open %s: %s\n", s.log.c_str(),
                   std::strerror(errno));
      return 2;
    }
    if (fd != STDERR_FILENO) ::close(fd);
  }
  install_stop_handlers();
  if (FCGX_Init() != 0) {
    std::fprintf(stderr, "fastcgi_example: FCGX_Init failed\n");
    return 1;
  }

  if (s.backend == "bsddb") {
    if (!s.nodes.empty()) std::fprintf(stderr, "fastcgi_example: --memcached ignored (bsddb)\n");
    return serve<ipc::bsddb::backend>(s, [&s](const char* what) {
      ipc::bsddb::options o;
      o.homedir = s.home;  // empty: the library's default home for this program and user
      o.name = s.name + "." + what;
      o.persistent = s.persistent;
      return o;
    });
  }
#if FASTCGI_EXAMPLE_MEMCACHED
  if (!s.home.empty() || s.persistent)
    std::fprintf(stderr, "fastcgi_example: --home and --persistent ignored (memcached)\n");
  return serve<ipc::memcached::backend>(s, [&s](const char* what) {
    ipc::memcached::options o;
    if (!s.nodes.empty()) o.nodes = s.nodes;
    o.name = s.name + "." + what;
    return o;
  });
#else
  std::fprintf(stderr,
               "fastcgi_example: built without the memcached backend (link smisk::ipc_memcached, "
               "which needs libmemcached)\n");
  return 2;
#endif
}
