// The ODR check, as fmt does it: odr_a.cpp and odr_b.cpp both include
// <smisk/ipc.hpp> and use the same dict type. A header function or variable
// that is not `inline` makes this executable fail to link; one that differs
// between the two units is undefined behaviour that the sanitizer build may catch.

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

std::optional<std::string> odr_a_set_get(const std::string& homedir, const std::string& key,
                                         const std::string& value);
std::optional<std::string> odr_b_set_get(const std::string& homedir, const std::string& key,
                                         const std::string& value);

namespace {
// A directory made by mkdtemp under /tmp, removed with everything in it.
class temporary_directory {
 public:
  temporary_directory() {
    char path_template[] = "/tmp/smisk_ipc_odr_test.XXXXXX";
    if (::mkdtemp(path_template) != nullptr) path_ = path_template;
  }
  ~temporary_directory() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  temporary_directory(const temporary_directory&) = delete;
  temporary_directory& operator=(const temporary_directory&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};
}  // namespace

TEST(Odr, TwoTranslationUnitsShareOneLibrary) {
  const temporary_directory home;
  ASSERT_FALSE(home.path().empty()) << "mkdtemp failed";

  EXPECT_EQ(odr_a_set_get(home.path(), "a", "from odr_a.cpp"),
            std::optional<std::string>("from odr_a.cpp"));
  EXPECT_EQ(odr_b_set_get(home.path(), "b", "from odr_b.cpp"),
            std::optional<std::string>("from odr_b.cpp"));
}
