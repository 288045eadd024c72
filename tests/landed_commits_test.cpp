// Exactly-once redo, piece by piece: what the recovering process records of a broken
// environment's commits (detail/bdb_landed_commits.hpp), checked against Berkeley DB's own log
// with transactions whose fate the test knows. The chaos test in crash_test.cpp checks the whole
// (never-killed workers' keys equal what they were told was applied).
//
// Each case: a child process opens a raw environment, commits some transactions, leaves others
// open, and _exit()s without closing it, as a killed process would. The test then recovers the
// home as the library does (retire_regions, begin_recovery, DB_RECOVER, record_landed_commits)
// and asks look_up_commit about each transaction.
#include <db.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdint>
#include <string>
#include <vector>

#include <smisk/ipc/bsddb.hpp>

#include "test_util.hpp"

namespace {

namespace bdb = smisk::ipc::detail::bdb;
using namespace smisk_test;

constexpr int kCommitted = 20;

/// What a child did, in shared memory.
struct child_log {
  std::uint32_t envid;
  std::uint32_t committed[kCommitted];  // committed after the last checkpoint
  std::uint32_t open_txn;               // began and wrote, never committed
};

DB_ENV* open_env(const std::string& home, bool recover) {
  DB_ENV* env = nullptr;
  EXPECT_EQ(::db_env_create(&env, 0), 0);
  EXPECT_EQ(env->log_set_config(env, DB_LOG_AUTO_REMOVE, 0), 0);
  const int rc = env->open(env, home.c_str(),
                           DB_CREATE | DB_INIT_MPOOL | DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_TXN |
                               (recover ? DB_RECOVER : 0u),
                           0600);
  EXPECT_EQ(rc, 0) << db_strerror(rc);
  return env;
}

int put(DB_ENV* env, DB* db, const std::string& key, DB_TXN** txn_out) {
  DB_TXN* txn = nullptr;
  if (int rc = env->txn_begin(env, nullptr, &txn, 0)) return rc;
  DBT k, v;
  std::memset(&k, 0, sizeof k);
  std::memset(&v, 0, sizeof v);
  k.data = const_cast<char*>(key.data());
  k.size = static_cast<u_int32_t>(key.size());
  v.data = k.data;
  v.size = k.size;
  if (int rc = db->put(db, txn, &k, &v, 0)) return rc;
  *txn_out = txn;
  return 0;
}

/// The child: commits kCommitted transactions after a checkpoint, leaves one open, and
/// _exit()s with the environment open.
void run_breaking_child(const std::string& home, child_log* out) {
  DB_ENV* env = open_env(home, false);
  DB* db = nullptr;
  ASSERT_EQ(::db_create(&db, env, 0), 0);
  ASSERT_EQ(db->open(db, nullptr, "d.db", nullptr, DB_BTREE, DB_CREATE | DB_AUTO_COMMIT, 0600), 0);
  smisk::ipc::detail::unique_fd primary = bdb::open_primary_region(home, O_RDONLY);
  out->envid = bdb::regenv_word(primary.get(), bdb::regenv_envid_offset);
  DB_TXN* txn = nullptr;
  ASSERT_EQ(put(env, db, "before the checkpoint", &txn), 0);
  ASSERT_EQ(txn->commit(txn, 0), 0);
  ASSERT_EQ(env->txn_checkpoint(env, 0, 0, DB_FORCE), 0);
  for (int i = 0; i < kCommitted; ++i) {
    ASSERT_EQ(put(env, db, "k" + std::to_string(i), &txn), 0);
    out->committed[i] = txn->id(txn);
    ASSERT_EQ(txn->commit(txn, 0), 0);
  }
  ASSERT_EQ(put(env, db, "never committed", &txn), 0);
  out->open_txn = txn->id(txn);
  ASSERT_EQ(env->log_flush(env, nullptr), 0);
}

child_log* shared_log() {
  void* p =
      ::mmap(nullptr, sizeof(child_log), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  return new (p) child_log{};
}

void break_in_child(const std::string& home, child_log* log) {
  const pid_t child = fork_child([&] { run_breaking_child(home, log); });
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  ASSERT_NE(log->envid, 0u);
}

/// Recovers the home as the library's registry does, records, and closes. `interrupted`: the
/// recovery stops (as if killed) after DB_RECOVER and before it records anything.
void recover(const std::string& home, bool interrupted = false) {
  const std::uint32_t retired = bdb::retire_regions(home);
  const auto targets = bdb::begin_recovery(home, retired, 0600);
  DB_ENV* env = open_env(home, true);
  if (!interrupted) {
    EXPECT_TRUE(bdb::record_landed_commits(env, home, targets, 0600));
  }
  ASSERT_EQ(env->close(env, 0), 0);
}

bdb::commit_outcome look_up(const std::string& home, std::uint32_t envid, std::uint32_t txnid) {
  bdb::commit_ticket t;
  t.envid = envid;
  t.txnid = txnid;
  return bdb::look_up_commit(home, t);
}

void expect_outcomes(const std::string& home, const child_log& log) {
  for (int i = 0; i < kCommitted; ++i) {
    EXPECT_EQ(look_up(home, log.envid, log.committed[i]), bdb::commit_outcome::landed) << i;
  }
  EXPECT_EQ(look_up(home, log.envid, log.open_txn), bdb::commit_outcome::lost);
  // An id no transaction of that environment had.
  EXPECT_EQ(look_up(home, log.envid, log.open_txn + 1000), bdb::commit_outcome::lost);
  // An environment no recovery recorded.
  EXPECT_EQ(look_up(home, log.envid ^ 0x5a5a5a5au, log.committed[0]), bdb::commit_outcome::unknown);
}

TEST(landed_commits, a_recovery_records_the_commits_that_landed_and_not_the_open_transaction) {
  temp_dir dir;
  child_log* log = shared_log();
  break_in_child(dir.path(), log);
  recover(dir.path());
  expect_outcomes(dir.path(), *log);
}

TEST(landed_commits, a_recovery_after_an_interrupted_one_records_the_environment_that_broke) {
  temp_dir dir;
  child_log* log = shared_log();
  break_in_child(dir.path(), log);
  // The first recovery dies before it records anything; the environment it leaves was never
  // used. The next one records the environment that broke, not that one.
  recover(dir.path(), true);
  EXPECT_EQ(look_up(dir.path(), log->envid, log->committed[0]), bdb::commit_outcome::unknown);
  recover(dir.path());
  expect_outcomes(dir.path(), *log);
}

TEST(landed_commits, the_record_stays_bounded_and_keeps_the_newest_recoveries) {
  temp_dir dir;
  child_log* first = shared_log();
  break_in_child(dir.path(), first);
  recover(dir.path());
  child_log* last = shared_log();
  for (int i = 0; i < 50; ++i) {
    break_in_child(dir.path(), last);
    recover(dir.path());
  }
  expect_outcomes(dir.path(), *last);
  // The first environment's record is gone (more than kept_sections recoveries since): its
  // interrupted writes would get an error, never a wrong answer.
  EXPECT_EQ(look_up(dir.path(), first->envid, first->committed[0]), bdb::commit_outcome::unknown);
  struct stat st;
  ASSERT_EQ(::stat((dir.path() + "/" + bdb::landed_file_name).c_str(), &st), 0);
  EXPECT_LT(st.st_size, 64 * 1024);
}

TEST(landed_commits, a_corrupt_record_gives_unknown_and_the_next_recovery_rewrites_it) {
  temp_dir dir;
  child_log* log = shared_log();
  break_in_child(dir.path(), log);
  recover(dir.path());
  const std::string path = dir.path() + "/" + bdb::landed_file_name;
  const std::string good = read_file(path);
  ASSERT_GT(good.size(), 16u);
  write_file(path, good.substr(0, 10) + std::string(64, '\xff'));
  EXPECT_NE(look_up(dir.path(), log->envid, log->committed[0]), bdb::commit_outcome::landed);
  write_file(path, "not ours at all");
  EXPECT_EQ(look_up(dir.path(), log->envid, log->committed[0]), bdb::commit_outcome::unknown);
  break_in_child(dir.path(), log);
  recover(dir.path());
  expect_outcomes(dir.path(), *log);
}

}  // namespace
