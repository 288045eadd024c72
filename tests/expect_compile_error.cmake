# A compile-fail test: building TARGET must fail, with a readable message.
#
#   cmake -DBUILD_DIR=<build tree> -DTARGET=<target> -DSOURCE=<file.cpp>
#         [-DCONFIG=<config>] -P expect_compile_error.cmake
#
# Each line "// expected-error: <regex>" in SOURCE is a regular expression that
# the compiler output must match. Without one, the output must show a
# static_assert firing: the library promises readable messages, not a
# substitution failure deep in a template. Each line "// unexpected-error: <regex>"
# is one the output must not match (the noise a static_assert is there to replace).

foreach(required IN ITEMS BUILD_DIR TARGET SOURCE)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "expect_compile_error.cmake: -D${required}=... is required")
  endif()
endforeach()

set(config_args "")
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()

execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}" ${config_args}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)

if(result EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must not:\n${output}")
endif()

file(STRINGS "${SOURCE}" expectations REGEX "^[ \t]*//[ \t]*expected-error:")
if(NOT expectations)
  set(expectations "// expected-error: static.assert")
endif()
foreach(expectation IN LISTS expectations)
  string(REGEX REPLACE "^[ \t]*//[ \t]*expected-error:[ \t]*" "" regex "${expectation}")
  if(NOT output MATCHES "${regex}")
    message(FATAL_ERROR "${SOURCE} failed to compile, but its output does not match "
                        "'${regex}':\n${output}")
  endif()
endforeach()
file(STRINGS "${SOURCE}" refusals REGEX "^[ \t]*//[ \t]*unexpected-error:")
foreach(refusal IN LISTS refusals)
  string(REGEX REPLACE "^[ \t]*//[ \t]*unexpected-error:[ \t]*" "" regex "${refusal}")
  if(output MATCHES "${regex}")
    message(FATAL_ERROR "${SOURCE} failed to compile, but its output also matches "
                        "'${regex}', which it must not:\n${output}")
  endif()
endforeach()
message(STATUS "${SOURCE} fails to compile, as it must")
