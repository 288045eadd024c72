// The pieces of include/smisk/ipc/detail/robust_mutex.hpp that the crash tests reach only by
// chance, shown directly:
//  * a thread that still holds a robust mutex in memory that then goes away (libdb's error paths
//    return with mutexes of a broken environment held, and the environment is closed) crashes
//    at its next robust-mutex operation, unless it forgot the mutex first (forget_broken_holds);
//  * a wait in memory declared broken fails instead of blocking for ever;
//  * the deadlock detector of libdb is wrapped (install() patched its PLT slot), so a fault
//    inside it becomes DB_RUNRECOVERY and a panic rather than the death of the process.
#include <pthread.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace robust = smisk::ipc::detail::robust;
using smisk_test::child_status;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool sanitized = true;  // AddressSanitizer reports a SIGSEGV and exits with an error
#else
constexpr bool sanitized = false;
#endif

bool crashed(const child_status& st) {
  return st.killed_by(SIGSEGV) || (sanitized && st.exited && st.exit_code != 0);
}

/// A process-shared robust mutex in a page of its own (anonymous shared memory).
struct shared_mutex_page {
  void* page = nullptr;
  pthread_mutex_t* mutex = nullptr;

  shared_mutex_page() {
    page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
    mutex = static_cast<pthread_mutex_t*>(page);
    pthread_mutexattr_t attr;
    ::pthread_mutexattr_init(&attr);
    ::pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    ::pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    ::pthread_mutex_init(mutex, &attr);
    ::pthread_mutexattr_destroy(&attr);
  }
  [[nodiscard]] std::uintptr_t lo() const { return reinterpret_cast<std::uintptr_t>(page); }
  [[nodiscard]] std::uintptr_t hi() const { return lo() + 4096; }
};

/// In a child: holds a robust mutex in page `gone`, unmaps the page (forgetting it first or
/// not), then locks and unlocks another robust mutex.
child_status hold_unmap_then_lock(bool forget) {
  return smisk_test::run_child([forget] {
    ASSERT_TRUE(robust::install()) << robust::status();
    shared_mutex_page gone, other;
    ASSERT_EQ(::pthread_mutex_lock(gone.mutex), 0);  // held, as libdb leaves it after an error
    if (forget) {
      robust::abort_waits_in(gone.lo(), gone.hi());
      EXPECT_EQ(robust::forget_broken_holds(), 1);
    }
    ASSERT_EQ(::munmap(gone.page, 4096), 0);  // the environment is closed
    // glibc links a newly locked robust mutex in front of the list head: the unmapped entry.
    ASSERT_EQ(::pthread_mutex_lock(other.mutex), 0);
    ASSERT_EQ(::pthread_mutex_unlock(other.mutex), 0);
  });
}

TEST(robust, a_held_mutex_in_unmapped_memory_crashes_the_next_robust_lock) {
  // Without forget_broken_holds: the failure the library prevents (this is why it exists).
  const child_status st = hold_unmap_then_lock(false);
  EXPECT_TRUE(crashed(st)) << st.describe();
}

TEST(robust, forgetting_held_mutexes_of_broken_memory_keeps_the_thread_sound) {
  const child_status st = hold_unmap_then_lock(true);
  EXPECT_TRUE(st.ok()) << st.describe();
}

TEST(robust, forget_broken_holds_keeps_mutexes_elsewhere) {
  const child_status st = smisk_test::run_child([] {
    ASSERT_TRUE(robust::install()) << robust::status();
    shared_mutex_page broken_page, kept;
    ASSERT_EQ(::pthread_mutex_lock(kept.mutex), 0);
    ASSERT_EQ(::pthread_mutex_lock(broken_page.mutex), 0);
    robust::abort_waits_in(broken_page.lo(), broken_page.hi());
    EXPECT_EQ(robust::forget_broken_holds(), 1);
    EXPECT_EQ(robust::forget_broken_holds(), 0);  // gone from the list
    // The mutex still listed is unlocked normally (glibc unlinks it from the repaired list).
    EXPECT_EQ(::pthread_mutex_unlock(kept.mutex), 0);
    EXPECT_EQ(::pthread_mutex_lock(kept.mutex), 0);
    EXPECT_EQ(::pthread_mutex_unlock(kept.mutex), 0);
  });
  EXPECT_TRUE(st.ok()) << st.describe();
}

TEST(robust, a_held_mutex_whose_memory_was_wiped_is_cut_from_the_list) {
  // A mutex the thread holds is zeroed under it (seen when libdb faults in a broken
  // environment): forget_broken_holds ends the list before it instead of following null.
  const child_status st = smisk_test::run_child([] {
    ASSERT_TRUE(robust::install()) << robust::status();
    shared_mutex_page wiped, kept;
    ASSERT_EQ(::pthread_mutex_lock(wiped.mutex), 0);
    ASSERT_EQ(::pthread_mutex_lock(kept.mutex), 0);  // listed first (glibc links at the head)
    std::memset(static_cast<void*>(wiped.mutex), 0, sizeof(pthread_mutex_t));
    robust::abort_waits_in(wiped.lo(), wiped.hi());
    EXPECT_EQ(robust::forget_broken_holds(), 1);
    EXPECT_EQ(::pthread_mutex_unlock(kept.mutex), 0);
    EXPECT_EQ(::pthread_mutex_lock(kept.mutex), 0);
    EXPECT_EQ(::pthread_mutex_unlock(kept.mutex), 0);
  });
  EXPECT_TRUE(st.ok()) << st.describe();
}

TEST(robust, install_wraps_the_deadlock_detector_and_the_polling_sleep) {
  const child_status st = smisk_test::run_child([] {
    ASSERT_TRUE(robust::install()) << robust::status();
    EXPECT_NE(robust::real_lock_detect.load(), nullptr)
        << "libdb's __lock_detect was not wrapped: " << robust::status();
    EXPECT_NE(robust::real_os_yield.load(), nullptr)
        << "libdb's __os_yield was not wrapped: " << robust::status();
  });
  EXPECT_TRUE(st.ok()) << st.describe();
}

TEST(robust, a_fault_outside_the_detector_still_kills_the_process) {
  // The fault handler that guards the detector must not swallow other faults.
  const child_status st = smisk_test::run_child([] {
    ASSERT_TRUE(robust::install()) << robust::status();
    volatile int* null = nullptr;
    *null = 1;
  });
  EXPECT_TRUE(crashed(st)) << st.describe();
}

}  // namespace
