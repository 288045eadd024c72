// libdb's heap memory of the library's environments comes from one arena per environment, so
// that a broken environment's handles, which cannot be closed through libdb, are freed whole
// (robust_heap.hpp). A regression test for a reported leak: a server whose sibling workers were
// killed now and then grew by 15-25 kB of heap per recovery (recovery_soak_test measures that
// end to end); these check the arenas themselves.
#include <db.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <smisk/ipc.hpp>

#include "test_util.hpp"

namespace {

namespace ipc = smisk::ipc;
namespace robust = smisk::ipc::detail::robust;
using namespace smisk_test;

struct block {
  unsigned char* p;
  std::size_t size;
  unsigned char fill;
};

void fill(block& b) { std::memset(b.p, b.fill, b.size); }
bool intact(const block& b) {
  return std::all_of(b.p, b.p + b.size, [&](unsigned char c) { return c == b.fill; });
}

/// Sizes a libdb environment asks for: mostly small handles, now and then a page buffer or a
/// log cursor's buffer of several chunks.
std::size_t random_size(std::mt19937& rng) {
  switch (rng() % 8) {
    case 0:
      return 20000 + rng() % 200000;
    case 1:
      return 1024 + rng() % 8192;
    default:
      return 1 + rng() % 600;
  }
}

long chunks_taken() { return robust::heap_chunks_taken.load(); }

TEST(heap_arena, blocks_are_distinct_aligned_and_keep_their_bytes_through_realloc_and_free) {
  ASSERT_TRUE(robust::install_heap()) << "the address space for the arenas could not be reserved";
  const long before = chunks_taken();
  std::mt19937 rng(12345);
  {
    robust::heap_arena arena;
    std::vector<block> blocks;
    for (int i = 0; i < 2000; ++i) {
      const std::size_t n = random_size(rng);
      auto* p = static_cast<unsigned char*>(arena.allocate(n));
      ASSERT_NE(p, nullptr) << "allocation " << i << " of " << n << " bytes";
      ASSERT_TRUE(robust::heap_owns(p));
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % 16, 0u) << n << " bytes";
      blocks.push_back({p, n, static_cast<unsigned char>(i)});
      fill(blocks.back());
      if (i % 3 == 0 && blocks.size() > 1) {  // free one at random: its memory is handed out again
        const std::size_t at = rng() % blocks.size();
        ASSERT_TRUE(intact(blocks[at])) << "block " << at << " was overwritten";
        robust::heap_free(blocks[at].p);
        blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(at));
      }
      if (i % 7 == 0 && !blocks.empty()) {  // grow one: its bytes move with it
        block& b = blocks[rng() % blocks.size()];
        ASSERT_TRUE(intact(b));
        const std::size_t n2 = b.size + random_size(rng);
        auto* q = static_cast<unsigned char*>(robust::heap_realloc(b.p, n2));
        ASSERT_NE(q, nullptr);
        ASSERT_TRUE(robust::heap_owns(q)) << "a block grown left its arena";
        const block moved{q, b.size, b.fill};
        ASSERT_TRUE(intact(moved)) << "realloc lost the bytes";
        b = {q, n2, b.fill};
        fill(b);
      }
    }
    for (const block& b : blocks) ASSERT_TRUE(intact(b)) << "a live block was overwritten";
    EXPECT_GT(chunks_taken(), before);
    for (std::size_t i = 0; i < blocks.size(); i += 2) robust::heap_free(blocks[i].p);
    // What is left is handed back whole, as for a broken environment.
    arena.release();
    EXPECT_EQ(chunks_taken(), before) << "release() kept chunks";
    EXPECT_EQ(arena.allocate(100), nullptr) << "a released arena still hands out memory";
  }
}

TEST(heap_arena, memory_that_is_not_an_arenas_goes_to_malloc_and_free) {
  ASSERT_TRUE(robust::install_heap());
  // Outside the library's calls (no environment, no arena scope): malloc's memory.
  void* p = robust::heap_malloc(100);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(robust::heap_owns(p));
  p = robust::heap_realloc(p, 100000);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(robust::heap_owns(p));
  robust::heap_free(p);
  // Inside an arena scope: the arena's.
  robust::heap_arena arena;
  {
    robust::arena_scope scope(&arena);
    void* q = robust::heap_malloc(100);
    EXPECT_TRUE(robust::heap_owns(q));
    robust::heap_free(q);
  }
  arena.release();
}

TEST(heap_arena, threads_allocate_and_free_in_one_arena_at_once) {
  ASSERT_TRUE(robust::install_heap());
  const long before = chunks_taken();
  robust::heap_arena arena;
  std::vector<std::thread> threads;
  std::vector<int> broken(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&arena, &broken, t] {
      std::mt19937 rng(static_cast<unsigned>(t) + 1);
      std::vector<block> mine;
      for (int i = 0; i < 5000; ++i) {
        const std::size_t n = 1 + rng() % 2000;
        auto* p = static_cast<unsigned char*>(arena.allocate(n));
        if (!p) {
          ++broken[static_cast<std::size_t>(t)];
          continue;
        }
        mine.push_back({p, n, static_cast<unsigned char>(t * 50 + i % 50)});
        fill(mine.back());
        if (mine.size() > 50) {  // free from another thread's point of view too
          if (!intact(mine.front())) ++broken[static_cast<std::size_t>(t)];
          robust::heap_free(mine.front().p);
          mine.erase(mine.begin());
        }
      }
      for (const block& b : mine) {
        if (!intact(b)) ++broken[static_cast<std::size_t>(t)];
        robust::heap_free(b.p);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(broken[static_cast<std::size_t>(t)], 0) << "thread " << t;
  arena.release();
  EXPECT_EQ(chunks_taken(), before);
}

TEST(heap_arena, a_dicts_environment_lives_in_an_arena_that_closing_hands_back) {
  temp_dir home(is_directory("/dev/shm") ? "/dev/shm" : "/tmp");
  ipc::bsddb::options o;
  o.homedir = home.path();
  o.name = "dict";
  ASSERT_TRUE(robust::install_heap());
  const long before = chunks_taken();
  {
    ipc::shared_dict<std::string, std::int64_t> d{o};
    for (int i = 0; i < 200; ++i) d.set("k" + std::to_string(i), i);
    EXPECT_EQ(d.size(), 200u);
    EXPECT_GT(chunks_taken(), before) << "libdb's handles of the dict are not in an arena";
  }
  EXPECT_EQ(chunks_taken(), before) << "closing the dict kept arena chunks";
  const ipc::bsddb::process_status status = ipc::bsddb::runtime_status();
  EXPECT_TRUE(status.heap_arenas) << status.detail;
}

}  // namespace
