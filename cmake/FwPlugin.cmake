# fw_add_plugin(TARGET KIND/NAME SOURCES...)
# Builds one fw plugin: a MODULE library named NAME.so placed under
# plugins/KIND/ in the build tree (where fwrun finds it) and installed to
# lib/fw/plugins/KIND/. Only fw_plugin_entry is exported.
#
# OpenMP: the plugin compiles with the compiler's OpenMP flag and links LLVM's
# libomp (fw::openmp, see FwOpenMP.cmake), under gcc as under clang, so that
# the process keeps one OpenMP runtime. A plugin that links CMake's
# OpenMP::OpenMP_C (or _CXX) gets fw::openmp in its place: under gcc that
# target would bring GNU libgomp, a second runtime with its own thread pool.
# (Plugins should split loops with host->parallel_for all the same.)
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
    target_link_libraries(${target} PRIVATE fw::fw fw::openmp)
  else()
    target_link_libraries(${target} PRIVATE fw fw::openmp)
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX "" OUTPUT_NAME "${base}"
    LIBRARY_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/plugins/${kind}"
    C_VISIBILITY_PRESET hidden)
  install(TARGETS ${target} LIBRARY DESTINATION lib/fw/plugins/${kind})
  # After the caller's own target_link_libraries, at the end of its directory
  # (EVAL: a deferred call's arguments are expanded only when it runs).
  cmake_language(EVAL CODE "cmake_language(DEFER CALL _fw_plugin_one_openmp [[${target}]])")
endfunction()

# Replaces CMake's OpenMP targets among a plugin's link libraries by fw::openmp.
function(_fw_plugin_one_openmp target)
  foreach(prop LINK_LIBRARIES INTERFACE_LINK_LIBRARIES)
    get_target_property(libs ${target} ${prop})
    if(libs)
      list(TRANSFORM libs REPLACE "^OpenMP::OpenMP_(C|CXX)$" "fw::openmp")
      list(REMOVE_DUPLICATES libs)
      set_property(TARGET ${target} PROPERTY ${prop} ${libs})
    endif()
  endforeach()
endfunction()
