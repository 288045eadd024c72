// smisk-ipc: a home's files: the manifest, exact-name cleanup, retiring regions.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "../error.hpp"
#include "bdb_stats.hpp"
#include "posix.hpp"

namespace smisk::ipc::detail::bdb {

constexpr const char* lock_file_name = "smisk-ipc.lock";
constexpr const char* manifest_file_name = "smisk-ipc.manifest";
/// Which commits the last recoveries found in the log (bdb_landed_commits.hpp).
constexpr const char* landed_file_name = "smisk-ipc.landed";
/// The credit of a home short of space (bdb_space_guard.hpp).
constexpr const char* space_file_name = "smisk-ipc.space";

/// Replaces the file at `path` whole with `bytes` (written to path.tmp, then renamed: a reader
/// sees the old file or the new one). @returns null, or the call that failed (errno says why).
inline const char* replace_file(const std::string& path, std::string_view bytes, unsigned mode) {
  const std::string tmp = path + ".tmp";
  unique_fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                      static_cast<mode_t>(mode)));
  if (!fd) return "open";
  if (::write(fd.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
    return "write";
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return "rename";
  return nullptr;
}

/// What the library records in a home: whether it created the directory, whether the home is
/// persistent, and the database files it made there.
struct manifest {
  bool created_home = false;
  bool persistent = false;
  bool exists = false;
  std::vector<std::string> databases;

  static manifest read(const std::string& home) {
    manifest m;
    std::ifstream in(home + "/" + manifest_file_name);
    if (!in) return m;
    m.exists = true;
    std::string line;
    while (std::getline(in, line)) {
      if (line == "created-home") m.created_home = true;
      if (line == "persistent") m.persistent = true;
      if (starts_with(line, "database ")) m.databases.push_back(line.substr(9));
    }
    return m;
  }
  void write(const std::string& home, unsigned mode) const {
    std::string text = "smisk-ipc 1\n";
    if (created_home) text += "created-home\n";
    text += persistent ? "persistent\n" : "temporary\n";
    for (const auto& d : databases) text += "database " + d + "\n";
    if (const char* failed = replace_file(home + "/" + manifest_file_name, text, mode))
      throw_errno("cannot write the manifest in " + home, failed);
  }
  [[nodiscard]] bool has_database(const std::string& name) const {
    for (const auto& d : databases)
      if (d == name) return true;
    return false;
  }
};

/// Whether `name` is `prefix` followed by exactly `digits` decimal digits.
inline bool is_numbered_name(const std::string& name, const char* prefix, std::size_t digits) {
  const std::size_t n = std::strlen(prefix);
  return name.size() == n + digits && starts_with(name, prefix) &&
         name.find_first_not_of("0123456789", n) == std::string::npos;
}
/// Berkeley DB's region files: "__db." and three digits ("__db.001").
inline bool is_region_file_name(const std::string& name) {
  return is_numbered_name(name, "__db.", 3);
}
/// Berkeley DB's log files: "log." and ten digits ("log.0000000001").
inline bool is_log_file_name(const std::string& name) { return is_numbered_name(name, "log.", 10); }

/// Removes the library's own files from a temporary home, and the home if the library made it.
/// Only exact names: Berkeley DB's regions and logs, the databases the manifest lists, the lock
/// file, the manifest, the record of landed commits and the space credit. A user's "log.txt" or
/// "__db.notes" in a home they gave is theirs.
inline void remove_home_files(const std::string& home, const manifest& m) {
  for (const auto& name : list_dir(home)) {
    bool ours = is_region_file_name(name) || is_log_file_name(name) || m.has_database(name);
    if (ours) ::unlink((home + "/" + name).c_str());
  }
  for (const char* file : {manifest_file_name, landed_file_name}) {
    ::unlink((home + "/" + file + ".tmp").c_str());
    ::unlink((home + "/" + file).c_str());
  }
  ::unlink((home + "/" + space_file_name).c_str());
  ::unlink((home + "/" + lock_file_name).c_str());
  if (m.created_home && ::rmdir(home.c_str()) == 0)
    stats().homes_removed.fetch_add(1, std::memory_order_relaxed);
}

/// DB_REGION_MAGIC: the first word of REGENV, at the start of the primary region (__db.001).
constexpr std::uint32_t region_magic = 0x120897;
/// Where REGENV keeps the environment's panic flag: its second word.
constexpr off_t regenv_panic_offset = sizeof(std::uint32_t);
/// Where REGENV keeps the environment's id (a new one for every region creation, so for every
/// recovery): its sixth word, after magic, panic and the three version numbers.
constexpr off_t regenv_envid_offset = 5 * sizeof(std::uint32_t);

/// A 32-bit word of REGENV read from the primary region file (not the mapping, which another
/// thread may be unmapping), or 0 if it cannot be read.
inline std::uint32_t regenv_word(int primary, off_t offset) noexcept {
  std::uint32_t word = 0;
  if (primary < 0 ||
      ::pread(primary, &word, sizeof word, offset) != static_cast<ssize_t>(sizeof word))
    return 0;
  return word;
}

/// The primary region file of the environment in `home` (REGENV first), opened with `flags`, or
/// an empty descriptor if there is none or it does not start with the region magic.
inline unique_fd open_primary_region(const std::string& home, int flags) {
  unique_fd primary(::open((home + "/__db.001").c_str(), flags | O_CLOEXEC | O_NOFOLLOW));
  if (regenv_word(primary.get(), 0) != region_magic) return unique_fd();
  return primary;
}

/// Retires the environment regions of a home before this process recovers it (under the gate):
/// marks the old environment dead, as Berkeley DB's own recovery does first (the panic word of
/// its primary region, after the region magic; every process still using it then gets
/// DB_RUNRECOVERY and reopens), and removes the region files, so that recovery creates fresh
/// regions. Berkeley DB's recovery would instead attach to the old regions and free their memory
/// through the regions' own allocator, whose free lists a process killed inside that allocator
/// leaves cyclic: the recovering process then loops for ever.
/// @returns the retired environment's id (0 if there was none).
inline std::uint32_t retire_regions(const std::string& home) {
  std::uint32_t envid = 0;
  if (unique_fd primary = open_primary_region(home, O_RDWR)) {
    envid = regenv_word(primary.get(), regenv_envid_offset);
    const std::uint32_t panic = 1;
    if (::pwrite(primary.get(), &panic, sizeof panic, regenv_panic_offset) != sizeof panic)
      throw_errno("cannot mark the old environment of " + home + " dead", "pwrite");
  }
  std::vector<std::string> regions;
  for (const auto& name : list_dir(home)) {
    // Region files only (no database, log or registry file).
    if (is_region_file_name(name)) regions.push_back(name);
  }
  // The primary region (__db.001) last, as Berkeley DB does.
  std::sort(regions.rbegin(), regions.rend());
  for (const auto& name : regions) ::unlink((home + "/" + name).c_str());
  return envid;
}

}  // namespace smisk::ipc::detail::bdb
