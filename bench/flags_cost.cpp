// What the transactional environment costs against Berkeley DB's fastest (unsafe) mode, side by
// side in one run: raw C API, one process, 100,000 12-byte keys and 100-byte values.
//   locking-only: DB_INIT_MPOOL | DB_INIT_LOCK (page splits can deadlock and corrupt)
//   transactional: what shared_dict uses (detail/bdb_env_config.hpp: DB_INIT_TXN | DB_INIT_LOG,
//                  auto-commit, DB_TXN_WRITE_NOSYNC, logs in the home on tmpfs); no checkpoints
#include <db.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <smisk/ipc/detail/bdb_env_config.hpp>

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct result {
  double put_ops, get_ops;
};

result run(bool transactional, int n) {
  std::string home = "/dev/shm/smisk-ipc-flags-cost-" + std::to_string(transactional);
  std::system(("rm -rf " + home + " && mkdir -p " + home).c_str());
  DB_ENV* env = nullptr;
  db_env_create(&env, 0);
  // shared_dict's environment; locking-only: its locking part.
  smisk::ipc::detail::bdb::env_config config;
  config.transactions = transactional;
  config.is_alive = [](DB_ENV*, pid_t, db_threadid_t, u_int32_t) { return 1; };  // one process
  const smisk::ipc::detail::bdb::env_setup setup =
      smisk::ipc::detail::bdb::configure_environment(env, config);
  if (setup.rc != 0) {
    std::printf("%s: %s\n", setup.failed, db_strerror(setup.rc));
    std::exit(1);
  }
  const u_int32_t flags = setup.open_flags;
  if (int rc = env->open(env, home.c_str(), flags, 0600)) {
    std::printf("open: %s\n", db_strerror(rc));
    std::exit(1);
  }
  DB* db = nullptr;
  db_create(&db, env, 0);
  db->open(db, nullptr, "bench", nullptr, DB_HASH,
           DB_CREATE | DB_THREAD | (transactional ? DB_AUTO_COMMIT : 0), 0600);
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) {
    char k[16];
    std::snprintf(k, sizeof k, "key:%08d", (i * 7919) % n);
    keys.emplace_back(k);
  }
  std::string value(100, 'v');
  auto t0 = std::chrono::steady_clock::now();
  for (const auto& k : keys) {
    DBT kd, vd;
    std::memset(&kd, 0, sizeof kd);
    std::memset(&vd, 0, sizeof vd);
    kd.data = const_cast<char*>(k.data());
    kd.size = static_cast<u_int32_t>(k.size());
    vd.data = value.data();
    vd.size = static_cast<u_int32_t>(value.size());
    if (db->put(db, nullptr, &kd, &vd, 0) != 0) std::abort();
  }
  double put_s = seconds_since(t0);
  char buf[256];
  t0 = std::chrono::steady_clock::now();
  for (const auto& k : keys) {
    DBT kd, vd;
    std::memset(&kd, 0, sizeof kd);
    std::memset(&vd, 0, sizeof vd);
    kd.data = const_cast<char*>(k.data());
    kd.size = static_cast<u_int32_t>(k.size());
    vd.data = buf;
    vd.ulen = sizeof buf;
    vd.flags = DB_DBT_USERMEM;
    if (db->get(db, nullptr, &kd, &vd, 0) != 0 || vd.size != 100) std::abort();
  }
  double get_s = seconds_since(t0);
  db->close(db, 0);
  env->close(env, 0);
  std::system(("rm -rf " + home).c_str());
  return {n / put_s, n / get_s};
}

}  // namespace

int main() {
  const int n = 100000;
  std::printf("%-16s %12s %12s\n", "mode", "put ops/s", "get ops/s");
  for (int round = 0; round < 3; ++round) {
    result lo = run(false, n);
    result tx = run(true, n);
    std::printf("%-16s %12.0f %12.0f\n", "locking-only", lo.put_ops, lo.get_ops);
    std::printf("%-16s %12.0f %12.0f   (put %.2fx, get %.2fx of locking-only)\n", "transactional",
                tx.put_ops, tx.get_ops, tx.put_ops / lo.put_ops, tx.get_ops / lo.get_ops);
  }
}
