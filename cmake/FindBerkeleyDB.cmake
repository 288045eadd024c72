# Distributed under the MIT license, see LICENSE. Modelled on Bitcoin Core's
# cmake/module/FindBerkeleyDB.cmake.

#[=======================================================================[.rst:
FindBerkeleyDB
--------------

Finds Oracle Berkeley DB (``libdb``), its C API (``db.h``) and, if present,
its C++ API (``libdb_cxx``). Debian: ``apt-get install libdb5.3-dev``
(``libdb5.3++-dev`` for the C++ library).

Components
^^^^^^^^^^

``CXX``
  The C++ library. It is looked for in any case; name it in ``COMPONENTS``
  to make it required.

Imported targets
^^^^^^^^^^^^^^^^

``BerkeleyDB::BerkeleyDB``
  The C library, with its include directory.
``BerkeleyDB::CXX``
  The C++ library (links ``BerkeleyDB::BerkeleyDB``), if it was found.

Result variables
^^^^^^^^^^^^^^^^

``BerkeleyDB_FOUND``
  True if ``db.h`` and the C library were found (and the required components).
``BerkeleyDB_VERSION``
  ``MAJOR.MINOR.PATCH`` as read from ``db.h``; also
  ``BerkeleyDB_VERSION_MAJOR``, ``_MINOR`` and ``_PATCH``.
``BerkeleyDB_INCLUDE_DIRS``, ``BerkeleyDB_LIBRARIES``
  For users who do not use the imported targets.
``BerkeleyDB_CXX_FOUND``
  True if the C++ library was found.

Cache variables
^^^^^^^^^^^^^^^

``BerkeleyDB_INCLUDE_DIR``
  The directory that contains ``db.h``.
``BerkeleyDB_LIBRARY``
  The C library.
``BerkeleyDB_CXX_LIBRARY``
  The C++ library.

Hints
^^^^^

Set ``BerkeleyDB_ROOT`` (a CMake or environment variable) to the prefix of a
Berkeley DB installation to prefer it over the system one. Note that some
systems (macOS, the BSDs) ship an unrelated ``db.h`` from the 1.85 API; the
version check below rejects it when a version is requested.
#]=======================================================================]

find_path(
  BerkeleyDB_INCLUDE_DIR
  NAMES db.h
  PATH_SUFFIXES db5.3 db5 db53 libdb5 libdb
  DOC "Berkeley DB include directory (the one that contains db.h)")

unset(BerkeleyDB_VERSION)
if(BerkeleyDB_INCLUDE_DIR AND EXISTS "${BerkeleyDB_INCLUDE_DIR}/db.h")
  file(STRINGS "${BerkeleyDB_INCLUDE_DIR}/db.h" _BerkeleyDB_version_lines
       REGEX "^#define[ \t]+DB_VERSION_(MAJOR|MINOR|PATCH)[ \t]+[0-9]+")
  foreach(_BerkeleyDB_part IN ITEMS MAJOR MINOR PATCH)
    set(BerkeleyDB_VERSION_${_BerkeleyDB_part} "")
    foreach(_BerkeleyDB_line IN LISTS _BerkeleyDB_version_lines)
      if(_BerkeleyDB_line MATCHES "^#define[ \t]+DB_VERSION_${_BerkeleyDB_part}[ \t]+([0-9]+)")
        set(BerkeleyDB_VERSION_${_BerkeleyDB_part} "${CMAKE_MATCH_1}")
      endif()
    endforeach()
  endforeach()
  if(NOT BerkeleyDB_VERSION_MAJOR STREQUAL "" AND NOT BerkeleyDB_VERSION_MINOR STREQUAL "")
    set(BerkeleyDB_VERSION "${BerkeleyDB_VERSION_MAJOR}.${BerkeleyDB_VERSION_MINOR}")
    if(NOT BerkeleyDB_VERSION_PATCH STREQUAL "")
      string(APPEND BerkeleyDB_VERSION ".${BerkeleyDB_VERSION_PATCH}")
    endif()
  endif()
  unset(_BerkeleyDB_version_lines)
  unset(_BerkeleyDB_line)
  unset(_BerkeleyDB_part)
endif()

# Prefer the library whose version matches db.h (libdb-5.3.so next to a
# libdb.so that may point elsewhere), then the unversioned name.
set(_BerkeleyDB_c_names db)
set(_BerkeleyDB_cxx_names db_cxx)
if(BerkeleyDB_VERSION_MAJOR AND NOT BerkeleyDB_VERSION_MINOR STREQUAL "")
  set(_BerkeleyDB_suffix "${BerkeleyDB_VERSION_MAJOR}.${BerkeleyDB_VERSION_MINOR}")
  list(PREPEND _BerkeleyDB_c_names "db-${_BerkeleyDB_suffix}")
  list(PREPEND _BerkeleyDB_cxx_names "db_cxx-${_BerkeleyDB_suffix}")
  unset(_BerkeleyDB_suffix)
endif()
list(REMOVE_DUPLICATES _BerkeleyDB_c_names)

find_library(
  BerkeleyDB_LIBRARY
  NAMES ${_BerkeleyDB_c_names} db-5.3 db NAMES_PER_DIR
  DOC "Berkeley DB C library")
find_library(
  BerkeleyDB_CXX_LIBRARY
  NAMES ${_BerkeleyDB_cxx_names} db_cxx-5.3 db_cxx NAMES_PER_DIR
  DOC "Berkeley DB C++ library")
unset(_BerkeleyDB_c_names)
unset(_BerkeleyDB_cxx_names)

if(BerkeleyDB_CXX_LIBRARY AND EXISTS "${BerkeleyDB_INCLUDE_DIR}/db_cxx.h")
  set(BerkeleyDB_CXX_FOUND TRUE)
else()
  set(BerkeleyDB_CXX_FOUND FALSE)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(
  BerkeleyDB
  REQUIRED_VARS BerkeleyDB_LIBRARY BerkeleyDB_INCLUDE_DIR
  VERSION_VAR BerkeleyDB_VERSION
  HANDLE_COMPONENTS)

if(BerkeleyDB_FOUND)
  set(BerkeleyDB_INCLUDE_DIRS "${BerkeleyDB_INCLUDE_DIR}")
  set(BerkeleyDB_LIBRARIES "${BerkeleyDB_LIBRARY}")

  if(NOT TARGET BerkeleyDB::BerkeleyDB)
    add_library(BerkeleyDB::BerkeleyDB UNKNOWN IMPORTED)
    set_target_properties(
      BerkeleyDB::BerkeleyDB PROPERTIES IMPORTED_LOCATION "${BerkeleyDB_LIBRARY}"
                                        INTERFACE_INCLUDE_DIRECTORIES "${BerkeleyDB_INCLUDE_DIR}")
  endif()

  if(BerkeleyDB_CXX_FOUND AND NOT TARGET BerkeleyDB::CXX)
    add_library(BerkeleyDB::CXX UNKNOWN IMPORTED)
    set_target_properties(
      BerkeleyDB::CXX PROPERTIES IMPORTED_LOCATION "${BerkeleyDB_CXX_LIBRARY}"
                                 INTERFACE_LINK_LIBRARIES BerkeleyDB::BerkeleyDB)
  endif()
endif()

mark_as_advanced(BerkeleyDB_INCLUDE_DIR BerkeleyDB_LIBRARY BerkeleyDB_CXX_LIBRARY)
