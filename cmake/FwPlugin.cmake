# fw_add_plugin(TARGET KIND/NAME SOURCES...)
# Builds one fw plugin: a MODULE library named NAME.so placed under
# plugins/KIND/ in the build tree (where fwrun finds it) and installed to
# lib/fw/plugins/KIND/. Only fw_plugin_entry is exported.
function(fw_add_plugin target name)
  string(REPLACE "/" ";" parts "${name}")
  list(LENGTH parts n)
  if(NOT n EQUAL 2)
    message(FATAL_ERROR "fw_add_plugin: name '${name}' is not KIND/NAME")
  endif()
  list(GET parts 0 kind)
  list(GET parts 1 base)
  add_library(${target} MODULE ${ARGN})
  if(TARGET fw::fw)
    target_link_libraries(${target} PRIVATE fw::fw)
  else()
    target_link_libraries(${target} PRIVATE fw)
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX "" OUTPUT_NAME "${base}"
    LIBRARY_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/plugins/${kind}"
    C_VISIBILITY_PRESET hidden)
  install(TARGETS ${target} LIBRARY DESTINATION lib/fw/plugins/${kind})
endfunction()
