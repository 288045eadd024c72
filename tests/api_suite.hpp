// The typed suite of the whole shared_dict API, run on every backend. A test file defines
// "stores" (each with `template <class K, class V> auto open(const std::string& name)` returning
// a fresh dict of its backend) and instantiates the suite:
//   INSTANTIATE_TYPED_TEST_SUITE_P(my_backend, api, ::testing::Types<my_store>);
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

namespace ipc = smisk::ipc;

namespace api_suite {

struct point {
  int x = 0;
  int y = 0;
  bool operator==(const point& o) const { return x == o.x && y == o.y; }
};

enum class color : std::uint8_t { red = 1, green = 2, blue = 200 };

}  // namespace api_suite

// A user codec: "x,y".
template <>
struct smisk::ipc::codec<api_suite::point> {
  static constexpr std::string_view name = "point";
  static void encode(const api_suite::point& p, std::string& out) {
    out = std::to_string(p.x) + "," + std::to_string(p.y);
  }
  static api_suite::point decode(std::string_view bytes) {
    auto comma = bytes.find(',');
    if (comma == std::string_view::npos) throw codec_error("point: no comma");
    return {codec<int>::decode(bytes.substr(0, comma)),
            codec<int>::decode(bytes.substr(comma + 1))};
  }
};

namespace api_suite {

template <class Store>
class api : public ::testing::Test {
 protected:
  template <class K, class V>
  auto open(const std::string& name = "dict") {
    return store_.template open<K, V>(name);
  }
  Store store_;
};

TYPED_TEST_SUITE_P(api);

TYPED_TEST_P(api, get_set_and_fallbacks) {
  auto d = this->template open<std::string, std::string>();
  EXPECT_EQ(d.get("missing"), std::nullopt);
  EXPECT_EQ(d.get("missing", "fallback"), "fallback");
  EXPECT_FALSE(d.contains("missing"));
  EXPECT_THROW((void)d.at("missing"), ipc::key_error);

  d.set("k", "v1");
  EXPECT_EQ(d.get("k"), std::optional<std::string>("v1"));
  EXPECT_EQ(d.get("k", "fallback"), "v1");
  EXPECT_EQ(d.at("k"), "v1");
  EXPECT_TRUE(d.contains("k"));
  d.set("k", "v2");
  EXPECT_EQ(d.at("k"), "v2");
}

TYPED_TEST_P(api, key_error_is_an_ipc_error) {
  auto d = this->template open<std::string, std::string>();
  try {
    (void)d.at("nope");
    FAIL() << "at() of a missing key returned";
  } catch (const ipc::error& e) {
    EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos) << e.what();
  }
}

TYPED_TEST_P(api, bracket_sugar) {
  auto d = this->template open<std::string, std::string>();
  d["a"] = "alpha";
  std::string a = d["a"];
  EXPECT_EQ(a, "alpha");
  d["b"] = d["a"];  // stores a's value under b
  EXPECT_EQ(d.at("b"), "alpha");
  d["a"] = "changed";
  EXPECT_EQ(d.at("b"), "alpha");
  EXPECT_THROW(
      {
        std::string missing = d["missing"];
        (void)missing;
      },
      ipc::key_error);
  EXPECT_FALSE(d.contains("missing"));  // reading does not insert
  const auto& cd = d;
  EXPECT_EQ(cd["a"], "changed");
  EXPECT_THROW((void)cd["missing"], ipc::key_error);

  auto n = this->template open<std::string, std::int64_t>("numbers");
  n["hits"] = 1;
  n["hits"] += 41;
  EXPECT_EQ(n.at("hits"), 42);
  n["hits"] -= 2;
  EXPECT_EQ(static_cast<std::int64_t>(n["hits"]), 40);
}

TYPED_TEST_P(api, bracket_proxy_behaves_like_the_value) {
  auto d = this->template open<std::string, std::string>();
  d["k"] = "x";
  EXPECT_TRUE(d["k"] == "x");
  EXPECT_TRUE("x" == d["k"]);
  EXPECT_TRUE(d["k"] != std::string("y"));
  EXPECT_TRUE(d["k"] < "y");
  EXPECT_TRUE(d["k"] >= "x");
  d["same"] = "x";
  EXPECT_TRUE(d["k"] == d["same"]);
  EXPECT_FALSE(d["k"] != d["same"]);
  d["later"] = "y";
  EXPECT_TRUE(d["k"] < d["later"]);
  EXPECT_TRUE(d["later"] >= d["k"]);
  EXPECT_EQ(d["k"]->size(), 1u);
  std::ostringstream shown;
  shown << d["k"] << '|' << d["same"];
  EXPECT_EQ(shown.str(), "x|x");
  // `auto` keeps the reference: each use reads again, and a missing key throws at use.
  auto live = d["k"];
  d["k"] = "changed";
  EXPECT_TRUE(live == "changed");
  auto missing = d["missing"];
  EXPECT_THROW((void)(missing == "x"), ipc::key_error);
  EXPECT_THROW((void)missing->size(), ipc::key_error);
  std::ostringstream nothing;
  EXPECT_THROW(nothing << missing, ipc::key_error);

  auto n = this->template open<std::string, std::int64_t>("counters");
  EXPECT_EQ(n["/"]++, 0);  // absent counts as 0, as for increment()
  EXPECT_EQ(n.at("/"), 1);
  ++n["/"];
  EXPECT_EQ(n["/"]--, 2);
  --n["/"];
  EXPECT_TRUE(n["/"] == 0);
  n["/"] += 10;
  EXPECT_TRUE(5 < n["/"]);
  EXPECT_TRUE(n["/"] <= 10);
  std::ostringstream number;
  number << n["/"];
  EXPECT_EQ(number.str(), "10");
  // Subtracting the smallest integer is not a negation (that would be undefined).
  constexpr std::int64_t min64 = std::numeric_limits<std::int64_t>::min();
  n["m"] = -1;
  n["m"] -= min64;
  EXPECT_EQ(n.at("m"), std::numeric_limits<std::int64_t>::max());
  n["z"] = 0;
  EXPECT_THROW(n["z"] -= min64, ipc::overflow_error);
  EXPECT_EQ(n.at("z"), 0);
  auto small = this->template open<std::string, std::int8_t>("small");
  small["s"] = -1;
  small["s"] -= std::numeric_limits<std::int8_t>::min();
  EXPECT_EQ(small.at("s"), 127);

  auto u = this->template open<std::string, std::uint32_t>("unsigned");
  EXPECT_EQ(u["w"]--, 0u);  // wraps, as in C++
  EXPECT_EQ(u.at("w"), std::numeric_limits<std::uint32_t>::max());
  u["w"] -= 1u;
  EXPECT_EQ(u.at("w"), std::numeric_limits<std::uint32_t>::max() - 1);
}

// A key type that converts to std::string but not to std::string_view (as std::filesystem::path
// does): lookups through `const K&` keep working for it.
struct spelled {
  std::string text;
  operator std::string() const { return text; }  // NOLINT(google-explicit-constructor)
};

template <class D, class = void>
struct looks_up_views : std::false_type {};
template <class D>
struct looks_up_views<
    D, std::void_t<decltype(std::declval<const D&>().contains(std::declval<std::string_view>()))>>
    : std::true_type {};

TYPED_TEST_P(api, string_keys_are_looked_up_through_a_view) {
  auto d = this->template open<std::string, std::string>();
  // std::string is built from a view only explicitly: the lookups take views themselves (a
  // literal or a view builds no std::string).
  static_assert(looks_up_views<decltype(d)>::value);
  const std::string long_key(100, 'k');
  d[long_key] = "v";
  const std::string_view view = long_key;
  EXPECT_EQ(d.get(view), std::optional<std::string>("v"));
  EXPECT_EQ(d.get(view.substr(1), "fallback"), "fallback");
  EXPECT_EQ(d.at(view), "v");
  EXPECT_TRUE(d.contains(view));
  EXPECT_FALSE(d.contains(view.substr(0, 99)));
  const auto& cd = d;
  EXPECT_EQ(cd[view], "v");
  // Through a view on a dict that is not const, d[k] is the reference: it stores.
  d[view] = "stored through a view";
  EXPECT_EQ(d.at(long_key), "stored through a view");
  d[std::string_view("new")] = "also";
  EXPECT_EQ(d.at("new"), "also");
  EXPECT_TRUE(d.erase(view));
  EXPECT_FALSE(d.contains(long_key));
  EXPECT_FALSE(d.get("literal").has_value());
  // What converts to std::string only still works, through const K&.
  d["p"] = "q";
  EXPECT_TRUE(d.contains(spelled{"p"}));
  EXPECT_EQ(d.get(spelled{"p"}), std::optional<std::string>("q"));
  EXPECT_TRUE(d.contains({"p"}));
  EXPECT_TRUE(d.erase(spelled{"p"}));
  // The stored value compares with what get() returns, either way round.
  d["r"] = "s";
  EXPECT_TRUE(d.get("r") == d["r"]);
  EXPECT_TRUE(d["r"] == d.get("r"));
  EXPECT_EQ(d.get("r"), d["r"]);
}

TYPED_TEST_P(api, insert_setdefault_erase_pop) {
  auto d = this->template open<std::string, std::string>();
  EXPECT_TRUE(d.insert("k", "first"));
  EXPECT_FALSE(d.insert("k", "second"));
  EXPECT_EQ(d.at("k"), "first");

  EXPECT_EQ(d.setdefault("k", "other"), "first");
  EXPECT_EQ(d.setdefault("new", "default"), "default");
  EXPECT_EQ(d.at("new"), "default");

  EXPECT_TRUE(d.erase("k"));
  EXPECT_FALSE(d.erase("k"));
  EXPECT_FALSE(d.contains("k"));

  EXPECT_EQ(d.pop("new"), std::optional<std::string>("default"));
  EXPECT_EQ(d.pop("new"), std::nullopt);
  EXPECT_FALSE(d.contains("new"));
}

TYPED_TEST_P(api, update_is_read_modify_write) {
  auto d = this->template open<std::string, std::string>();
  auto appended = d.update("log", [](std::optional<std::string> v) {
    EXPECT_FALSE(v.has_value());
    return v.value_or("") + "a";
  });
  EXPECT_EQ(appended, "a");
  EXPECT_EQ(d.update("log", [](std::optional<std::string> v) { return v.value() + "b"; }), "ab");
  EXPECT_EQ(d.at("log"), "ab");

  // An exception from fn leaves the value unchanged and propagates.
  EXPECT_THROW(d.update("log",
                        [](std::optional<std::string>) -> std::string {
                          throw std::runtime_error("refused");
                        }),
               std::runtime_error);
  EXPECT_EQ(d.at("log"), "ab");
}

TYPED_TEST_P(api, increment_arithmetic_values) {
  auto i = this->template open<std::string, std::int64_t>("i");
  EXPECT_EQ(i.increment("n"), 1);
  EXPECT_EQ(i.increment("n", 10), 11);
  EXPECT_EQ(i.increment("n", -20), -9);
  EXPECT_EQ(i.at("n"), -9);

  auto f = this->template open<std::string, double>("f");
  EXPECT_DOUBLE_EQ(f.increment("x", 0.5), 0.5);
  EXPECT_DOUBLE_EQ(f.increment("x", 0.25), 0.75);

  auto u = this->template open<int, std::uint32_t>("u");
  EXPECT_EQ(u.increment(7), 1u);
  EXPECT_EQ(u.increment(7, 4000000000u), 4000000001u);
}

TYPED_TEST_P(api, increment_at_the_limits_of_the_type) {
  // Signed integers: going past the range is an overflow_error, and the value stays.
  auto i = this->template open<std::string, std::int64_t>("i64");
  constexpr std::int64_t max64 = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t min64 = std::numeric_limits<std::int64_t>::min();
  i.set("top", max64 - 1);
  EXPECT_EQ(i.increment("top"), max64);
  EXPECT_THROW(i.increment("top"), ipc::overflow_error);
  EXPECT_THROW(i.increment("top", max64), ipc::overflow_error);
  EXPECT_EQ(i.at("top"), max64);
  EXPECT_EQ(i.increment("top", -max64), 0);
  i.set("bottom", min64 + 1);
  EXPECT_EQ(i.increment("bottom", -1), min64);
  EXPECT_THROW(i.increment("bottom", -1), ipc::overflow_error);
  EXPECT_EQ(i.at("bottom"), min64);
  EXPECT_EQ(i.increment("bottom", max64), -1);

  // Negative values and deltas, and keys that were erased.
  i.set("n", -5);
  EXPECT_EQ(i.increment("n", 3), -2);
  EXPECT_EQ(i.increment("n", 2), 0);
  EXPECT_EQ(i.increment("n", 7), 7);
  EXPECT_EQ(i.increment("n", -10), -3);
  EXPECT_TRUE(i.erase("n"));
  EXPECT_EQ(i.increment("n"), 1);
  EXPECT_EQ(i.pop("n"), 1);
  EXPECT_EQ(i.increment("n", 4), 4);
  EXPECT_EQ(i.increment("n", 0), 4);

  auto small = this->template open<std::string, std::int32_t>("i32");
  small.set("top", std::numeric_limits<std::int32_t>::max());
  EXPECT_THROW(small.increment("top"), ipc::overflow_error);
  EXPECT_EQ(small.at("top"), std::numeric_limits<std::int32_t>::max());

  // Unsigned integers wrap around, as in C++, and are stored as plain digits afterwards.
  auto u = this->template open<std::string, std::uint64_t>("u64");
  constexpr std::uint64_t umax = std::numeric_limits<std::uint64_t>::max();
  u.set("top", umax);
  EXPECT_EQ(u.increment("top"), 0u);
  EXPECT_EQ(u.at("top"), 0u);
  EXPECT_EQ(u.increment("top", 5), 5u);
  u.set("top", umax - 1);
  EXPECT_EQ(u.increment("top", 3), 1u);
  EXPECT_EQ(u.at("top"), 1u);
  EXPECT_EQ(u.increment("top", umax), 0u);
  auto byte = this->template open<std::string, std::uint8_t>("u8");
  byte.set("x", 250);
  EXPECT_EQ(byte.increment("x", 10), 4);
  EXPECT_EQ(byte.at("x"), 4);
}

TYPED_TEST_P(api, compare_exchange) {
  auto d = this->template open<std::string, std::int64_t>();
  EXPECT_FALSE(d.compare_exchange("k", std::int64_t{1}, 2));  // absent, expected a value
  EXPECT_FALSE(d.contains("k"));
  EXPECT_TRUE(d.compare_exchange("k", std::nullopt, 1));  // absent, expected absent
  EXPECT_EQ(d.at("k"), 1);
  EXPECT_FALSE(d.compare_exchange("k", std::nullopt, 5));
  EXPECT_FALSE(d.compare_exchange("k", std::int64_t{3}, 5));
  EXPECT_EQ(d.at("k"), 1);
  EXPECT_TRUE(d.compare_exchange("k", std::int64_t{1}, 5));
  EXPECT_EQ(d.at("k"), 5);
}

TYPED_TEST_P(api, set_many_from_any_range) {
  auto d = this->template open<std::string, int>();
  std::vector<std::pair<std::string, int>> v = {{"a", 1}, {"b", 2}};
  d.set_many(v);
  std::map<std::string, int> m = {{"b", 20}, {"c", 3}};
  d.set_many(m);
  EXPECT_EQ(d.at("a"), 1);
  EXPECT_EQ(d.at("b"), 20);
  EXPECT_EQ(d.at("c"), 3);
}

TYPED_TEST_P(api, whole_dict) {
  auto d = this->template open<std::string, int>();
  if constexpr (!ipc::backend_traits<typename decltype(d)::backend_type>::can_enumerate) {
    GTEST_SKIP() << "this backend cannot enumerate (size/keys/items are compile-time errors)";
  } else {
    EXPECT_TRUE(d.empty());
    EXPECT_EQ(d.size(), 0u);
    EXPECT_TRUE(d.keys().empty());
    EXPECT_EQ(d.begin(), d.end());

    std::map<std::string, int> expected;
    for (int i = 0; i < 300; ++i) expected["key" + std::to_string(i)] = i * 3;
    d.set_many(expected);
    EXPECT_FALSE(d.empty());
    EXPECT_EQ(d.size(), 300u);

    auto keys = d.keys();
    EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()).size(), 300u);
    auto values = d.values();
    long sum = 0;
    for (int v : values) sum += v;
    EXPECT_EQ(sum, 3L * 299 * 300 / 2);

    auto items = d.items();
    EXPECT_EQ((std::map<std::string, int>(items.begin(), items.end())), expected);

    std::map<std::string, int> iterated;
    for (const auto& [k, v] : d) iterated[k] = v;
    EXPECT_EQ(iterated, expected);
    std::size_t n = 0;
    for (auto it = d.begin(); it != d.end(); ++it) {
      EXPECT_EQ(expected.at(it->first), it->second);
      ++n;
    }
    EXPECT_EQ(n, 300u);

    d.clear();
    EXPECT_TRUE(d.empty());
    EXPECT_EQ(d.size(), 0u);
    EXPECT_FALSE(d.contains("key1"));
    d.set("after", 1);  // usable after clear
    EXPECT_EQ(d.size(), 1u);
    d.sync();
  }
}

TYPED_TEST_P(api, handles_share_one_store) {
  auto a = this->template open<std::string, std::string>("shared");
  auto copy = a;
  auto b = this->template open<std::string, std::string>("shared");
  a.set("k", "from a");
  EXPECT_EQ(copy.at("k"), "from a");
  EXPECT_EQ(b.at("k"), "from a");
  b.erase("k");
  EXPECT_FALSE(a.contains("k"));

  auto other = this->template open<std::string, std::string>("other");
  a.set("only-in-shared", "x");
  EXPECT_FALSE(other.contains("only-in-shared"));
}

TYPED_TEST_P(api, other_types_are_a_type_mismatch) {
  auto d = this->template open<std::string, std::int64_t>("typed");
  d.set("k", 1);
  EXPECT_THROW((this->template open<std::string, std::string>("typed")), ipc::type_mismatch);
  EXPECT_THROW((this->template open<std::int64_t, std::int64_t>("typed")), ipc::type_mismatch);
  EXPECT_THROW((this->template open<std::string, std::int32_t>("typed")), ipc::type_mismatch);
  EXPECT_EQ(d.at("k"), 1);
  auto again = this->template open<std::string, std::int64_t>("typed");
  EXPECT_EQ(again.at("k"), 1);
}

TYPED_TEST_P(api, key_and_value_types) {
  auto ints = this->template open<std::int64_t, std::string>("ints");
  ints.set(-5, "minus five");
  ints.set(0, "zero");
  EXPECT_EQ(ints.at(-5), "minus five");
  EXPECT_EQ(ints.at(0), "zero");

  auto colors = this->template open<std::string, color>("colors");
  colors.set("sky", color::blue);
  EXPECT_EQ(colors.at("sky"), color::blue);

  auto bytes = this->template open<std::vector<std::byte>, std::vector<unsigned char>>("bytes");
  std::vector<std::byte> key = {std::byte{0}, std::byte{255}, std::byte{10}};
  std::vector<unsigned char> value = {0, 1, 2, 0, 255};
  bytes.set(key, value);
  EXPECT_EQ(bytes.at(key), value);

  auto points = this->template open<std::string, point>("points");
  points.set("origin", {0, 0});
  points.update("p", [](std::optional<point> p) {
    point q = p.value_or(point{1, 1});
    q.x += 10;
    return q;
  });
  EXPECT_EQ(points.at("p"), (point{11, 1}));

  auto flags = this->template open<std::string, bool>("flags");
  flags.set("on", true);
  flags.set("off", false);
  EXPECT_TRUE(flags.at("on"));
  EXPECT_FALSE(flags.at("off"));

  auto binary = this->template open<std::string, std::string>("binary");
  std::string nul_key("a\0b", 3);
  std::string nul_value("\0\1\2", 3);
  binary.set(nul_key, nul_value);
  binary.set(std::string("a"), "plain");
  EXPECT_EQ(binary.at(nul_key), nul_value);
  EXPECT_EQ(binary.at("a"), "plain");
  binary.set("", "empty key");
  EXPECT_EQ(binary.at(""), "empty key");
  binary.set("empty value", "");
  EXPECT_EQ(binary.get("empty value"), std::optional<std::string>(""));
}

REGISTER_TYPED_TEST_SUITE_P(api, get_set_and_fallbacks, key_error_is_an_ipc_error, bracket_sugar,
                            bracket_proxy_behaves_like_the_value,
                            string_keys_are_looked_up_through_a_view, insert_setdefault_erase_pop,
                            update_is_read_modify_write, increment_arithmetic_values,
                            increment_at_the_limits_of_the_type, compare_exchange,
                            set_many_from_any_range, whole_dict, handles_share_one_store,
                            other_types_are_a_type_mismatch, key_and_value_types);

}  // namespace api_suite
