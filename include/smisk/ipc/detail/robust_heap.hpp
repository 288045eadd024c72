// smisk-ipc: libdb's heap memory of the library's environments, one arena per environment, so
// that a broken one's can be freed. SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <db.h>
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "robust_state.hpp"
#include "scoped_set.hpp"

namespace smisk::ipc::detail::robust {

// ---- heap ---------------------------------------------------------------------------------------
//
// A broken environment cannot be closed through libdb (see environment::release_broken): its
// DB_ENV, ENV, DB handles, cursors, file handles and region descriptions would stay on the heap,
// 15-25 kB at every recovery, for the life of the process. libdb allocates everything through
// its jump table (db_env_set_func_malloc/realloc/free, process-wide), so the library routes what
// libdb allocates inside the library's own calls (current_env, see robust_state.hpp) to an arena
// of that environment, and releasing a broken environment hands the whole arena back at once.
// What libdb allocates outside the library's calls (a DB_ENV the application uses itself) goes
// to malloc, and a free or realloc of memory that is not an arena's to free/realloc, exactly as
// without smisk-ipc. Memory that libdb hands to the caller (DB_DBT_MALLOC, statistics) is not
// an arena's either: the library's environments set DB_ENV->set_alloc(malloc, realloc, free).
//
// Arenas take chunks from one reservation of address space made once (PROT_NONE, so it costs
// no memory): a chunk is made readable and writable when an arena takes it and inaccessible
// again, its pages returned to the system, when handed back (until another arena takes it, which
// is soon: a released environment's handles must never be touched again). Which chunks are
// taken is a bitmap
// changed with atomic operations only: no lock is shared between arenas, so a fork() in any
// thread leaves nothing locked that the child needs (it makes new environments, with new arenas;
// an arena's own lock is taken only by threads using its environment, which the child never
// touches). If the reservation cannot be made (RLIMIT_AS) or is used up, libdb's allocations
// simply go to malloc, as before.

inline constexpr std::size_t heap_chunk_size = std::size_t{32} << 10;
inline constexpr std::size_t heap_reserve_size = std::size_t{256} << 20;
inline constexpr std::size_t heap_chunk_count = heap_reserve_size / heap_chunk_size;
/// Blocks of 16 << c bytes for c < heap_classes (up to 8 KiB) come from slabs; larger ones get
/// runs of whole chunks of their own.
inline constexpr unsigned heap_classes = 10;
inline constexpr std::size_t heap_header_size = 64;
inline constexpr std::uint32_t heap_run = 0xffffffffu;

class heap_arena;

/// At the start of every chunk (slab) or run of chunks (one large block).
struct heap_chunk {
  heap_arena* arena;
  heap_chunk* prev;  // the arena's chunks, for release()
  heap_chunk* next;
  char* bump;                // slab: the first block never handed out
  std::uint32_t size_class;  // the slab's class, or heap_run
  std::uint32_t chunks;      // the run's length in chunks (1 for a slab)
};
static_assert(sizeof(heap_chunk) <= heap_header_size);

inline std::atomic<std::uintptr_t> heap_base{0};  // the reservation; 0 until installed
inline std::atomic<std::uint64_t> heap_map[heap_chunk_count / 64];
inline std::atomic<long> heap_chunks_taken{0};

/// Whether `p` is an arena's memory.
inline bool heap_owns(const void* p) noexcept {
  const std::uintptr_t base = heap_base.load(std::memory_order_acquire);
  return base != 0 && reinterpret_cast<std::uintptr_t>(p) - base < heap_reserve_size;
}

inline heap_chunk* heap_chunk_of(const void* p) noexcept {
  const std::uintptr_t base = heap_base.load(std::memory_order_acquire);
  const std::uintptr_t off = (reinterpret_cast<std::uintptr_t>(p) - base) & ~(heap_chunk_size - 1);
  return reinterpret_cast<heap_chunk*>(base + off);
}

/// Chunk i's bit in heap_map: whether an arena holds it.
inline bool chunk_taken(std::size_t i) noexcept {
  return (heap_map[i / 64].load(std::memory_order_relaxed) >> (i % 64)) & 1u;
}
/// Sets chunk i's bit; false if another thread took it first.
inline bool take_chunk(std::size_t i) noexcept {
  const std::uint64_t bit = std::uint64_t{1} << (i % 64);
  return (heap_map[i / 64].fetch_or(bit, std::memory_order_acq_rel) & bit) == 0;
}
inline void free_chunk(std::size_t i) noexcept {
  heap_map[i / 64].fetch_and(~(std::uint64_t{1} << (i % 64)), std::memory_order_acq_rel);
}

/// Takes `n` free consecutive chunks and makes them accessible; null if there are none.
inline heap_chunk* take_chunks(std::size_t n) noexcept {
  const std::uintptr_t base = heap_base.load(std::memory_order_acquire);
  if (base == 0 || n == 0 || n > heap_chunk_count) return nullptr;
  for (std::size_t i = 0; i + n <= heap_chunk_count;) {
    std::size_t j = 0;
    while (j < n && !chunk_taken(i + j)) ++j;
    if (j < n) {
      i += j + 1;
      continue;
    }
    std::size_t k = 0;
    while (k < n && take_chunk(i + k)) ++k;
    if (k == n) {
      void* at = reinterpret_cast<void*>(base + i * heap_chunk_size);
      if (::mprotect(at, n * heap_chunk_size, PROT_READ | PROT_WRITE) == 0) {
        heap_chunks_taken.fetch_add(static_cast<long>(n), std::memory_order_relaxed);
        return static_cast<heap_chunk*>(at);
      }
      for (std::size_t m = 0; m < n; ++m) free_chunk(i + m);  // no memory: malloc may find some
      return nullptr;
    }
    for (std::size_t m = 0; m < k; ++m) free_chunk(i + m);
    i += k + 1;
  }
  return nullptr;
}

/// Returns `n` chunks' pages to the system, makes them inaccessible and frees them.
inline void give_back_chunks(heap_chunk* c, std::size_t n) noexcept {
  const std::uintptr_t base = heap_base.load(std::memory_order_acquire);
  (void)::madvise(c, n * heap_chunk_size, MADV_DONTNEED);
  (void)::mprotect(c, n * heap_chunk_size, PROT_NONE);
  const std::size_t first = (reinterpret_cast<std::uintptr_t>(c) - base) / heap_chunk_size;
  for (std::size_t i = first; i < first + n; ++i) free_chunk(i);
  heap_chunks_taken.fetch_sub(static_cast<long>(n), std::memory_order_relaxed);
}

/// libdb's heap memory of one environment.
class heap_arena {
 public:
  heap_arena() = default;
  heap_arena(const heap_arena&) = delete;
  heap_arena& operator=(const heap_arena&) = delete;
  // Nothing is given back here: an arena inherited over fork() (whose lock a thread of the
  // parent may hold) is dropped without touching it; see release().

  /// A block of at least `n` bytes, 16-byte aligned; null if no chunk is left (or released).
  void* allocate(std::size_t n) noexcept {
    const unsigned c = class_of(n);
    if (c == heap_classes) return allocate_run(n);
    lock();
    void* p = free_[c];
    if (p) {
      free_[c] = *static_cast<void**>(p);
    } else {
      heap_chunk* s = slab_[c];
      const std::size_t size = std::size_t{16} << c;
      if (!s || s->bump + size > reinterpret_cast<char*>(s) + heap_chunk_size) {
        s = released_ ? nullptr : take_chunks(1);
        if (s) {
          s->size_class = c;
          s->chunks = 1;
          s->bump = reinterpret_cast<char*>(s) + heap_header_size;
          link(s);
        }
        slab_[c] = s;
      }
      if (s) {
        p = s->bump;
        s->bump += size;
      }
    }
    unlock();
    return p;
  }

  /// Frees an arena's block (heap_owns(p)), in whichever arena it came from.
  static void deallocate(void* p) noexcept {
    heap_chunk* h = heap_chunk_of(p);
    heap_arena* a = h->arena;
    a->lock();
    if (h->size_class == heap_run) {
      a->unlink(h);
      a->unlock();
      give_back_chunks(h, h->chunks);
      return;
    }
    *static_cast<void**>(p) = a->free_[h->size_class];
    a->free_[h->size_class] = p;
    a->unlock();
  }

  /// realloc() of an arena's block: the new block is from the same arena (or malloc's, if it is
  /// full).
  static void* reallocate(void* p, std::size_t n) noexcept {
    heap_chunk* h = heap_chunk_of(p);
    const std::size_t usable = h->size_class == heap_run
                                   ? h->chunks * heap_chunk_size - heap_header_size
                                   : std::size_t{16} << h->size_class;
    if (n <= usable) return p;
    void* q = h->arena->allocate(n);
    if (!q) q = std::malloc(n);
    if (!q) return nullptr;
    std::memcpy(q, p, usable);
    deallocate(p);
    return q;
  }

  /// Hands every chunk back; later allocations go to malloc. Only when nothing of the
  /// environment is used any more (no thread inside it, its handles never touched again): the
  /// addresses are handed out again at once, to the next environment. Without the lock, which
  /// nobody else may want then, and which a thread ended inside an allocation by the fault guard
  /// (see lock()) would have left taken.
  void release() noexcept {
    released_ = true;
    heap_chunk* c = chunks_;
    chunks_ = nullptr;
    for (auto& s : slab_) s = nullptr;
    for (auto& f : free_) f = nullptr;
    while (c) {
      heap_chunk* next = c->next;
      give_back_chunks(c, c->chunks);
      c = next;
    }
  }

 private:
  /// The smallest c with 16 << c >= n, or heap_classes.
  static unsigned class_of(std::size_t n) noexcept {
    if (n <= 16) return 0;
    if (n > (std::size_t{16} << (heap_classes - 1))) return heap_classes;
    return static_cast<unsigned>(64 - __builtin_clzll(static_cast<unsigned long long>(n - 1))) - 4;
  }

  void* allocate_run(std::size_t n) noexcept {
    if (n > heap_reserve_size) return nullptr;
    const std::size_t chunks = (n + heap_header_size + heap_chunk_size - 1) / heap_chunk_size;
    heap_chunk* r = take_chunks(chunks);
    if (!r) return nullptr;
    r->size_class = heap_run;
    r->chunks = static_cast<std::uint32_t>(chunks);
    lock();
    if (released_) {  // keep nothing in a released arena
      unlock();
      give_back_chunks(r, chunks);
      return nullptr;
    }
    link(r);
    unlock();
    return reinterpret_cast<char*>(r) + heap_header_size;
  }

  void link(heap_chunk* c) noexcept {
    c->arena = this;
    c->prev = nullptr;
    c->next = chunks_;
    if (chunks_) chunks_->prev = c;
    chunks_ = c;
  }
  void unlink(heap_chunk* c) noexcept {
    (c->prev ? c->prev->next : chunks_) = c->next;
    if (c->next) c->next->prev = c->prev;
  }

  // A spin lock, held for a few instructions and never while waiting for anything. The thread
  // holding it is inside a guarded libdb call: only a fault in the allocator itself (a free list
  // that libdb corrupted by a double free) could end it there by the fault guard's siglongjmp,
  // leaving the arena locked; release() does not take it.
  void lock() noexcept {
    while (locked_.exchange(true, std::memory_order_acquire))
      while (locked_.load(std::memory_order_relaxed)) std::this_thread::yield();
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

  std::atomic<bool> locked_{false};
  bool released_ = false;
  void* free_[heap_classes] = {};
  heap_chunk* slab_[heap_classes] = {};
  heap_chunk* chunks_ = nullptr;
};

/// The arena libdb's allocations of the calling thread go to while the library makes an
/// environment (before its DB_ENV can say whose it is).
inline thread_local heap_arena* current_arena = nullptr;
/// Set by the library: the arena of one of its environments.
using arena_of_fn = heap_arena* (*)(DB_ENV*) noexcept;
inline std::atomic<arena_of_fn> arena_of{nullptr};

/// Routes the calling thread's libdb allocations to `a` (nests).
class arena_scope : scoped_set<heap_arena*> {
 public:
  explicit arena_scope(heap_arena* a) noexcept : scoped_set(current_arena, a) {}
};

inline heap_arena* arena_for_calling_thread() noexcept {
  if (heap_arena* a = current_arena) return a;
  DB_ENV* env = current_env;
  if (!env) return nullptr;
  const arena_of_fn f = arena_of.load(std::memory_order_acquire);
  return f ? f(env) : nullptr;
}

// libdb's jump-table functions.
inline void* heap_malloc(std::size_t n) noexcept {
  if (heap_arena* a = arena_for_calling_thread())
    if (void* p = a->allocate(n)) return p;
  return std::malloc(n);
}
inline void* heap_realloc(void* p, std::size_t n) noexcept {
  if (!p) return heap_malloc(n);
  if (heap_owns(p)) return heap_arena::reallocate(p, n);
  return std::realloc(p, n);
}
inline void heap_free(void* p) noexcept {
  if (heap_owns(p))
    heap_arena::deallocate(p);
  else
    std::free(p);
}

/// Makes the reservation and installs the jump-table functions, once per process. @returns
/// whether libdb's allocations for the library's environments go to arenas.
inline bool install_heap() noexcept {
  static const bool installed = [] {
    // Aligned to the chunk size, so that a block's chunk is its address rounded down.
    const std::size_t len = heap_reserve_size + heap_chunk_size;
    void* at = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (at == MAP_FAILED) return false;
    const auto lo = reinterpret_cast<std::uintptr_t>(at);
    const std::uintptr_t base = (lo + heap_chunk_size - 1) & ~(heap_chunk_size - 1);
    if (base > lo) (void)::munmap(at, base - lo);
    if (base + heap_reserve_size < lo + len)
      (void)::munmap(reinterpret_cast<void*>(base + heap_reserve_size),
                     lo + len - base - heap_reserve_size);
    heap_base.store(base, std::memory_order_release);
    // free and realloc first: once malloc is routed, every pointer they may see is known.
    if (::db_env_set_func_free(&heap_free) != 0 || ::db_env_set_func_realloc(&heap_realloc) != 0 ||
        ::db_env_set_func_malloc(&heap_malloc) != 0)
      return false;
    return true;
  }();
  return installed;
}

}  // namespace smisk::ipc::detail::robust
