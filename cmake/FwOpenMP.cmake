# fw::openmp - OpenMP for code built by gcc or clang, always served by LLVM's
# libomp, so that fw, oneDNN and every plugin share one thread pool.
#
# Debian's libdnnl links GNU libgomp. libomp implements libgomp's GOMP_*
# entry points, so a program whose first OpenMP library is libomp runs all of
# them on libomp's pool. clang's -fopenmp links libomp already; gcc's would
# link libgomp, so here code compiles with the compiler's OpenMP flag and
# links libomp by path, whichever compiler it is.
if(NOT TARGET fw::openmp)
  find_package(OpenMP REQUIRED)
  find_package(Threads REQUIRED)
  find_library(FW_LIBOMP NAMES omp libomp.so.5
    HINTS /usr/lib/llvm-16/lib /usr/lib/llvm-15/lib /usr/lib/llvm-14/lib
    DOC "LLVM's OpenMP runtime (Debian: libomp-dev)")
  if(NOT FW_LIBOMP)
    message(FATAL_ERROR "fw: LLVM's OpenMP runtime (libomp) not found; install libomp-dev")
  endif()
  add_library(fw::openmp INTERFACE IMPORTED GLOBAL)
  foreach(lang C CXX)
    if(OpenMP_${lang}_FLAGS)
      separate_arguments(_fw_omp_flags UNIX_COMMAND "${OpenMP_${lang}_FLAGS}")
      target_compile_options(fw::openmp INTERFACE
        "$<$<COMPILE_LANGUAGE:${lang}>:${_fw_omp_flags}>")
    endif()
  endforeach()
  target_link_libraries(fw::openmp INTERFACE "${FW_LIBOMP}" Threads::Threads)
endif()
