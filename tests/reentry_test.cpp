// Re-entry: a dict used from inside its own read-modify-write function on the same thread.
//
// Reported failure: `d.update("k", [&](auto v) { return v.value_or(0) + d.get("k").value_or(0); })`
// never returned (the read waited on the update's own write lock; no deadlock cycle, no dead
// process). Now every such call throws reentry_error at once and the key keeps its value. Each
// case runs in a forked child with a time bound, so that a regression fails instead of hanging.
#include <cstdint>
#include <functional>
#include <string>

#include <smisk/ipc.hpp>

#include "map_backend.hpp"
#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
using namespace smisk_test;
using namespace std::chrono_literals;

using int_dict = ipc::shared_dict<std::string, std::int64_t>;

/// Calls of every kind that a function may make on the dict.
const std::vector<std::pair<std::string, std::function<void(int_dict&, const std::string&)>>>&
nested_calls() {
  static const std::vector<
      std::pair<std::string, std::function<void(int_dict&, const std::string&)>>>
      calls = {
          {"get", [](int_dict& d, const std::string& k) { (void)d.get(k); }},
          {"contains", [](int_dict& d, const std::string& k) { (void)d.contains(k); }},
          {"set", [](int_dict& d, const std::string& k) { d.set(k, 7); }},
          {"erase", [](int_dict& d, const std::string& k) { (void)d.erase(k); }},
          {"increment", [](int_dict& d, const std::string& k) { (void)d.increment(k); }},
          {"update",
           [](int_dict& d, const std::string& k) {
             (void)d.update(k, [](std::optional<std::int64_t> v) { return v.value_or(0); });
           }},
          {"size", [](int_dict& d, const std::string&) { (void)d.size(); }},
      };
  return calls;
}

/// In a child bounded to 20 s: for each nested call, on the same key and on another key, through
/// the same handle, a copy of it and a second handle of the same dict, update() throws
/// reentry_error and the keys keep their values.
void expect_every_nested_call_refused(const ipc::bsddb::options& opts) {
  auto status = run_child(
      [&] {
        int_dict d(opts);
        int_dict copy = d;
        int_dict other(opts);
        for (const auto& [name, call] : nested_calls()) {
          for (int_dict* via : {&d, &copy, &other}) {
            for (const std::string nested_key : {"k", "other"}) {
              d.set("k", 1);
              d.set("other", 2);
              bool threw = false;
              try {
                (void)d.update("k", [&](std::optional<std::int64_t> v) {
                  call(*via, nested_key);
                  return v.value_or(0) + 100;
                });
              } catch (const ipc::reentry_error& e) {
                threw = true;
                EXPECT_NE(std::string(e.what()).find("inside"), std::string::npos) << e.what();
              }
              EXPECT_TRUE(threw) << name << " on " << nested_key << " was not refused";
              EXPECT_EQ(d.get("k"), 1) << name;
              EXPECT_EQ(d.get("other"), 2) << name;
            }
          }
        }
        // The dict is usable afterwards, and a plain update works.
        EXPECT_EQ(d.update("k", [](std::optional<std::int64_t> v) { return v.value_or(0) + 1; }),
                  2);
      },
      20s);
  EXPECT_TRUE(all_ok(status));
}

TEST(reentry, a_dict_used_inside_its_own_update_throws_instead_of_hanging_hash) {
  temp_dir dir;
  ipc::bsddb::options opts;
  opts.homedir = dir.path() + "/home";
  opts.name = "reentry";
  expect_every_nested_call_refused(opts);
}

TEST(reentry, a_dict_used_inside_its_own_update_throws_instead_of_hanging_btree) {
  temp_dir dir;
  ipc::bsddb::options opts;
  opts.homedir = dir.path() + "/home";
  opts.name = "reentry";
  opts.method = ipc::bsddb::access_method::btree;
  expect_every_nested_call_refused(opts);
}

TEST(reentry, a_compare_exchange_inside_update_is_refused_and_other_dicts_are_fine) {
  // After each read-modify-write returns the dict is usable again (the mark is cleared); a
  // compare_exchange inside update() is refused like any other call; another dict is not.
  temp_dir dir;
  ipc::bsddb::options opts;
  opts.homedir = dir.path() + "/home";
  opts.name = "reentry";
  auto status = run_child(
      [&] {
        int_dict d(opts);
        EXPECT_TRUE(d.compare_exchange("k", std::nullopt, 1));
        EXPECT_EQ(d.setdefault("k", 5), 1);
        EXPECT_EQ(d.pop("k"), 1);
        EXPECT_THROW((void)d.update("k",
                                    [&](std::optional<std::int64_t>) -> std::int64_t {
                                      (void)d.compare_exchange("k", std::nullopt, 3);
                                      return 0;
                                    }),
                     ipc::reentry_error);
        EXPECT_FALSE(d.contains("k"));
        // A different dict inside the function is fine.
        ipc::bsddb::options other_opts = opts;
        other_opts.name = "elsewhere";
        int_dict other(other_opts);
        EXPECT_EQ(d.update("k",
                           [&](std::optional<std::int64_t>) {
                             other.set("seen", 1);
                             return other.get("seen").value_or(0) + 1;
                           }),
                  2);
      },
      20s);
  EXPECT_TRUE(all_ok(status));
}

TEST(reentry, the_test_backend_refuses_it_too) {
  // The check is in shared_dict, for every backend: on memcached a set inside update() would make
  // the outer compare-and-swap fail for ever.
  using map_dict = ipc::shared_dict<std::string, std::int64_t, smisk_test::map_backend>;
  map_dict d{smisk_test::map_backend::options{}};
  d.set("k", 1);
  EXPECT_THROW((void)d.update("k",
                              [&](std::optional<std::int64_t> v) {
                                d.set("k", 5);
                                return v.value_or(0);
                              }),
               ipc::reentry_error);
  EXPECT_EQ(d.get("k"), 1);
}

}  // namespace
