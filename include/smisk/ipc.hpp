// smisk-ipc: a dictionary that the processes of one application share and change at the same
// time. The C++ form of smisk.ipc.shared_dict. Header-only, C++17.
// SPDX-License-Identifier: MIT
#pragma once

#include "ipc/backend.hpp"
#include "ipc/bsddb.hpp"
#include "ipc/codec.hpp"
#include "ipc/error.hpp"
#include "ipc/shared_dict.hpp"

// The memcached backend needs libmemcached: it comes with the smisk::ipc_memcached target (which
// defines SMISK_IPC_WITH_MEMCACHED), or with #include <smisk/ipc/memcached.hpp>.
#if defined(SMISK_IPC_WITH_MEMCACHED) && SMISK_IPC_WITH_MEMCACHED
#include "ipc/memcached.hpp"
#endif
