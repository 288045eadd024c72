// smisk-ipc: which commits of a broken environment landed, so that a write whose commit a break
// interrupted is applied exactly once. SPDX-License-Identifier: MIT
#pragma once

#include <db.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "bdb_home_files.hpp"
#include "posix.hpp"
#include "robust_mutex.hpp"

// How it works (docs/exactly-once.md). A commit interrupted by an environment break (the commit
// returned DB_RUNRECOVERY) may or may not have reached the log file; recovery replays exactly
// the commit records in the log files. The process that recovers (it holds the home's gate, no
// one else is inside) reads the log backwards right after recovery, before anyone writes, and
// records the transaction ids of the broken environment's commits in <home>/smisk-ipc.landed.
// The interrupted thread kept its transaction's id and its environment's id (every region
// creation, and so every recovery, gets a new one): after recovery it looks them up, and redoes
// the write only if its commit is not there. Nothing is added to a commit: zero cost until a
// break.
namespace smisk::ipc::detail::bdb {

/// What a thread whose commit a break interrupted learns after recovery.
enum class commit_outcome {
  landed,   ///< its commit record is in the log: recovery applied it
  lost,     ///< the recovered log holds every commit of its environment, and not its own
  unknown,  ///< no recovery of its environment recorded its commits (a recovery was itself
            ///< interrupted, or more than landed_sections recoveries ran since)
};

/// A write's commit, kept across a break: whose environment and which transaction.
struct commit_ticket {
  bool in_doubt = false;  ///< the commit returned DB_RUNRECOVERY: look it up before redoing
  std::uint32_t envid = 0;
  std::uint32_t txnid = 0;
};

namespace landed {

// Berkeley DB 5.3's log records (dbinc_auto/txn_auto.h; the version is checked at compile time
// in bdb_errors.hpp): each starts with its type, the transaction id and the previous LSN.
// __txn_regop: then opcode (1: commit), timestamp, envid. __txn_ckp: then ckp_lsn, last_ckp,
// timestamp, envid.
constexpr std::uint32_t regop_type = 10;
constexpr std::uint32_t checkpoint_type = 11;
constexpr std::uint32_t commit_opcode = 1;

/// How many environments' records the file keeps (one per recovery): a thread that stays away
/// for longer (stopped, swapped out) gets commit_outcome::unknown.
constexpr std::size_t kept_sections = 32;
constexpr std::uint32_t section_magic = 0x534d4c44;  // "SMLD"

/// What a section knows of an environment's commits.
enum class coverage : std::uint32_t {
  complete = 1,  ///< the log was read back to where recovery started (its last checkpoint): a
                 ///< commit of it that is not listed did not land
  pending = 2,   ///< a recovery of it began; should it be interrupted, the next one covers it
};

/// The commits of one environment found in a recovered log.
struct section {
  std::uint32_t envid = 0;
  coverage cover = coverage::complete;
  std::vector<std::uint32_t> txnids;  // sorted
};

inline std::uint32_t word(const DBT& rec, std::size_t offset) noexcept {
  std::uint32_t w = 0;
  if (offset + sizeof w <= rec.size)
    std::memcpy(&w, static_cast<const char*>(rec.data) + offset, 4);
  return w;
}

/// Reads the log of a just-recovered environment backwards, down to where the recovery of each
/// of `targets` started (its last checkpoint's ckp_lsn) or to the start of the log, and returns
/// a complete section per target.
inline int read_commits(DB_ENV* env, const std::vector<std::uint32_t>& targets,
                        std::vector<section>& out) {
  if (targets.empty()) return 0;
  DB_LOGC* cursor = nullptr;
  int rc = robust::call_guarded(env, [&] { return env->log_cursor(env, &cursor, 0); });
  if (rc != 0) return rc;
  auto is_target = [&](std::uint32_t envid) {
    return std::find(targets.begin(), targets.end(), envid) != targets.end();
  };
  std::map<std::uint32_t, std::vector<std::uint32_t>> commits;
  std::map<std::uint32_t, DB_LSN> stops;  // per target, once its last checkpoint is met
  DB_LSN lsn, lowest = {0, 0};
  DBT rec;
  std::memset(&rec, 0, sizeof rec);
  u_int32_t step = DB_LAST;
  bool reached = false;
  while ((rc = robust::call_guarded(env, [&] { return cursor->get(cursor, &lsn, &rec, step); })) ==
         0) {
    step = DB_PREV;
    if (stops.size() == targets.size() && log_compare(&lsn, &lowest) < 0) {
      reached = true;
      break;
    }
    const std::uint32_t type = word(rec, 0);
    if (type == regop_type && rec.size >= 28 && word(rec, 16) == commit_opcode) {
      if (is_target(word(rec, 24))) commits[word(rec, 24)].push_back(word(rec, 4));
    } else if (type == checkpoint_type && rec.size >= 40) {
      // Recovery redid everything from its ckp_lsn on: an interrupted commit of that
      // environment, active at this checkpoint or begun after it, logged its record later.
      const std::uint32_t envid = word(rec, 36);
      if (is_target(envid) && stops.count(envid) == 0) {
        DB_LSN ckp;
        ckp.file = word(rec, 16);
        ckp.offset = word(rec, 20);
        if (stops.empty() || log_compare(&ckp, &lowest) < 0) lowest = ckp;
        stops[envid] = ckp;
      }
    }
  }
  const bool whole = reached || rc == DB_NOTFOUND;
  robust::call_guarded(env, [&] { return cursor->close(cursor, 0); });
  if (!whole) return rc;
  for (std::uint32_t envid : targets) {
    std::vector<std::uint32_t>& ids = commits[envid];
    std::sort(ids.begin(), ids.end());
    out.push_back({envid, coverage::complete, std::move(ids)});
  }
  return 0;
}

inline std::vector<section> read_file(const std::string& home) {
  std::vector<section> sections;
  unique_fd fd(::open((home + "/" + landed_file_name).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return sections;
  // One buffer of the file's size (it is replaced whole, never grows under a reader): no
  // doubling of a string through half a megabyte at every recovery, which left malloc holding
  // ever more memory that it could not give back.
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || st.st_size <= 0) return sections;
  std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  for (ssize_t n;
       got < bytes.size() && (n = ::pread(fd.get(), bytes.data() + got, bytes.size() - got,
                                          static_cast<off_t>(got))) > 0;)
    got += static_cast<std::size_t>(n);
  bytes.resize(got);
  std::size_t at = 0;
  auto take = [&](std::uint32_t& w) {
    if (at + 4 > bytes.size()) return false;
    std::memcpy(&w, bytes.data() + at, 4);
    at += 4;
    return true;
  };
  for (std::uint32_t magic, envid, cover, count;
       take(magic) && magic == section_magic && take(envid) && take(cover) && take(count);) {
    if ((cover != static_cast<std::uint32_t>(coverage::complete) &&
         cover != static_cast<std::uint32_t>(coverage::pending)) ||
        count > (bytes.size() - at) / 4)
      break;  // not ours: ignore the rest
    section s{envid, static_cast<coverage>(cover), std::vector<std::uint32_t>(count)};
    if (count != 0) std::memcpy(s.txnids.data(), bytes.data() + at, std::size_t{count} * 4);
    at += std::size_t{count} * 4;
    sections.push_back(std::move(s));
  }
  return sections;
}

inline bool write_file(const std::string& home, const std::vector<section>& sections,
                       unsigned mode) {
  std::string bytes;
  std::size_t size = 0;
  for (const auto& s : sections) size += 16 + s.txnids.size() * 4;
  bytes.reserve(size);
  auto put = [&](std::uint32_t w) { bytes.append(reinterpret_cast<const char*>(&w), 4); };
  for (const auto& s : sections) {
    put(section_magic);
    put(s.envid);
    put(static_cast<std::uint32_t>(s.cover));
    put(static_cast<std::uint32_t>(s.txnids.size()));
    if (!s.txnids.empty())
      bytes.append(reinterpret_cast<const char*>(s.txnids.data()), s.txnids.size() * 4);
  }
  return replace_file(home + "/" + landed_file_name, bytes, mode) == nullptr;
}

/// Adds a recovery's section, newest last, in place of any older one of its environment, and
/// keeps the newest kept_sections.
inline void add(std::vector<section>& sections, section found) {
  sections.erase(std::remove_if(sections.begin(), sections.end(),
                                [&](const section& s) { return s.envid == found.envid; }),
                 sections.end());
  sections.push_back(std::move(found));
  if (sections.size() > kept_sections)
    sections.erase(sections.begin(),
                   sections.begin() + static_cast<std::ptrdiff_t>(sections.size() - kept_sections));
}

}  // namespace landed

/// Called by the process about to recover the home (under its gate), before the recovery:
/// @returns the environments whose commits the recovery must record: the one it replaces
/// (`retired_envid`, 0 if none), or, if the last recovery was interrupted, the one that
/// recovery was for (the environment it left half made was never used).
inline std::vector<std::uint32_t> begin_recovery(const std::string& home,
                                                 std::uint32_t retired_envid, unsigned mode) {
  std::vector<landed::section> sections = landed::read_file(home);
  std::vector<std::uint32_t> targets;
  for (const auto& s : sections)
    if (s.cover == landed::coverage::pending) targets.push_back(s.envid);
  if (targets.empty() && retired_envid != 0) {
    targets.push_back(retired_envid);
    sections.push_back({retired_envid, landed::coverage::pending, {}});
    (void)landed::write_file(home, sections, mode);
  }
  return targets;
}

/// Called by the process that just recovered the home (under its gate, before anyone writes):
/// records which commits of the `targets` (see begin_recovery) are in the log. @returns false if
/// the log or the file could not be read or written (interrupted writes of those environments
/// then end with commit_outcome::unknown, never with a redo of a write that may have landed).
inline bool record_landed_commits(DB_ENV* env, const std::string& home,
                                  const std::vector<std::uint32_t>& targets, unsigned mode) {
  std::vector<landed::section> found;
  const bool read = landed::read_commits(env, targets, found) == 0;
  std::vector<landed::section> sections = landed::read_file(home);
  sections.erase(
      std::remove_if(sections.begin(), sections.end(),
                     [](const landed::section& s) { return s.cover == landed::coverage::pending; }),
      sections.end());
  for (auto& s : found) landed::add(sections, std::move(s));
  return landed::write_file(home, sections, mode) && read;
}

/// After recovery: whether the commit of `ticket` landed.
inline commit_outcome look_up_commit(const std::string& home, const commit_ticket& ticket) {
  for (const auto& s : landed::read_file(home)) {
    if (s.envid != ticket.envid) continue;
    if (std::binary_search(s.txnids.begin(), s.txnids.end(), ticket.txnid))
      return commit_outcome::landed;
    if (s.cover == landed::coverage::complete) return commit_outcome::lost;
  }
  return commit_outcome::unknown;
}

}  // namespace smisk::ipc::detail::bdb
