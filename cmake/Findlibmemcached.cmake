# Distributed under the MIT license, see LICENSE. In the style of FindBerkeleyDB.cmake next to it.

#[=======================================================================[.rst:
Findlibmemcached
----------------

Finds libmemcached, the C client library of memcached (``libmemcached-1.0/memcached.h`` and
``libmemcached``): the awesomized 1.1 line or the original 1.0. Debian: ``apt-get install
libmemcached-dev``. libmemcached ships no CMake package of its own.

Imported targets
^^^^^^^^^^^^^^^^

``libmemcached::libmemcached``
  The library, with its include directory.

Result variables
^^^^^^^^^^^^^^^^

``libmemcached_FOUND``
  True if the header and the library were found (in the requested version).
``libmemcached_VERSION``
  ``MAJOR.MINOR.PATCH`` as read from ``libmemcached-1.0/configure.h``.
``libmemcached_INCLUDE_DIRS``, ``libmemcached_LIBRARIES``
  For users who do not use the imported target.

Cache variables
^^^^^^^^^^^^^^^

``libmemcached_INCLUDE_DIR``
  The directory that contains ``libmemcached-1.0/memcached.h``.
``libmemcached_LIBRARY``
  The library.

Hints
^^^^^

Set ``libmemcached_ROOT`` (a CMake or environment variable) to the prefix of a libmemcached
installation to prefer it over the system one.
#]=======================================================================]

find_path(
  libmemcached_INCLUDE_DIR
  NAMES libmemcached-1.0/memcached.h
  DOC "libmemcached include directory (the one that contains libmemcached-1.0/memcached.h)")

unset(libmemcached_VERSION)
if(libmemcached_INCLUDE_DIR AND EXISTS "${libmemcached_INCLUDE_DIR}/libmemcached-1.0/configure.h")
  file(STRINGS "${libmemcached_INCLUDE_DIR}/libmemcached-1.0/configure.h" _libmemcached_version_line
       REGEX "^#define[ \t]+LIBMEMCACHED_VERSION_STRING[ \t]+\"[0-9.]+\"")
  if(_libmemcached_version_line MATCHES "\"([0-9]+(\\.[0-9]+)*)\"")
    set(libmemcached_VERSION "${CMAKE_MATCH_1}")
  endif()
  unset(_libmemcached_version_line)
endif()

find_library(
  libmemcached_LIBRARY
  NAMES memcached libmemcached NAMES_PER_DIR
  DOC "libmemcached library")

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(
  libmemcached
  REQUIRED_VARS libmemcached_LIBRARY libmemcached_INCLUDE_DIR
  VERSION_VAR libmemcached_VERSION)

if(libmemcached_FOUND)
  set(libmemcached_INCLUDE_DIRS "${libmemcached_INCLUDE_DIR}")
  set(libmemcached_LIBRARIES "${libmemcached_LIBRARY}")

  if(NOT TARGET libmemcached::libmemcached)
    add_library(libmemcached::libmemcached UNKNOWN IMPORTED)
    set_target_properties(
      libmemcached::libmemcached PROPERTIES IMPORTED_LOCATION "${libmemcached_LIBRARY}"
                                            INTERFACE_INCLUDE_DIRECTORIES "${libmemcached_INCLUDE_DIR}")
  endif()
endif()

mark_as_advanced(libmemcached_INCLUDE_DIR libmemcached_LIBRARY)
