// The stored byte format of the built-in codecs, and their errors.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <typeinfo>
#include <vector>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

namespace ipc = smisk::ipc;

namespace {

template <class T>
std::string bytes_of(const T& v) {
  std::string out = "garbage that encode must replace";
  ipc::codec<T>::encode(v, out);
  return out;
}

struct no_codec_for_me {};
enum class level : std::int16_t { low = -3, high = 300 };
enum class other_level : std::int16_t { low = -3, high = 300 };

TEST(codec, format_is_documented_text) {
  EXPECT_EQ(bytes_of(std::string("a b\n")), "a b\n");
  EXPECT_EQ(bytes_of(std::int64_t{-42}), "-42");
  EXPECT_EQ(bytes_of(std::uint64_t{18446744073709551615ull}), "18446744073709551615");
  EXPECT_EQ(bytes_of(std::int8_t{-128}), "-128");
  EXPECT_EQ(bytes_of(true), "1");
  EXPECT_EQ(bytes_of(false), "0");
  EXPECT_EQ(bytes_of(0.1), "0.1");
  EXPECT_EQ(bytes_of(1e300), "1e+300");
  EXPECT_EQ(bytes_of(level::low), "-3");
  EXPECT_EQ(bytes_of(std::vector<std::byte>{std::byte{'h'}, std::byte{'i'}}), "hi");
}

TEST(codec, round_trips) {
  for (double d : {0.0, -0.0, 0.1, 1.0 / 3, 1e-310, std::numeric_limits<double>::max(),
                   std::numeric_limits<double>::infinity()}) {
    EXPECT_EQ(ipc::codec<double>::decode(bytes_of(d)), d);
    EXPECT_EQ(std::signbit(ipc::codec<double>::decode(bytes_of(d))), std::signbit(d));
  }
  EXPECT_TRUE(std::isnan(ipc::codec<double>::decode(bytes_of(std::nan("")))));
  EXPECT_EQ(ipc::codec<float>::decode(bytes_of(3.25f)), 3.25f);
  EXPECT_EQ(ipc::codec<long double>::decode(bytes_of(1.5L)), 1.5L);
  EXPECT_EQ(ipc::codec<std::int64_t>::decode("-9223372036854775808"),
            std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(ipc::codec<level>::decode("300"), level::high);
  std::vector<unsigned char> raw = {0, 1, 255};
  EXPECT_EQ(ipc::codec<std::vector<unsigned char>>::decode(bytes_of(raw)), raw);
}

TEST(codec, malformed_bytes_are_a_codec_error) {
  EXPECT_THROW(ipc::codec<int>::decode("12abc"), ipc::codec_error);
  EXPECT_THROW(ipc::codec<int>::decode(""), ipc::codec_error);
  EXPECT_THROW(ipc::codec<int>::decode(" 12"), ipc::codec_error);
  EXPECT_THROW(ipc::codec<int>::decode("99999999999"), ipc::codec_error);  // out of range
  EXPECT_THROW(ipc::codec<std::uint8_t>::decode("-1"), ipc::codec_error);
  EXPECT_THROW(ipc::codec<bool>::decode("yes"), ipc::codec_error);
  EXPECT_THROW(ipc::codec<double>::decode("1.5x"), ipc::codec_error);
  EXPECT_THROW(ipc::codec<level>::decode("70000"), ipc::codec_error);
  try {
    ipc::codec<std::int64_t>::decode(
        std::string("\x01\xff"
                    "abc",
                    5));
    FAIL();
  } catch (const ipc::codec_error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("i64"), std::string::npos) << what;
    EXPECT_NE(what.find("\\x01\\xff"), std::string::npos) << what;  // shown escaped
  }
}

TEST(codec, type_tags) {
  EXPECT_EQ(ipc::detail::codec_name<std::string>(), "str");
  EXPECT_EQ(ipc::detail::codec_name<std::int64_t>(), "i64");
  EXPECT_EQ(ipc::detail::codec_name<std::uint16_t>(), "u16");
  EXPECT_EQ(ipc::detail::codec_name<double>(), "f64");
  EXPECT_EQ(ipc::detail::codec_name<level>(), std::string("enum:i16:") + typeid(level).name());
  // Two enums that store the same integers are still different types.
  EXPECT_NE(ipc::detail::codec_name<level>(), ipc::detail::codec_name<other_level>());
  // Byte vectors share one tag on purpose: they store the same bytes.
  EXPECT_EQ(ipc::detail::codec_name<std::vector<char>>(), "bytes");
  EXPECT_EQ(ipc::detail::codec_name<std::vector<std::byte>>(), "bytes");
  static_assert(!ipc::detail::has_codec<no_codec_for_me>::value);
  static_assert(ipc::detail::has_codec<std::string>::value);
}

}  // namespace
