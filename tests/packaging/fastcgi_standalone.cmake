# Configures and builds examples/fastcgi as a project of its own, against an installed smisk-ipc
# (find_package(smisk_ipc) finds the one under PREFIX_PATH, nothing else), then runs the program
# as a CGI program: it must answer "Hello! This was built by process #PID". Any failing step
# fails the test.
#
#   cmake -DSOURCE_DIR=<examples/fastcgi> -DBINARY_DIR=<scratch build dir>
#         -DPREFIX_PATH=<install prefix>
#         [-DGENERATOR=<generator>] [-DCXX_COMPILER=<compiler>] [-DBUILD_TYPE=<config>]
#         -P fastcgi_standalone.cmake

foreach(required IN ITEMS SOURCE_DIR BINARY_DIR PREFIX_PATH)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "fastcgi_standalone.cmake: -D${required}=... is required")
  endif()
endforeach()

function(run_step name)
  execute_process(
    COMMAND ${ARGN}
    COMMAND_ECHO STDOUT
    RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "fastcgi standalone ${name} step failed: ${result}")
  endif()
endfunction()

file(REMOVE_RECURSE "${BINARY_DIR}")

set(configure_args -S "${SOURCE_DIR}" -B "${BINARY_DIR}" "-DCMAKE_PREFIX_PATH=${PREFIX_PATH}")
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(BUILD_TYPE)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
set(build_args --build "${BINARY_DIR}")
if(BUILD_TYPE)
  list(APPEND build_args --config "${BUILD_TYPE}")
endif()

run_step(configure "${CMAKE_COMMAND}" ${configure_args})

# The package found must be the one just installed.
file(STRINGS "${BINARY_DIR}/CMakeCache.txt" found_line REGEX "^smisk_ipc_DIR:")
string(REGEX REPLACE "^smisk_ipc_DIR:[A-Z]+=" "" found_dir "${found_line}")
file(REAL_PATH "${PREFIX_PATH}" expected_prefix)
file(REAL_PATH "${found_dir}" found_dir)
string(FIND "${found_dir}" "${expected_prefix}/" position)
if(NOT position EQUAL 0)
  message(FATAL_ERROR "found smisk_ipc in '${found_dir}', not under ${expected_prefix}")
endif()
message(STATUS "smisk_ipc from ${found_dir}")

run_step(build "${CMAKE_COMMAND}" ${build_args})

set(program "${BINARY_DIR}/fastcgi_example")
if(BUILD_TYPE AND NOT EXISTS "${program}")
  set(program "${BINARY_DIR}/${BUILD_TYPE}/fastcgi_example")  # multi-config generators
endif()
if(NOT EXISTS "${program}")
  message(FATAL_ERROR "the build made no fastcgi_example in ${BINARY_DIR}")
endif()

# Not under a FastCGI server (stdin is not a socket), it answers the CGI request of its
# environment; its temporary Berkeley DB home goes when it exits.
execute_process(
  COMMAND "${CMAKE_COMMAND}" -E env REQUEST_URI=/packaging "${program}" --home
          "${BINARY_DIR}/ipc"
  INPUT_FILE /dev/null
  OUTPUT_VARIABLE output
  ERROR_VARIABLE errors
  RESULT_VARIABLE result)
message(STATUS "CGI response:\n${output}${errors}")
if(NOT result EQUAL 0 OR NOT output MATCHES "Status: 200"
   OR NOT output MATCHES "X-Served-By: [0-9]+"
   OR NOT output MATCHES "\r?\n\r?\nHello! This was built by process #[0-9]+\n$")
  message(FATAL_ERROR "fastcgi_example did not answer the CGI request (exit ${result})")
endif()
if(EXISTS "${BINARY_DIR}/ipc")
  message(FATAL_ERROR "fastcgi_example left its temporary home ${BINARY_DIR}/ipc behind")
endif()

# Where the installed package has the memcached component, the program must have been built with
# it: --memcached then fails to reach the (closed) loopback port 1, it does not say that the
# backend is missing.
file(GLOB_RECURSE memcached_targets "${PREFIX_PATH}/*/smisk_ipcMemcachedTargets.cmake")
if(memcached_targets)
  execute_process(
    COMMAND "${program}" --memcached 127.0.0.1:1
    INPUT_FILE /dev/null
    OUTPUT_VARIABLE output
    ERROR_VARIABLE errors
    RESULT_VARIABLE result)
  message(STATUS "with --memcached 127.0.0.1:1: exit ${result}: ${errors}")
  if(errors MATCHES "built without the memcached backend" OR NOT errors MATCHES "cannot open")
    message(FATAL_ERROR "the standalone build has no memcached backend, though the package has it")
  endif()
endif()
