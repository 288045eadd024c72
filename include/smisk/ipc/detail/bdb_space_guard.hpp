// smisk-ipc: a home whose filesystem fills up (a 64 MB /dev/shm in a container).
// SPDX-License-Identifier: MIT
//
// Berkeley DB cannot take a full filesystem: a write whose log record does not fit fails, the
// abort of its transaction must log too, that fails as well, and the environment panics. Its
// recovery then needs space for new region files while the other processes still map the old
// ones, so it fails, and every call of every process fails from then on, reads included. A page
// of a region file on tmpfs is taken when first touched, so even a read can fault on a full
// filesystem.
//
// So the library never lets libdb meet ENOSPC: before a write it compares the free space of the
// home's filesystem, minus what libdb's region and log files will still take as their holes are
// written, with reserves; a write that does not fit fails alone with size_error,
// before libdb runs, and nothing stored is touched. Three levels (see docs/full-home.md):
//   plenty  more than space_reserve_growth left after the write: it runs unchecked;
//   tight   less, but space_reserve_log left: a write that adds bytes (a new key, a longer
//           value) runs only on credit, the bytes that erases freed inside the database files
//           since the home came near to tight (counted in <home>/smisk-ipc.space, shared by its
//           processes), and commits only if it did not make the database file longer; one that
//           does not add bytes (a counter) needs no credit. Its cost is measured again with the
//           real sizes once the old value is known;
//   full    less: writes fail; erases and clears may go down to space_floor, so that space can
//           be freed.
// Erased pages are not given back to the filesystem (Berkeley DB reuses them), so without the
// credit a home filled to the brim could never take a write again after erases.
// Measuring costs a statvfs and a stat per file of the home, so a process measures again only
// once its writes may have used 1/64 of the headroom it saw (then 64 processes writing at once
// still stay within it), and at every write once the headroom is small.
#pragma once

#include <db.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>

#include "bdb_errors.hpp"
#include "bdb_home_files.hpp"
#include "bdb_liveness.hpp"

namespace smisk::ipc::detail::bdb {

/// Left free by a write that may make the home's files longer: what the checkpoints and the
/// writes in flight of every process write before the next measurement, and a margin.
inline constexpr std::uint64_t space_reserve_growth = std::uint64_t{10} << 20;
/// Left free by any write: room for log files until a checkpoint lets the old ones go.
inline constexpr std::uint64_t space_reserve_log = std::uint64_t{4} << 20;
/// Left free by erases and clears: the log of the erase itself and of its abort.
inline constexpr std::uint64_t space_floor = std::uint64_t{1} << 20;

/// What a home's filesystem has left.
struct space_reading {
  std::uint64_t free = 0;  ///< statvfs: bytes an unprivileged writer may still use
  std::uint64_t debt = 0;  ///< bytes libdb's files will take as their holes are written
  /// What the home may still fill.
  [[nodiscard]] std::uint64_t usable() const noexcept { return free > debt ? free - debt : 0; }
};

/// What libdb's files in a home will still take as their holes are written: on tmpfs libdb makes
/// a region file (__db.001, ...) as a sparse file whose pages are taken as it first touches
/// them, and a log file at its full length, written as it goes. (A hash database that doubles
/// its table also makes its file longer at once and writes the new bucket pages as they fill;
/// those holes fill as the dict grows, which the plenty level stops at space_reserve_growth.)
inline std::uint64_t holes_of_files(const std::string& home) noexcept {
  std::uint64_t holes = 0;
  DIR* dir = ::opendir(home.c_str());
  if (!dir) return 0;
  while (const struct dirent* e = ::readdir(dir)) {
    struct stat st {};
    if (!is_region_file_name(e->d_name) && !is_log_file_name(e->d_name)) continue;
    if (::fstatat(::dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    const auto size = static_cast<std::uint64_t>(st.st_size);
    const auto taken = static_cast<std::uint64_t>(st.st_blocks) * 512;
    if (size > taken) holes += size - taken;
  }
  ::closedir(dir);
  return holes;
}

/// Reads what the filesystem of `home` has left into `out`. @returns false if statvfs fails (the
/// guard then lets writes through, and libdb reports what happens).
inline bool read_space(const std::string& home, space_reading& out) noexcept {
  struct statvfs st {};
  if (::statvfs(home.c_str(), &st) != 0) return false;
  out.free = std::uint64_t{st.f_bavail} * st.f_frsize;
  out.debt = holes_of_files(home);
  return true;
}

/// The log written between two checkpoints in a home where `usable` bytes are free: a 64th of
/// it, from 1 MiB to 16 MiB. Writers take the checkpoints themselves (environment::note_write),
/// and a checkpoint writes every page dirtied since the last: the longer the interval, the more
/// often a page is written once for many writes (16 MiB instead of 1 MiB: 0.90 instead of 0.69
/// of raw Berkeley DB's sets with a background checkpoint thread, bench/compare). Small homes
/// keep little log.
inline std::uint64_t checkpoint_interval(std::uint64_t usable) noexcept {
  constexpr std::uint64_t least = std::uint64_t{1} << 20, most = std::uint64_t{16} << 20;
  const std::uint64_t interval = usable / 64;
  return interval < least ? least : interval > most ? most : interval;
}

/// checkpoint_interval() for the home at `home` as it is now (bench/ uses it).
inline std::uint64_t checkpoint_interval_of(const std::string& home) noexcept {
  space_reading r;
  return checkpoint_interval(read_space(home, r) ? r.usable() : 0);
}

/// What an operation may add to a home: log (removed at the next checkpoints) and pages (which
/// stay).
struct space_need {
  std::uint64_t log = 0;
  std::uint64_t pages = 0;
  std::uint64_t value = 0;  ///< the size of the value it stores (see space_guard::note_value)
};

/// One environment's view of its home's free space (see the top of this file).
class space_guard {
 public:
  enum class verdict { plenty, tight, full };
  /// What an operation does to the size of the home.
  enum class kind {
    grows,    ///< a put, an update: may make the database file longer
    shrinks,  ///< an erase, a clear: only logs
  };

  space_guard(std::string home, unsigned mode) : home_(std::move(home)), mode_(mode) {}
  ~space_guard() {
    if (shared_state* sh = shared()) ::munmap(static_cast<void*>(sh), sizeof(shared_state));
  }
  space_guard(const space_guard&) = delete;
  space_guard& operator=(const space_guard&) = delete;

  /// Before an operation that writes `need.log` bytes of log and may take `need.pages` bytes of
  /// new pages.
  verdict check(space_need need, kind k) noexcept {
    const auto signed_cost = static_cast<std::int64_t>(need.log + need.pages);
    if (budget_.fetch_sub(signed_cost, std::memory_order_relaxed) - signed_cost >= 0)
      return verdict::plenty;
    std::lock_guard<std::mutex> lock(mutex_);
    space_reading r;
    if (!read_space(home_, r)) {
      // Cannot tell (statvfs failed): writes go through, and libdb reports what happens.
      budget_.store(std::int64_t{1} << 40, std::memory_order_relaxed);
      return verdict::plenty;
    }
    last_ = r;
    const std::uint64_t usable = r.usable();
    interval_.store(checkpoint_interval(usable), std::memory_order_relaxed);
    shared_state* sh = map_shared_locked();
    if (sh) {
      // Another process may have stored a larger value.
      const std::uint64_t largest = sh->largest.load(std::memory_order_relaxed);
      if (largest > largest_local_.load(std::memory_order_relaxed))
        largest_local_.store(largest, std::memory_order_relaxed);
    }
    // Writes keep room to erase the largest value ever stored: that logs all of it, in one
    // transaction. A write's own log is removed at the next checkpoints, its pages stay.
    const std::uint64_t largest = largest_local_.load(std::memory_order_relaxed);
    const std::uint64_t extra = erase_room(need.value > largest ? need.value : largest);
    const std::uint64_t transient = extra > need.log ? extra : need.log;
    // Erases count what they free from a little before the home gets tight (so that the
    // credit is there when it does); well clear of it, the credit is dropped (the pages erased
    // before are reused by the writes that the plenty level lets through).
    const bool near = usable < 2 * space_reserve_growth + extra;
    counting_.store(near, std::memory_order_relaxed);
    if (sh && !near) sh->credit.store(0, std::memory_order_relaxed);
    if (usable >= space_reserve_growth + transient + need.pages) {
      budget_.store(static_cast<std::int64_t>((usable - space_reserve_growth - extra) / 64),
                    std::memory_order_relaxed);
      return verdict::plenty;
    }
    budget_.store(0, std::memory_order_relaxed);
    if (k == kind::shrinks)
      return usable >= space_floor + need.log ? verdict::tight : verdict::full;
    return usable >= space_reserve_log + transient ? verdict::tight : verdict::full;
  }

  /// What erasing a value of `size` bytes logs: every page it frees.
  static std::uint64_t erase_room(std::uint64_t size) noexcept { return size + size / 8 + 4096; }

  /// A write stored a value of `size` bytes: the largest one ever stored in the home sets how
  /// much room writes leave for erasing it (shared by the home's processes; it never goes down:
  /// the library cannot know whether that value is still there).
  void note_value(std::uint64_t size) noexcept {
    const std::uint64_t before = largest_local_.load(std::memory_order_relaxed);
    if (size <= before) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (shared_state* sh = map_shared_locked()) {
      std::uint64_t have = sh->largest.load(std::memory_order_relaxed);
      while (have < size &&
             !sh->largest.compare_exchange_weak(have, size, std::memory_order_relaxed)) {
      }
      if (have > size) size = have;
    }
    if (size > largest_local_.load(std::memory_order_relaxed))
      largest_local_.store(size, std::memory_order_relaxed);
    // The reserve grew by this much: the budget of writes shrinks by as much.
    budget_.fetch_sub(static_cast<std::int64_t>(erase_room(size) - erase_room(before)),
                      std::memory_order_relaxed);
  }

  /// Before a checkpoint: takes the home's checkpoint word (<home>/smisk-ipc.space), unless
  /// another live process holds it: it is taking one, and this process does without (@returns
  /// false), or, with `wait` (a write short of space), waits for it at most 2 s. A word older
  /// than a minute, or of a dead process, is taken over.
  bool begin_checkpoint(bool wait) noexcept {
    shared_state* sh = shared();
    if (!sh) return true;  // no shared file: no such gate
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    const auto me = static_cast<std::uint64_t>(::getpid());
    std::uint64_t word = sh->checkpointer.load(std::memory_order_acquire);
    for (;;) {
      const std::uint64_t now = boot_seconds() & 0xffffffffu;
      if (word != 0) {
        const auto owner = static_cast<pid_t>(word >> 32);
        const bool fresh = now - (word & 0xffffffffu) < 60;
        if (owner != ::getpid() && fresh && process_alive(owner)) {
          if (!wait || std::chrono::steady_clock::now() > deadline) return false;
          ::usleep(1000);
          word = sh->checkpointer.load(std::memory_order_acquire);
          continue;
        }
      }
      const std::uint64_t mine = (me << 32) | now;
      if (sh->checkpointer.compare_exchange_weak(word, mine, std::memory_order_acq_rel)) {
        checkpoint_word_ = mine;
        return true;
      }
    }
  }
  /// After a checkpoint begun with begin_checkpoint().
  void end_checkpoint() noexcept {
    shared_state* sh = shared();
    std::uint64_t mine = checkpoint_word_;
    if (sh && mine != 0)
      sh->checkpointer.compare_exchange_strong(mine, 0, std::memory_order_acq_rel);
    checkpoint_word_ = 0;
  }

  /// The log volume between checkpoints (checkpoint_interval) at the last measurement.
  [[nodiscard]] std::uint64_t checkpoint_bytes() const noexcept {
    return interval_.load(std::memory_order_relaxed);
  }

  /// Whether the home was short of space, or close to it, at the last measurement: erases then
  /// count what they free (add_credit).
  [[nodiscard]] bool counting() const noexcept { return counting_.load(std::memory_order_relaxed); }

  /// An erase in a tight home freed `bytes` inside a database file.
  void add_credit(std::uint64_t bytes) noexcept {
    if (shared_state* sh = shared())
      sh->credit.fetch_add(static_cast<std::int64_t>(bytes), std::memory_order_relaxed);
  }
  /// A write in a tight home takes `bytes` of credit. @returns false if there is not that much.
  bool take_credit(std::uint64_t bytes) noexcept {
    shared_state* sh = shared();
    if (!sh) return false;
    std::atomic<std::int64_t>* c = &sh->credit;
    const auto want = static_cast<std::int64_t>(bytes);
    std::int64_t have = c->load(std::memory_order_relaxed);
    while (have >= want)
      if (c->compare_exchange_weak(have, have - want, std::memory_order_relaxed)) return true;
    return false;
  }

  /// Makes the next check measure again (after space may have been freed).
  void measure_again() noexcept { budget_.store(0, std::memory_order_relaxed); }

  /// Whether an operation that logs `bytes` at once (a DB->truncate) leaves the reserve for
  /// growth free; measures afresh and leaves the budget of writes alone.
  bool has_room_for(std::uint64_t bytes) noexcept {
    space_reading r;
    return !read_space(home_, r) || r.usable() >= space_reserve_growth + bytes;
  }

  /// Whether a write short of space should have checkpoints free log files first: at most every
  /// 50 ms per environment, so that writes in a full home fail fast rather than each waiting
  /// for checkpoints that freed everything they could a moment ago.
  bool room_may_help() noexcept {
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    auto last = last_room_.load(std::memory_order_relaxed);
    const auto interval = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::milliseconds(50))
                              .count();
    return now - last >= interval && last_room_.compare_exchange_strong(last, now);
  }

  /// Why a write was refused.
  enum class refusal {
    no_room,    ///< below the reserve of its kind
    no_credit,  ///< tight, and erases freed too little for it
    grew,       ///< tight, and it made the database file longer
  };

  /// Sets space_message() for a refused write: what was left and what to do.
  void explain(refusal why) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto mb = [](std::uint64_t bytes) {
      return std::to_string(bytes >> 20) + "." + std::to_string(((bytes & 0xfffff) * 10) >> 20);
    };
    std::string what = "the filesystem of the home " + home_ + " is full (" + mb(last_.free) +
                       " MB free, of which libdb's region and log files will still take " +
                       mb(last_.debt) + " MB";
    switch (why) {
      case refusal::no_room:
        what += "; the library keeps " + mb(space_reserve_log) + " MB free for its logs, " +
                mb(space_floor) + " MB for erases";
        break;
      case refusal::no_credit:
        what += "; below " + mb(space_reserve_growth) +
                " MB, a write that may need new pages is let through only for the room that "
                "erases freed, and they freed too little for it";
        break;
      case refusal::grew:
        what += "; below " + mb(space_reserve_growth) +
                " MB, a write that needs new pages in the database file is refused";
        break;
    }
    space_message() = what +
                      "). Free space (erase entries, clear() a dict, remove files), give the "
                      "container a larger /dev/shm (docker run --shm-size=256m) or put the home "
                      "on a disk (options::homedir). The refused write changed nothing";
  }

 private:
  /// What the processes of a home share, in <home>/smisk-ipc.space: lock-free atomics, which
  /// have the layout of their integer and work across processes.
  struct shared_state {
    std::atomic<std::int64_t> credit;         // bytes erases freed inside the database files
    std::atomic<std::uint64_t> largest;       // the largest value ever stored
    std::atomic<std::uint64_t> checkpointer;  // pid << 32 | boot seconds, of the one checkpointing
  };

  static std::uint64_t boot_seconds() noexcept {
    struct timespec ts {};
    ::clock_gettime(CLOCK_BOOTTIME, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec);
  }
  static_assert(std::atomic<std::int64_t>::is_always_lock_free &&
                std::atomic<std::uint64_t>::is_always_lock_free);

  shared_state* shared() noexcept { return shared_.load(std::memory_order_acquire); }

  /// Maps <home>/smisk-ipc.space (made if missing), once; tried again at the next measurement if
  /// it fails (then there is no credit, and writes in a tight home are refused). Called with
  /// mutex_ held. @returns it, or nullptr.
  shared_state* map_shared_locked() noexcept {
    if (shared_state* sh = shared()) return sh;
    const std::string path = home_ + "/" + space_file_name;
    const int fd =
        ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, static_cast<mode_t>(mode_));
    if (fd < 0) return nullptr;
    struct stat st {};
    void* p = MAP_FAILED;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (st.st_size >= static_cast<off_t>(sizeof(shared_state)) ||
         ::ftruncate(fd, sizeof(shared_state)) == 0))
      p = ::mmap(nullptr, sizeof(shared_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) return nullptr;
    auto* sh = static_cast<shared_state*>(p);  // zero-filled when new: no credit, no value
    shared_.store(sh, std::memory_order_release);
    return sh;
  }

  std::string home_;
  unsigned mode_;
  std::atomic<std::int64_t> budget_{0};
  std::atomic<bool> counting_{false};
  std::atomic<std::uint64_t> interval_{std::uint64_t{1} << 20};
  std::atomic<std::chrono::steady_clock::rep> last_room_{0};
  std::mutex mutex_;
  space_reading last_;                           // under mutex_
  std::atomic<shared_state*> shared_{nullptr};   // set once, under mutex_
  std::atomic<std::uint64_t> largest_local_{0};  // this process's view of shared_->largest
  std::uint64_t checkpoint_word_ = 0;            // under environment's checkpoint mutex
};

/// The number of the last page of a database, as Berkeley DB's cache knows it (pages it made
/// that are not yet written count): a write that made it larger made the file longer.
inline db_pgno_t last_page(DB* db) noexcept {
  db_pgno_t pgno = 0;
  DB_MPOOLFILE* mpf = db->get_mpf(db);
  if (mpf) (void)mpf->get_last_pgno(mpf, &pgno);
  return pgno;
}

}  // namespace smisk::ipc::detail::bdb
