# Findfcgi: the C library of the FastCGI development kit (libfcgi; Debian: libfcgi-dev), which
# ships neither a CMake package config nor a pkg-config file.
#
# Sets fcgi_FOUND, fcgi_INCLUDE_DIR (where fcgiapp.h is) and fcgi_LIBRARY, and defines the
# imported target fcgi::fcgi. Set fcgi_ROOT to use one installed elsewhere.

find_path(
  fcgi_INCLUDE_DIR
  NAMES fcgiapp.h
  PATH_SUFFIXES fastcgi
  DOC "Where fcgiapp.h is (libfcgi)")
find_library(
  fcgi_LIBRARY
  NAMES fcgi
  DOC "The libfcgi library")

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(fcgi REQUIRED_VARS fcgi_LIBRARY fcgi_INCLUDE_DIR)

if(fcgi_FOUND AND NOT TARGET fcgi::fcgi)
  add_library(fcgi::fcgi UNKNOWN IMPORTED)
  set_target_properties(fcgi::fcgi PROPERTIES IMPORTED_LOCATION "${fcgi_LIBRARY}"
                                              INTERFACE_INCLUDE_DIRECTORIES "${fcgi_INCLUDE_DIR}")
endif()
mark_as_advanced(fcgi_INCLUDE_DIR fcgi_LIBRARY)
