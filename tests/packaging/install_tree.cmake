# Installs a smisk-ipc build tree into a fresh prefix (the ctest fixture of the
# find_package packaging test).
#
#   cmake -DBUILD_DIR=<build tree> -DPREFIX=<install prefix> [-DCONFIG=<config>]
#         -P install_tree.cmake

foreach(required IN ITEMS BUILD_DIR PREFIX)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "install_tree.cmake: -D${required}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")

set(config_args "")
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()

execute_process(
  COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
  COMMAND_ECHO STDOUT
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${result}")
endif()

# What a consumer needs: the umbrella header and the package config.
if(NOT EXISTS "${PREFIX}/include/smisk/ipc.hpp")
  message(FATAL_ERROR "the install tree has no include/smisk/ipc.hpp")
endif()
file(GLOB_RECURSE config_files "${PREFIX}/*/smisk_ipcConfig.cmake")
if(NOT config_files)
  message(FATAL_ERROR "the install tree has no smisk_ipcConfig.cmake")
endif()
message(STATUS "installed into ${PREFIX}; package config: ${config_files}")
