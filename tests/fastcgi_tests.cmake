# The FastCGI example's tests (label "fastcgi"), included from tests/CMakeLists.txt.
#
# fastcgi.load.<backend> and fastcgi.kill.<backend> run tests/fastcgi_e2e.sh: the example
# (examples/fastcgi, target fastcgi_example) as 4 spawn-fcgi workers behind a private nginx on
# 127.0.0.1, 200 requests over 20 paths with curl; "kill" SIGKILLs a worker in the middle of the
# load. The memcached ones use the memcached_server fixture of memcached_tests.cmake. A missing
# nginx, spawn-fcgi or curl skips them (exit code 77). packaging.fastcgi_standalone configures
# and builds examples/fastcgi as a project of its own against the install tree.

set(smisk_ipc_saved_module_path "${CMAKE_MODULE_PATH}")
list(PREPEND CMAKE_MODULE_PATH "${PROJECT_SOURCE_DIR}/examples/fastcgi/cmake")
find_package(fcgi QUIET)
set(CMAKE_MODULE_PATH "${smisk_ipc_saved_module_path}")
if(NOT fcgi_FOUND)
  message(WARNING "smisk-ipc: libfcgi not found (Debian: apt-get install libfcgi-dev); "
                  "the FastCGI example's tests are not registered")
  return()
endif()

# Packaging: examples/fastcgi as a standalone project, through find_package(smisk_ipc) against
# the install tree of packaging.install; its program answers one CGI request.
if(SMISK_IPC_INSTALL)
  add_test(
    NAME packaging.fastcgi_standalone
    COMMAND
      "${CMAKE_COMMAND}" -DGENERATOR=${CMAKE_GENERATOR} -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
      -DBUILD_TYPE=$<CONFIG> -DSOURCE_DIR=${PROJECT_SOURCE_DIR}/examples/fastcgi
      -DBINARY_DIR=${CMAKE_CURRENT_BINARY_DIR}/packaging/fastcgi_standalone
      -DPREFIX_PATH=${PROJECT_BINARY_DIR}/_install -P
      "${CMAKE_CURRENT_SOURCE_DIR}/packaging/fastcgi_standalone.cmake")
  set_tests_properties(
    packaging.fastcgi_standalone PROPERTIES FIXTURES_REQUIRED smisk_ipc_install_tree
                                            LABELS "packaging;fastcgi" TIMEOUT 300)
endif()

if(NOT SMISK_IPC_BUILD_EXAMPLES)
  message(STATUS "smisk-ipc: the FastCGI end-to-end tests need SMISK_IPC_BUILD_EXAMPLES=ON")
  return()
endif()

find_program(SMISK_IPC_BASH bash REQUIRED)
find_program(
  SMISK_IPC_NGINX_EXECUTABLE
  NAMES nginx
  PATHS /usr/sbin /usr/local/sbin /sbin
  DOC "The nginx that the FastCGI end-to-end tests run (privately, on loopback)")
find_program(SMISK_IPC_SPAWN_FCGI_EXECUTABLE NAMES spawn-fcgi DOC "spawn-fcgi, for the FastCGI tests")
find_program(SMISK_IPC_CURL_EXECUTABLE NAMES curl DOC "curl, for the FastCGI tests")
set(smisk_ipc_fastcgi_env "")
foreach(tool IN ITEMS NGINX SPAWN_FCGI CURL)
  if(SMISK_IPC_${tool}_EXECUTABLE)
    list(APPEND smisk_ipc_fastcgi_env "${tool}=${SMISK_IPC_${tool}_EXECUTABLE}")
  else()
    message(WARNING "smisk-ipc: no ${tool} found; the FastCGI end-to-end tests will be skipped "
                    "(Debian: apt-get install nginx-light spawn-fcgi curl)")
    list(APPEND smisk_ipc_fastcgi_env "${tool}=/nonexistent/${tool}")
  endif()
endforeach()

# smisk_ipc_add_fastcgi_test(<scenario> <backend> [<label>...])
function(smisk_ipc_add_fastcgi_test scenario backend)
  set(name fastcgi.${scenario}.${backend})
  add_test(NAME ${name} COMMAND "${SMISK_IPC_BASH}" "${CMAKE_CURRENT_SOURCE_DIR}/fastcgi_e2e.sh"
                                ${scenario} ${backend} $<TARGET_FILE:fastcgi_example>)
  set(labels fastcgi ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "${labels}" TIMEOUT 90 SKIP_RETURN_CODE 77
                                          ENVIRONMENT "${smisk_ipc_fastcgi_env}")
endfunction()

smisk_ipc_add_fastcgi_test(load bsddb)
smisk_ipc_add_fastcgi_test(kill bsddb)
if(TARGET smisk_ipc_memcached AND SMISK_IPC_MEMCACHED_EXECUTABLE)
  foreach(scenario IN ITEMS load kill)
    smisk_ipc_add_fastcgi_test(${scenario} memcached memcached)
    set_tests_properties(
      fastcgi.${scenario}.memcached
      PROPERTIES FIXTURES_REQUIRED smisk_ipc_memcached_server
                 ENVIRONMENT "${smisk_ipc_fastcgi_env};${smisk_ipc_memcached_env}")
  endforeach()
endif()
