# The tests of the memcached backend (smisk::ipc_memcached), included from
# tests/CMakeLists.txt when that target is built. Every test here has the label
# "memcached": ctest -L memcached runs them all.
#
# ctest starts one memcached for the run (the memcached_server fixture:
# memcached_fixture.sh, on 127.0.0.1 and a port the kernel picks) and stops it
# by its PID afterwards. Tests find its port in the file named by the
# environment variable SMISK_IPC_MEMCACHED_PORT_FILE. Tests that kill, freeze
# or restart servers start their own, also by PID.

find_program(
  SMISK_IPC_MEMCACHED_EXECUTABLE
  NAMES memcached
  PATHS /usr/bin /usr/sbin /usr/local/bin
  DOC "The memcached server that the memcached backend tests run")

set(smisk_ipc_memcached_fixture_dir "${CMAKE_CURRENT_BINARY_DIR}/memcached-fixture")
set(smisk_ipc_memcached_env
    "SMISK_IPC_MEMCACHED_PORT_FILE=${smisk_ipc_memcached_fixture_dir}/port")

if(NOT SMISK_IPC_MEMCACHED_EXECUTABLE)
  message(WARNING "smisk-ipc: no memcached executable found (Debian: apt-get install memcached); "
                  "the memcached backend tests that need a server are not registered")
else()
  find_program(SMISK_IPC_BASH bash REQUIRED)
  add_test(NAME memcached.server.start
           COMMAND "${SMISK_IPC_BASH}" "${CMAKE_CURRENT_SOURCE_DIR}/memcached_fixture.sh" start
                   "${smisk_ipc_memcached_fixture_dir}" "${SMISK_IPC_MEMCACHED_EXECUTABLE}")
  set_tests_properties(memcached.server.start PROPERTIES FIXTURES_SETUP smisk_ipc_memcached_server
                                                         LABELS memcached TIMEOUT 60)
  add_test(NAME memcached.server.stop
           COMMAND "${SMISK_IPC_BASH}" "${CMAKE_CURRENT_SOURCE_DIR}/memcached_fixture.sh" stop
                   "${smisk_ipc_memcached_fixture_dir}")
  set_tests_properties(memcached.server.stop PROPERTIES FIXTURES_CLEANUP smisk_ipc_memcached_server
                                                        LABELS memcached TIMEOUT 60)

  # smisk_ipc_add_memcached_test(NAME <name> SOURCES <file>... [CXX_STANDARD 17|20]
  #                              [TIMEOUT <seconds>] [LABELS <label>...])
  #
  # Like smisk_ipc_add_test, linked with smisk::ipc_memcached, and every GoogleTest case
  # requires the memcached_server fixture and gets its port file in the environment. The cases
  # use namespaces (and servers) of their own, so they run in parallel.
  function(smisk_ipc_add_memcached_test)
    cmake_parse_arguments(PARSE_ARGV 0 arg "" "NAME;CXX_STANDARD;TIMEOUT" "SOURCES;LABELS")
    if(NOT arg_CXX_STANDARD)
      set(arg_CXX_STANDARD 17)
    endif()
    if(NOT arg_TIMEOUT)
      set(arg_TIMEOUT 120)
    endif()
    add_executable(${arg_NAME} ${arg_SOURCES})
    target_include_directories(${arg_NAME} PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}")
    target_link_libraries(${arg_NAME} PRIVATE smisk::ipc_memcached GTest::gtest_main
                                              smisk_ipc_project_flags)
    target_compile_definitions(
      ${arg_NAME} PRIVATE SMISK_IPC_TEST_MEMCACHED="${SMISK_IPC_MEMCACHED_EXECUTABLE}")
    set_target_properties(
      ${arg_NAME} PROPERTIES CXX_STANDARD ${arg_CXX_STANDARD} CXX_STANDARD_REQUIRED ON
                             CXX_EXTENSIONS OFF)
    gtest_discover_tests(
      ${arg_NAME}
      TEST_PREFIX "${arg_NAME}."
      TEST_LIST ${arg_NAME}_TESTS
      DISCOVERY_TIMEOUT 60)
    # Properties with list values (labels, fixtures, environment) are set from a ctest script
    # that runs after discovery; gtest_discover_tests(PROPERTIES) would split them.
    set(labels memcached ${arg_LABELS})
    set(script "${CMAKE_CURRENT_BINARY_DIR}/${arg_NAME}_properties.cmake")
    file(
      WRITE "${script}"
      "if(${arg_NAME}_TESTS)\n"
      "  set_tests_properties(\${${arg_NAME}_TESTS} PROPERTIES\n"
      "    LABELS \"${labels}\" TIMEOUT ${arg_TIMEOUT}\n"
      "    FIXTURES_REQUIRED smisk_ipc_memcached_server\n"
      "    ENVIRONMENT \"${smisk_ipc_memcached_env}\")\n"
      "endif()\n")
    set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${script}")
  endfunction()

  smisk_ipc_add_memcached_test(NAME memcached_api_test_cxx17 SOURCES memcached_api_test.cpp
                               CXX_STANDARD 17 LABELS api)
  smisk_ipc_add_memcached_test(NAME memcached_api_test_cxx20 SOURCES memcached_api_test.cpp
                               CXX_STANDARD 20 LABELS api)
  smisk_ipc_add_memcached_test(NAME memcached_test SOURCES memcached_test.cpp)
  smisk_ipc_add_memcached_test(NAME memcached_contention_test SOURCES memcached_contention_test.cpp
                               TIMEOUT 300)
  smisk_ipc_add_memcached_test(NAME memcached_nodes_test SOURCES memcached_nodes_test.cpp
                               TIMEOUT 180)
endif()

# Compile-fail: what memcached cannot do (count, list, iterate) does not compile, and the
# message says why. Same mechanism as tests/compile_fail/.
file(GLOB smisk_ipc_memcached_compile_fail CONFIGURE_DEPENDS
     "${CMAKE_CURRENT_SOURCE_DIR}/compile_fail_memcached/*.cpp")
foreach(source IN LISTS smisk_ipc_memcached_compile_fail)
  get_filename_component(name "${source}" NAME_WE)
  set(target smisk_ipc_compile_fail_memcached_${name})
  add_executable(${target} EXCLUDE_FROM_ALL "${source}")
  target_link_libraries(${target} PRIVATE smisk::ipc_memcached smisk_ipc_project_flags)
  set_target_properties(${target} PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON
                                             CXX_EXTENSIONS OFF EXCLUDE_FROM_DEFAULT_BUILD ON)
  add_test(
    NAME compile_fail.memcached_${name}
    COMMAND "${CMAKE_COMMAND}" -DBUILD_DIR=${PROJECT_BINARY_DIR} -DTARGET=${target}
            -DSOURCE=${source} -DCONFIG=$<CONFIG> -P "${CMAKE_CURRENT_SOURCE_DIR}/expect_compile_error.cmake")
  set_tests_properties(
    compile_fail.memcached_${name} PROPERTIES LABELS "compile_fail;memcached" TIMEOUT 300
                                              RESOURCE_LOCK smisk_ipc_build_tree)
endforeach()

# Packaging: consumers of smisk::ipc_memcached through find_package() (against the
# install tree of packaging.install) and through add_subdirectory(); each builds
# and runs a program that counts on the fixture memcached.
if(SMISK_IPC_INSTALL AND SMISK_IPC_MEMCACHED_EXECUTABLE)
  set(packaging_dir "${CMAKE_CURRENT_SOURCE_DIR}/packaging")
  set(memcached_consumer_args
      -DGENERATOR=${CMAKE_GENERATOR}
      -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
      -DBUILD_TYPE=$<CONFIG>
      -DPROGRAM=smisk_ipc_memcached_consumer)

  add_test(
    NAME packaging.find_package_memcached
    COMMAND
      "${CMAKE_COMMAND}" ${memcached_consumer_args}
      -DSOURCE_DIR=${packaging_dir}/find_package_memcached
      -DBINARY_DIR=${CMAKE_CURRENT_BINARY_DIR}/packaging/find_package_memcached
      -DPREFIX_PATH=${PROJECT_BINARY_DIR}/_install -P "${packaging_dir}/consumer_test.cmake")
  set_tests_properties(
    packaging.find_package_memcached
    PROPERTIES FIXTURES_REQUIRED "smisk_ipc_install_tree;smisk_ipc_memcached_server"
               ENVIRONMENT "${smisk_ipc_memcached_env}" LABELS "packaging;memcached" TIMEOUT 300)

  add_test(
    NAME packaging.add_subdirectory_memcached
    COMMAND
      "${CMAKE_COMMAND}" ${memcached_consumer_args}
      -DSOURCE_DIR=${packaging_dir}/add_subdirectory_memcached
      -DBINARY_DIR=${CMAKE_CURRENT_BINARY_DIR}/packaging/add_subdirectory_memcached
      -DSMISK_IPC_SOURCE_DIR=${PROJECT_SOURCE_DIR} -P "${packaging_dir}/consumer_test.cmake")
  set_tests_properties(
    packaging.add_subdirectory_memcached
    PROPERTIES FIXTURES_REQUIRED smisk_ipc_memcached_server ENVIRONMENT "${smisk_ipc_memcached_env}"
               LABELS "packaging;memcached" TIMEOUT 300)
endif()
