// What the library does process-wide stays scoped to its own environments (docs/embedding.md).
// Regression tests for reported failures of an application that uses smisk-ipc beside code of its
// own:
//  * its own Berkeley DB environment, opened with the C API in the same process, must keep plain
//    libdb mutexes: the library's robust-mutex patch of libdb's calls is for the library's
//    environments only;
//  * its SIGSEGV handler (a JIT, a garbage collector, a crash reporter that maps pages on demand)
//    must still get its faults, whether it was installed before the first dict or after.
#include <db.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
namespace robust = smisk::ipc::detail::robust;
using namespace smisk_test;
using namespace std::chrono_literals;
using int_dict = ipc::shared_dict<std::string, std::int64_t>;

ipc::bsddb::options temp_options(const temp_dir& dir, const std::string& name) {
  ipc::bsddb::options o;
  o.homedir = dir.path();
  o.name = name;
  o.persistent = false;
  return o;
}

// ---------------------------------------------------------------------------
// An application's own Berkeley DB environment

/// A DBT over a string's bytes.
DBT dbt(const std::string& s) {
  DBT d;
  std::memset(&d, 0, sizeof d);
  d.data = const_cast<char*>(s.data());
  d.size = static_cast<u_int32_t>(s.size());
  return d;
}

#define EXPECT_DB_OK(call)                                    \
  do {                                                        \
    const int rc_ = (call);                                   \
    EXPECT_EQ(rc_, 0) << #call << ": " << ::db_strerror(rc_); \
  } while (0)

TEST(raw_environment, an_application_environment_beside_a_dict_keeps_its_own_mutexes) {
  temp_dir dict_home(temp_base());
  temp_dir app_home(temp_base());
  int_dict d{temp_options(dict_home, "dict")};
  d.set("before", 1);
  ASSERT_EQ(d.get("before"), 1);

  // The application's environment, made and used with the C API while the dict is open (and
  // idle). Each of its process-shared mutexes that the library's patch turned robust counts in
  // robust_inits.
  const std::uint64_t inits_before = robust::event_counts.robust_inits.load();
  const long arena_chunks_before = robust::heap_chunks_taken.load();
  DB_ENV* env = nullptr;
  ASSERT_EQ(::db_env_create(&env, 0), 0);
  // Its memory is malloc's, not one of the library's arenas (libdb's allocation functions are
  // the library's once a dict is open: they route only the library's own calls).
  EXPECT_FALSE(robust::heap_owns(env));
  const int open_rc = env->open(
      env, app_home.path().c_str(),
      DB_CREATE | DB_INIT_MPOOL | DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_TXN | DB_THREAD, 0600);
  if (open_rc != 0) {
    env->close(env, 0);
    FAIL() << "DB_ENV->open " << app_home.path() << ": " << ::db_strerror(open_rc);
  }
  DB* db = nullptr;
  EXPECT_DB_OK(::db_create(&db, env, 0));
  ASSERT_NE(db, nullptr);
  EXPECT_DB_OK(db->open(db, nullptr, "app.db", nullptr, DB_BTREE,
                        DB_CREATE | DB_AUTO_COMMIT | DB_THREAD, 0600));
  DB_TXN* txn = nullptr;
  EXPECT_DB_OK(env->txn_begin(env, nullptr, &txn, 0));
  ASSERT_NE(txn, nullptr);
  EXPECT_FALSE(robust::heap_owns(txn));
  for (int i = 0; i < 5; ++i) {
    const std::string key = "k" + std::to_string(i);
    const std::string value = "v" + std::to_string(i);
    DBT k = dbt(key);
    DBT v = dbt(value);
    EXPECT_DB_OK(db->put(db, txn, &k, &v, 0));
  }
  EXPECT_DB_OK(txn->commit(txn, 0));
  txn = nullptr;
  EXPECT_DB_OK(env->txn_begin(env, nullptr, &txn, 0));
  for (int i = 0; i < 5; ++i) {
    const std::string key = "k" + std::to_string(i);
    DBT k = dbt(key);
    DBT v;
    std::memset(&v, 0, sizeof v);
    v.flags = DB_DBT_MALLOC;
    EXPECT_DB_OK(db->get(db, txn, &k, &v, 0));
    EXPECT_EQ(std::string(static_cast<const char*>(v.data), v.size), "v" + std::to_string(i));
    std::free(v.data);
  }
  EXPECT_DB_OK(txn->commit(txn, 0));
  const std::uint64_t inits_after = robust::event_counts.robust_inits.load();

  EXPECT_FALSE(robust::heap_owns(db));
  EXPECT_EQ(robust::heap_chunks_taken.load(), arena_chunks_before)
      << "the application's environment took memory from the library's arenas";
  EXPECT_EQ(inits_after, inits_before)
      << "the library's robust-mutex patch changed " << (inits_after - inits_before)
      << " mutexes of an environment that is not the library's";

  EXPECT_DB_OK(db->close(db, 0));
  EXPECT_DB_OK(env->close(env, 0));

  // The dict is not disturbed by the other environment.
  d.set("after", 2);
  EXPECT_EQ(d.get("before"), 1);
  EXPECT_EQ(d.get("after"), 2);
  EXPECT_EQ(d.increment("counter"), 1);
}

// ---------------------------------------------------------------------------
// An application's SIGSEGV handler

/// The application's handler: a page it maps PROT_NONE and makes accessible on the first fault,
/// the way a garbage collector's write barrier or a lazily mapped heap does.
struct fault_state {
  void* page = nullptr;
  std::size_t page_size = 0;
  std::atomic<int> hits{0};
  std::atomic<void*> address{nullptr};
};
fault_state faults;

void application_segv_handler(int sig, siginfo_t* info, void*) {
  const int n = faults.hits.fetch_add(1) + 1;
  faults.address.store(info->si_addr);
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  const auto lo = reinterpret_cast<std::uintptr_t>(faults.page);
  if (n > 10 || addr < lo || addr >= lo + faults.page_size) {
    // Not the fault this handler is for (or it keeps faulting): the default action, so that the
    // faulting instruction ends the process instead of looping.
    ::signal(sig, SIG_DFL);
    return;
  }
  // The write that faulted runs again on return, and now succeeds.
  (void)::mprotect(faults.page, faults.page_size, PROT_READ | PROT_WRITE);
}

void install_application_handler() {
  struct sigaction sa {};
  sa.sa_sigaction = &application_segv_handler;
  sa.sa_flags = SA_SIGINFO;
  ::sigemptyset(&sa.sa_mask);
  ASSERT_EQ(::sigaction(SIGSEGV, &sa, nullptr), 0) << std::strerror(errno);
}

/// Maps a PROT_NONE page and writes to it: a real fault, which the application's handler must
/// get once, with the page's address, after which the write takes effect.
void fault_and_check() {
  faults.page_size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  faults.page = ::mmap(nullptr, faults.page_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(faults.page, MAP_FAILED) << std::strerror(errno);
  volatile char* target = static_cast<volatile char*>(faults.page) + 8;
  *target = 42;  // faults; the handler opens the page; the write is made again
  EXPECT_EQ(*target, 42);
  EXPECT_EQ(faults.hits.load(), 1) << "the application's SIGSEGV handler ran that many times";
  EXPECT_EQ(faults.address.load(), const_cast<char*>(target))
      << "the handler saw another fault address";
  ::munmap(faults.page, faults.page_size);
}

/// Set in a process started by in_fresh_process(): run the scenario here.
constexpr const char* kFreshEnv = "SMISK_PROCESS_EFFECTS_FRESH";

/// Runs the current test in a new process (fork, then exec of this program with a filter for
/// the test), where no dict was ever opened before: what the first dict of a process installs
/// is what these tests are about, and a forked child of a process that already ran other tests
/// would inherit it. @returns true in that new process (the caller runs the scenario there).
bool in_fresh_process() {
  if (const char* fresh = std::getenv(kFreshEnv); fresh && std::string(fresh) == "1") {
    EXPECT_FALSE(robust::fault_handler_installed.load())
        << "not a fresh process: the library's fault handler is already installed";
    return true;
  }
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string filter =
      std::string("--gtest_filter=") + info->test_suite_name() + "." + info->name();
  const child_status st = run_child(
      [&filter] {
        ::setenv(kFreshEnv, "1", 1);
        const char* argv[] = {"process_effects_test", filter.c_str(), nullptr};
        ::execv("/proc/self/exe", const_cast<char* const*>(argv));
        std::fprintf(stderr, "execv /proc/self/exe: %s\n", std::strerror(errno));
        ::_exit(127);
      },
      60s);
  EXPECT_TRUE(all_ok(st)) << "the scenario failed in its own process (see its output above)";
  return false;
}

TEST(signal_handlers, a_segv_handler_installed_before_the_first_dict_still_gets_its_faults) {
  if (!in_fresh_process()) return;
  install_application_handler();
  temp_dir home(temp_base());
  int_dict d{temp_options(home, "dict")};
  d.set("k", 1);
  EXPECT_EQ(d.get("k"), 1);
  EXPECT_EQ(d.increment("n"), 1);
  fault_and_check();
  EXPECT_EQ(d.increment("n"), 2);
}

TEST(signal_handlers, a_segv_handler_installed_after_the_first_dict_still_gets_its_faults) {
  if (!in_fresh_process()) return;
  temp_dir home(temp_base());
  int_dict d{temp_options(home, "dict")};
  d.set("k", 1);
  EXPECT_EQ(d.get("k"), 1);
  EXPECT_EQ(d.increment("n"), 1);
  install_application_handler();
  fault_and_check();
  // The dict still works after the application took SIGSEGV over.
  d.set("k", 2);
  EXPECT_EQ(d.get("k"), 2);
  EXPECT_EQ(d.increment("n"), 2);
  EXPECT_EQ(d.size(), 2u);
}

}  // namespace
