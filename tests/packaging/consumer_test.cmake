# Configures, builds and runs a consumer project of smisk-ipc; any failing step
# fails the test.
#
#   cmake -DSOURCE_DIR=<consumer project> -DBINARY_DIR=<scratch build dir>
#         -DPROGRAM=<executable name>
#         [-DGENERATOR=<generator>] [-DCXX_COMPILER=<compiler>] [-DBUILD_TYPE=<config>]
#         [-DPREFIX_PATH=<install prefix>]          (find_package consumer)
#         [-DSMISK_IPC_SOURCE_DIR=<source tree>]    (add_subdirectory consumer)
#         -P consumer_test.cmake

foreach(required IN ITEMS SOURCE_DIR BINARY_DIR PROGRAM)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "consumer_test.cmake: -D${required}=... is required")
  endif()
endforeach()

function(run_step name)
  execute_process(
    COMMAND ${ARGN}
    COMMAND_ECHO STDOUT
    RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer ${name} step failed: ${result}")
  endif()
endfunction()

# Start from scratch, so that no cache from an earlier run hides a failure.
file(REMOVE_RECURSE "${BINARY_DIR}")

set(configure_args -S "${SOURCE_DIR}" -B "${BINARY_DIR}")
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(BUILD_TYPE)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
if(PREFIX_PATH)
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${PREFIX_PATH}"
       "-DSMISK_IPC_EXPECTED_PREFIX=${PREFIX_PATH}")
endif()
if(SMISK_IPC_SOURCE_DIR)
  list(APPEND configure_args "-DSMISK_IPC_SOURCE_DIR=${SMISK_IPC_SOURCE_DIR}")
endif()

set(build_args --build "${BINARY_DIR}")
if(BUILD_TYPE)
  list(APPEND build_args --config "${BUILD_TYPE}")
endif()

run_step(configure "${CMAKE_COMMAND}" ${configure_args})
run_step(build "${CMAKE_COMMAND}" ${build_args})
run_step(run "${BINARY_DIR}/bin/${PROGRAM}")
