// smisk-ipc: telling live processes from dead ones, for failchk and the watchdog.
// SPDX-License-Identifier: MIT
#pragma once

#include <db.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "posix.hpp"
#include "robust_mutex.hpp"

namespace smisk::ipc::detail::bdb {

/// Whether a process exists and is not a zombie (killed, not yet reaped by its parent: it holds
/// nothing any more, but a signal can still be sent to it).
inline bool process_alive(pid_t pid) noexcept {
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  unique_fd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return true;  // no /proc: trust kill()
  char buf[512];
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n <= 0) return false;  // gone meanwhile
  buf[n] = '\0';
  const char* paren = std::strrchr(buf, ')');  // "pid (comm) S ...": comm may hold anything
  if (!paren || paren[1] != ' ') return true;
  return paren[2] != 'Z' && paren[2] != 'X';
}

inline void note_dead_thread(DB_ENV* env) noexcept;  // in bdb_checkpoint_state.hpp

/// The processes that the failchk pass running on this thread has found alive (see
/// run_failchk), or null outside a pass.
inline thread_local std::vector<pid_t>* failchk_alive = nullptr;

/// is_alive for failchk: this process, or another one that is neither gone nor a zombie. A dead
/// one is noted for the watchdog (see environment::watch).
///
/// Within one failchk pass, a process once found alive stays alive. Berkeley DB 5.3 asks about
/// each process several times per pass: __dbreg_failchk closes the log registrations (FNAMEs) of
/// dead processes, and later __mut_failchk frees their per-process mutexes, which include the
/// mutexes those FNAMEs point to. A process that died between the two questions kept its FNAME
/// with a freed mutex; the mutex went to another handle, and a later pass locked it through the
/// stale FNAME while holding it already: the process joining the home spun for ever in failchk,
/// holding the home's gate (seen in the fork storm, children exiting without closing). With one
/// answer per pass, such a process is cleaned up whole by the next pass.
extern "C" inline int is_alive(DB_ENV* env, pid_t pid, db_threadid_t, u_int32_t) {
  if (pid == ::getpid()) return 1;
  std::vector<pid_t>* pass = failchk_alive;
  if (pass && std::find(pass->begin(), pass->end(), pid) != pass->end()) return 1;
  if (process_alive(pid)) {
    if (pass) {
      try {
        pass->push_back(pid);
      } catch (...) {
        // Out of memory: this answer is not remembered (the race above becomes possible again).
      }
    }
    return 1;
  }
  note_dead_thread(env);
  return 0;
}

/// DB_ENV->failchk with one liveness answer per process for the whole pass (see is_alive).
inline int run_failchk(DB_ENV* env) {
  std::vector<pid_t> alive;
  alive.reserve(64);
  std::vector<pid_t>* outer = failchk_alive;
  failchk_alive = &alive;
  const int rc = robust::call_guarded(env, [env] { return env->failchk(env, 0); });
  failchk_alive = outer;
  return rc;
}

/// How often each process checks for dead processes that hold locks.
constexpr std::chrono::milliseconds watch_interval{100};
/// failchk runs at least every this many intervals (5 s), even when nothing seems stuck.
constexpr int failchk_every_ticks = 50;
/// An operation stuck this many intervals (0.5 s) while failchk meets a dead process but finds
/// nothing to clean up: the environment is declared broken (see environment::watch).
constexpr int stuck_panic_ticks = 5;

}  // namespace smisk::ipc::detail::bdb
