// smisk-ipc: finding libdb in the process and rewriting its GOT slots (plthook).
// SPDX-License-Identifier: MIT
//
// Part of the robust-mutex patch of libdb; robust_mutex.hpp explains it as a whole.
#pragma once

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "robust_files.hpp"
#include "robust_guard.hpp"
#include "robust_state.hpp"
#include "robust_waits.hpp"

namespace smisk::ipc::detail::robust {

// ---- finding and patching libdb's GOT --------------------------------------------------------

#if defined(__x86_64__)
inline constexpr bool arch_supported = true;
inline constexpr unsigned reloc_jump_slot = R_X86_64_JUMP_SLOT;
inline constexpr unsigned reloc_glob_dat = R_X86_64_GLOB_DAT;
#elif defined(__aarch64__)
inline constexpr bool arch_supported = true;
inline constexpr unsigned reloc_jump_slot = R_AARCH64_JUMP_SLOT;
inline constexpr unsigned reloc_glob_dat = R_AARCH64_GLOB_DAT;
#else
inline constexpr bool arch_supported = false;  // install() says "not installed"
inline constexpr unsigned reloc_jump_slot = ~0u;
inline constexpr unsigned reloc_glob_dat = ~0u;
#endif
// Both supported targets are LP64 and use RELA relocations.
inline constexpr unsigned reloc_type(std::uint64_t info) noexcept {
  return static_cast<unsigned>(info & 0xffffffffu);
}
inline constexpr std::size_t reloc_symbol(std::uint64_t info) noexcept {
  return static_cast<std::size_t>(info >> 32);
}

template <class F>
inline std::uintptr_t address_of(F* f) noexcept {
  return reinterpret_cast<std::uintptr_t>(f);
}

/// One loaded object, as dl_iterate_phdr describes it.
struct elf_object {
  ElfW(Addr) base = 0;
  const ElfW(Phdr) * phdr = nullptr;
  ElfW(Half) phnum = 0;
  const char* name = nullptr;
  bool main_program = false;

  [[nodiscard]] bool contains(std::uintptr_t a, std::size_t len = 1) const noexcept {
    for (ElfW(Half) i = 0; i < phnum; ++i) {
      if (phdr[i].p_type != PT_LOAD) continue;
      std::uintptr_t lo = base + phdr[i].p_vaddr, hi = lo + phdr[i].p_memsz;
      if (a >= lo && a < hi && len <= hi - a) return true;
    }
    return false;
  }
  [[nodiscard]] const ElfW(Phdr) * segment(ElfW(Word) type) const noexcept {
    for (ElfW(Half) i = 0; i < phnum; ++i)
      if (phdr[i].p_type == type) return &phdr[i];
    return nullptr;
  }
};

/// What libdb's dynamic section says, with every address checked to lie in libdb.
struct dynamic_info {
  const ElfW(Sym) * symtab = nullptr;
  const char* strtab = nullptr;
  std::size_t strsz = 0;
  std::size_t nsyms = 0;  // from DT_HASH or DT_GNU_HASH; 0 if unknown
  const ElfW(Rela) * jmprel = nullptr;
  std::size_t jmprel_count = 0;
  const ElfW(Rela) * rela = nullptr;
  std::size_t rela_count = 0;
};

/// glibc relocates most d_ptr entries in place (to absolute addresses); other loaders leave
/// them as offsets from the load base. Accept whichever lies inside the object.
inline std::uintptr_t dyn_address(const elf_object& o, ElfW(Addr) v, std::size_t len) noexcept {
  if (v >= o.base && o.contains(v, len)) return v;
  if (o.contains(o.base + v, len)) return o.base + v;
  return 0;
}

inline std::size_t gnu_hash_symbol_count(const elf_object& o, const std::uint32_t* h) noexcept {
  if (!o.contains(address_of(h), 16)) return 0;
  std::uint32_t nbuckets = h[0], symoffset = h[1], bloom_size = h[2];
  auto bloom = reinterpret_cast<const ElfW(Addr)*>(h + 4);
  auto buckets = reinterpret_cast<const std::uint32_t*>(bloom + bloom_size);
  const std::uint32_t* chain = buckets + nbuckets;
  if (!o.contains(address_of(buckets), std::size_t{nbuckets} * 4)) return 0;
  std::uint32_t last = 0;
  for (std::uint32_t b = 0; b < nbuckets; ++b)
    if (buckets[b] > last) last = buckets[b];
  if (last < symoffset) return symoffset;
  for (;;) {
    const std::uint32_t* c = chain + (last - symoffset);
    if (!o.contains(address_of(c), 4)) return 0;
    if (*c & 1u) return std::size_t{last} + 1;
    ++last;
  }
}

inline bool read_dynamic(const elf_object& o, dynamic_info& d) noexcept {
  const ElfW(Phdr)* dyn_ph = o.segment(PT_DYNAMIC);
  if (!dyn_ph) return false;
  auto dyn = reinterpret_cast<const ElfW(Dyn)*>(o.base + dyn_ph->p_vaddr);
  ElfW(Addr) symtab = 0, strtab = 0, jmprel = 0, rela = 0, hash = 0, gnu_hash = 0;
  std::size_t pltrelsz = 0, relasz = 0, relaent = sizeof(ElfW(Rela));
  long pltrel = DT_RELA;
  std::size_t n = dyn_ph->p_memsz / sizeof(ElfW(Dyn));
  for (std::size_t i = 0; i < n && dyn[i].d_tag != DT_NULL; ++i) {
    switch (dyn[i].d_tag) {
      case DT_SYMTAB:
        symtab = dyn[i].d_un.d_ptr;
        break;
      case DT_STRTAB:
        strtab = dyn[i].d_un.d_ptr;
        break;
      case DT_STRSZ:
        d.strsz = dyn[i].d_un.d_val;
        break;
      case DT_JMPREL:
        jmprel = dyn[i].d_un.d_ptr;
        break;
      case DT_PLTRELSZ:
        pltrelsz = dyn[i].d_un.d_val;
        break;
      case DT_PLTREL:
        pltrel = static_cast<long>(dyn[i].d_un.d_val);
        break;
      case DT_RELA:
        rela = dyn[i].d_un.d_ptr;
        break;
      case DT_RELASZ:
        relasz = dyn[i].d_un.d_val;
        break;
      case DT_RELAENT:
        relaent = dyn[i].d_un.d_val;
        break;
      case DT_HASH:
        hash = dyn[i].d_un.d_ptr;
        break;
      case DT_GNU_HASH:
        gnu_hash = dyn[i].d_un.d_ptr;
        break;
      default:
        break;
    }
  }
  if (pltrel != DT_RELA || relaent != sizeof(ElfW(Rela)) || !symtab || !strtab || !d.strsz)
    return false;
  d.strtab = reinterpret_cast<const char*>(dyn_address(o, strtab, d.strsz));
  d.symtab = reinterpret_cast<const ElfW(Sym)*>(dyn_address(o, symtab, sizeof(ElfW(Sym))));
  if (!d.strtab || !d.symtab) return false;
  if (jmprel && pltrelsz) {
    d.jmprel = reinterpret_cast<const ElfW(Rela)*>(dyn_address(o, jmprel, pltrelsz));
    if (!d.jmprel) return false;
    d.jmprel_count = pltrelsz / sizeof(ElfW(Rela));
  }
  if (rela && relasz) {
    d.rela = reinterpret_cast<const ElfW(Rela)*>(dyn_address(o, rela, relasz));
    if (!d.rela) return false;
    d.rela_count = relasz / sizeof(ElfW(Rela));
  }
  if (hash) {
    auto h = reinterpret_cast<const std::uint32_t*>(dyn_address(o, hash, 8));
    if (h) d.nsyms = h[1];  // nchain
  } else if (gnu_hash) {
    auto h = reinterpret_cast<const std::uint32_t*>(dyn_address(o, gnu_hash, 16));
    if (h) d.nsyms = gnu_hash_symbol_count(o, h);
  }
  return true;
}

inline const char* symbol_name(const dynamic_info& d, std::size_t index) noexcept {
  if (d.nsyms && index >= d.nsyms) return nullptr;
  std::size_t off = d.symtab[index].st_name;
  if (off >= d.strsz) return nullptr;
  return d.strtab + off;
}

/// Whether the object defines (not merely uses) the symbol `name`.
inline bool defines(const elf_object& o, const char* name) noexcept {
  dynamic_info d;
  if (!read_dynamic(o, d) || !d.nsyms) return false;
  if (!o.contains(address_of(d.symtab), d.nsyms * sizeof(ElfW(Sym)))) return false;
  for (std::size_t i = 1; i < d.nsyms; ++i) {
    const char* s = symbol_name(d, i);
    if (s && d.symtab[i].st_shndx != SHN_UNDEF && std::strcmp(s, name) == 0) return true;
  }
  return false;
}

struct find_state {
  std::uintptr_t probe = 0;  // an address inside libdb, if known
  int index = 0;
  int found = 0;          // objects defining db_env_create
  elf_object by_address;  // the one containing `probe`
  elf_object by_symbol;   // the (last) one defining db_env_create
  bool main_defines = false;
};

inline int find_callback(struct dl_phdr_info* info, std::size_t, void* data) noexcept {
  auto* st = static_cast<find_state*>(data);
  elf_object o;
  o.base = info->dlpi_addr;
  o.phdr = info->dlpi_phdr;
  o.phnum = info->dlpi_phnum;
  o.name = info->dlpi_name ? info->dlpi_name : "";
  o.main_program = st->index++ == 0 || o.name[0] == '\0';
  if (st->probe && o.contains(st->probe)) st->by_address = o;
  if (o.main_program) {
    if (defines(o, "db_env_create")) st->main_defines = true;
  } else if (defines(o, "db_env_create")) {
    st->by_symbol = o;
    ++st->found;
  }
  return 0;
}

/// A GOT slot to rewrite.
struct slot {
  const char* symbol;
  std::uintptr_t replacement;
  std::uintptr_t* where[4];  // JUMP_SLOT and GLOB_DAT entries for the symbol
  int count;
  std::uintptr_t previous[4];
  bool required;
};

inline std::size_t page_size() noexcept {
  long p = ::sysconf(_SC_PAGESIZE);
  return p > 0 ? static_cast<std::size_t>(p) : 4096;
}

/// Writes `value` into the slot at `where` of object `o`, making the page writable for the
/// write and read-only again afterwards if it is part of PT_GNU_RELRO.
inline bool write_slot(const elf_object& o, std::uintptr_t* where, std::uintptr_t value) noexcept {
  std::uintptr_t a = address_of(where);
  std::uintptr_t ps = page_size();
  std::uintptr_t page = a & ~(ps - 1);
  bool read_only_after = false;
  if (const ElfW(Phdr)* relro = o.segment(PT_GNU_RELRO)) {
    std::uintptr_t lo = (o.base + relro->p_vaddr) & ~(ps - 1);
    std::uintptr_t hi = (o.base + relro->p_vaddr + relro->p_memsz) & ~(ps - 1);  // as ld.so
    read_only_after = page >= lo && page < hi;
  }
  bool writable_segment = false;
  for (ElfW(Half) i = 0; i < o.phnum; ++i) {
    const ElfW(Phdr)& p = o.phdr[i];
    if (p.p_type == PT_LOAD && a >= o.base + p.p_vaddr &&
        a + sizeof value <= o.base + p.p_vaddr + p.p_memsz)
      writable_segment = (p.p_flags & PF_W) != 0;
  }
  if (!writable_segment) return false;  // a GOT is never in a read-only or text segment
  if (::mprotect(reinterpret_cast<void*>(page), ps, PROT_READ | PROT_WRITE) != 0) return false;
  __atomic_store_n(where, value, __ATOMIC_RELEASE);
  if (read_only_after) (void)::mprotect(reinterpret_cast<void*>(page), ps, PROT_READ);
  return true;
}

/// Whether a resolved slot already points to one of our replacements (installed by another copy
/// of this header, e.g. in another shared object with hidden visibility).
inline bool ours(std::uintptr_t target) noexcept {
  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(target), &info) == 0 || !info.dli_sname) return false;
  return std::strncmp(info.dli_sname, "smisk_ipc_robust_", 17) == 0;
}

template <class F>
inline void adopt(std::atomic<F>& real, const elf_object& libdb, std::uintptr_t previous) noexcept {
  // A lazily bound slot still points into libdb's PLT: keep this program's binding then.
  if (previous && !libdb.contains(previous))
    real.store(reinterpret_cast<F>(previous), std::memory_order_release);
}

inline bool do_install(char* message, std::size_t size) noexcept {
  auto fail = [&](const char* why, const char* detail = "") {
    std::snprintf(message, size, "not installed: %s%s", why, detail);
    return false;
  };
  if (!arch_supported) return fail("unsupported architecture (x86-64 and AArch64 only)");

  // libdb: the object that &db_env_create points into (dladdr), else (a non-PIE program, where
  // that is a PLT entry of the program) the one shared object that defines db_env_create.
  find_state st;
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(address_of(&::db_env_create)), &info) != 0)
    st.probe = address_of(&::db_env_create);
  ::dl_iterate_phdr(&find_callback, &st);
  elf_object libdb;
  if (st.probe && st.by_address.phdr && !st.by_address.main_program)
    libdb = st.by_address;
  else if (st.main_defines)
    return fail("Berkeley DB is linked statically into the program");
  else if (st.found == 1)
    libdb = st.by_symbol;
  else
    return fail(st.found ? "more than one loaded object defines db_env_create"
                         : "no loaded shared object defines db_env_create");

  dynamic_info d;
  if (!read_dynamic(libdb, d)) return fail("cannot read the dynamic section of ", libdb.name);

  slot slots[] = {
      {"pthread_mutex_lock", address_of(&::smisk_ipc_robust_mutex_lock), {}, 0, {}, true},
      {"pthread_mutex_trylock", address_of(&::smisk_ipc_robust_mutex_trylock), {}, 0, {}, false},
      {"pthread_mutex_destroy", address_of(&::smisk_ipc_robust_mutex_destroy), {}, 0, {}, false},
      {"pthread_cond_wait", address_of(&::smisk_ipc_robust_cond_wait), {}, 0, {}, false},
      {"pthread_cond_timedwait", address_of(&::smisk_ipc_robust_cond_timedwait), {}, 0, {}, false},
      {"pthread_cond_destroy", address_of(&::smisk_ipc_robust_cond_destroy), {}, 0, {}, false},
      {"pthread_rwlock_rdlock", address_of(&::smisk_ipc_robust_rwlock_rdlock), {}, 0, {}, false},
      {"pthread_rwlock_wrlock", address_of(&::smisk_ipc_robust_rwlock_wrlock), {}, 0, {}, false},
      {"munmap", address_of(&::smisk_ipc_robust_munmap), {}, 0, {}, false},
      {"open", address_of(&::smisk_ipc_robust_open), {}, 0, {}, false},
      {"close", address_of(&::smisk_ipc_robust_close), {}, 0, {}, false},
      {"readdir", address_of(&::smisk_ipc_robust_readdir), {}, 0, {}, false},
      {"__lock_detect", address_of(&::smisk_ipc_robust_lock_detect), {}, 0, {}, false},
      {"__os_yield", address_of(&::smisk_ipc_robust_os_yield), {}, 0, {}, false},
      // Last: mutexes become robust only once the functions above handle what that brings.
      {"pthread_mutexattr_setpshared",
       address_of(&::smisk_ipc_robust_mutexattr_setpshared),
       {},
       0,
       {},
       true},
  };
  constexpr int nslots = static_cast<int>(sizeof slots / sizeof slots[0]);

  auto scan = [&](const ElfW(Rela) * rel, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      unsigned type = reloc_type(rel[i].r_info);
      if (type != reloc_jump_slot && type != reloc_glob_dat) continue;
      const char* name = symbol_name(d, reloc_symbol(rel[i].r_info));
      if (!name) continue;
      for (slot& s : slots) {
        if (std::strcmp(name, s.symbol) != 0) continue;
        std::uintptr_t where = libdb.base + rel[i].r_offset;
        if (s.count >= 0 && s.count < 4 && libdb.contains(where, sizeof(std::uintptr_t)) &&
            where % sizeof(std::uintptr_t) == 0)
          s.where[s.count++] = reinterpret_cast<std::uintptr_t*>(where);
        else
          s.count = -1;  // unexpected: refuse
      }
    }
  };
  if (d.jmprel) scan(d.jmprel, d.jmprel_count);
  if (d.rela) scan(d.rela, d.rela_count);
  for (slot& s : slots) {
    if (s.count < 0) return fail("unexpected relocations for ", s.symbol);
    if (s.required && s.count == 0) return fail("libdb does not call ", s.symbol);
  }

  bool all_ours = true;
  for (slot& s : slots)
    for (int k = 0; k < s.count; ++k) {
      s.previous[k] = __atomic_load_n(s.where[k], __ATOMIC_ACQUIRE);
      if (!ours(s.previous[k])) all_ours = false;
    }
  if (all_ours) {
    std::snprintf(message, size, "installed (by another copy of smisk-ipc in this process) in %s",
                  libdb.name);
    return true;
  }

  for (slot& s : slots) {
    if (s.count == 0) continue;
    std::uintptr_t prev = s.previous[0];
    if (std::strcmp(s.symbol, "pthread_mutex_trylock") == 0)
      adopt(real_trylock, libdb, prev);
    else if (std::strcmp(s.symbol, "pthread_mutex_destroy") == 0)
      adopt(real_destroy, libdb, prev);
    else if (std::strcmp(s.symbol, "pthread_cond_timedwait") == 0)
      adopt(real_cond_timedwait, libdb, prev);
    else if (std::strcmp(s.symbol, "munmap") == 0)
      adopt(real_munmap, libdb, prev);
    else if (std::strcmp(s.symbol, "pthread_mutexattr_setpshared") == 0)
      adopt(real_setpshared, libdb, prev);
  }

  // The detector's wrapper calls libdb's own __lock_detect (its lazily bound slot may still
  // point into libdb's PLT, whose resolver would overwrite the patch), and needs the handler.
  for (slot& s : slots) {
    const bool detect = std::strcmp(s.symbol, "__lock_detect") == 0;
    const bool yield = std::strcmp(s.symbol, "__os_yield") == 0;
    if ((!detect && !yield) || s.count == 0) continue;
    void* handle = ::dlopen(libdb.name, RTLD_NOW | RTLD_NOLOAD);
    void* real = handle ? ::dlsym(handle, s.symbol) : nullptr;
    if (handle) ::dlclose(handle);
    if (!real || !libdb.contains(address_of(real)) || !install_fault_handler()) {
      s.count = 0;  // leave libdb's own
    } else if (detect) {
      real_lock_detect.store(reinterpret_cast<lock_detect_fn>(real), std::memory_order_release);
    } else {
      real_os_yield.store(reinterpret_cast<os_yield_fn>(real), std::memory_order_release);
    }
  }

  int patched = 0;
  for (int i = 0; i < nslots; ++i) {
    for (int k = 0; k < slots[i].count; ++k) {
      if (write_slot(libdb, slots[i].where[k], slots[i].replacement)) {
        ++patched;
        continue;
      }
      for (int j = i; j >= 0; --j)  // undo, newest first: libdb is left as it was
        for (int m = (j == i ? k : slots[j].count) - 1; m >= 0; --m)
          (void)write_slot(libdb, slots[j].where[m], slots[j].previous[m]);
      return fail("cannot write libdb's GOT (mprotect failed) for ", slots[i].symbol);
    }
  }
  std::snprintf(message, size,
                "installed: %d GOT slots of %s patched; the process-shared mutexes it creates "
                "from now on are robust",
                patched, libdb.name);
  return true;
}

inline char status_message[512] = "not installed: install() was not called";
inline std::atomic<const char*> status_text{"not installed: install() was not called"};
inline std::atomic<bool> installed_flag{false};

}  // namespace smisk::ipc::detail::robust
