// Tests: writing one record into a dict's database through Berkeley DB's C API, as a foreign
// program would.
#pragma once
#include <db.h>

#include <string>

namespace smisk_test {

// Overwrites (or creates) one record of the "data" sub-database of <home>/<name> with raw
// bytes, through the Berkeley DB C API, from a separate process that joins the environment the
// library created, as a foreign program would. Returns "" or what failed.
inline std::string raw_put(const std::string& home, const std::string& name, const std::string& key,
                           const std::string& bytes, const char* subdb = "data") {
  DB_ENV* env = nullptr;
  DB* db = nullptr;
  std::string failure;
  auto check = [&](int rc, const char* what) {
    if (rc != 0 && failure.empty()) failure = std::string(what) + ": " + db_strerror(rc);
    return rc == 0;
  };
  if (check(db_env_create(&env, 0), "db_env_create") &&
      check(env->open(env, home.c_str(), DB_JOINENV, 0), "DB_ENV->open(DB_JOINENV)")) {
    u_int32_t env_flags = 0;
    env->get_open_flags(env, &env_flags);
    const u_int32_t auto_commit = (env_flags & DB_INIT_TXN) ? DB_AUTO_COMMIT : 0;
    if (check(db_create(&db, env, 0), "db_create") &&
        check(db->open(db, nullptr, name.c_str(), subdb, DB_UNKNOWN, auto_commit, 0),
              "DB->open(sub-database)")) {
      DBT k{};
      DBT v{};
      k.data = const_cast<char*>(key.data());
      k.size = static_cast<u_int32_t>(key.size());
      v.data = const_cast<char*>(bytes.data());
      v.size = static_cast<u_int32_t>(bytes.size());
      int rc;
      int attempts = 0;
      do {
        rc = db->put(db, nullptr, &k, &v, 0);
      } while (rc == DB_LOCK_DEADLOCK && ++attempts < 100);
      check(rc, "DB->put");
    }
  }
  if (db != nullptr) check(db->close(db, 0), "DB->close");
  if (env != nullptr) check(env->close(env, 0), "DB_ENV->close");
  return failure;
}

}  // namespace smisk_test
