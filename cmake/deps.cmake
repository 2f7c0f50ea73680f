# Every dependency is a Debian package; a missing one stops the configure step
# with the name of the package to install.
find_package(PkgConfig)

function(mx_missing what pkg)
  message(FATAL_ERROR "mxtrain: ${what} not found. Install it with: apt-get install ${pkg}  (or run scripts/run.sh)")
endfunction()

if(NOT PKG_CONFIG_FOUND)
  mx_missing("pkg-config" "pkg-config")
endif()

# OpenBLAS, OpenMP build only: it shares libgomp's thread pool with our own
# OpenMP loops, so one --threads knob governs both. The pthread build (Debian's
# default alternative) would fight our threads for the two cores.
set(MX_OPENBLAS_DIR "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp")
find_library(MX_OPENBLAS_LIB NAMES openblas PATHS ${MX_OPENBLAS_DIR} NO_DEFAULT_PATH)
find_path(MX_OPENBLAS_INC cblas.h PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
if(NOT MX_OPENBLAS_LIB OR NOT MX_OPENBLAS_INC)
  mx_missing("OpenBLAS (OpenMP build) in ${MX_OPENBLAS_DIR}" "libopenblas-openmp-dev")
endif()
add_library(mx_openblas INTERFACE)
target_link_libraries(mx_openblas INTERFACE ${MX_OPENBLAS_LIB})
target_include_directories(mx_openblas INTERFACE ${MX_OPENBLAS_INC})
# Run path = the OpenMP build's folder, so the loader never picks the pthread one.
set(CMAKE_BUILD_RPATH ${MX_OPENBLAS_DIR})
set(CMAKE_INSTALL_RPATH ${MX_OPENBLAS_DIR})

find_package(OpenMP)
if(NOT OpenMP_C_FOUND)
  mx_missing("OpenMP for C" "libgomp1 (part of gcc)")
endif()

pkg_check_modules(MX_HDF5 hdf5)
if(NOT MX_HDF5_FOUND)
  mx_missing("HDF5" "libhdf5-dev")
endif()
add_library(mx_hdf5 INTERFACE)
target_include_directories(mx_hdf5 INTERFACE ${MX_HDF5_INCLUDE_DIRS})
target_link_directories(mx_hdf5 INTERFACE ${MX_HDF5_LIBRARY_DIRS})
target_link_libraries(mx_hdf5 INTERFACE ${MX_HDF5_LIBRARIES})

pkg_check_modules(MX_CHECK check)
if(NOT MX_CHECK_FOUND)
  mx_missing("Check (unit test framework)" "check")
endif()

pkg_check_modules(MX_CJSON libcjson)
if(NOT MX_CJSON_FOUND)
  mx_missing("cJSON (JSON library)" "libcjson-dev")
endif()
add_library(mx_cjson INTERFACE)
target_include_directories(mx_cjson INTERFACE ${MX_CJSON_INCLUDE_DIRS})
target_link_libraries(mx_cjson INTERFACE ${MX_CJSON_LIBRARIES})

# oneDNN: only its header at build time; core/gemm_bf16.c opens libdnnl.so.2
# with dlopen at the first bf16 product (a CPU run without one never loads it).
find_path(MX_DNNL_INC oneapi/dnnl/dnnl.h)
if(NOT MX_DNNL_INC)
  mx_missing("oneDNN (bf16 GEMMs on the CPU)" "libdnnl-dev")
endif()
add_library(mx_dnnl INTERFACE)
target_include_directories(mx_dnnl INTERFACE ${MX_DNNL_INC})

pkg_check_modules(MX_INIH inih)
if(NOT MX_INIH_FOUND)
  mx_missing("inih (INI parser)" "libinih-dev")
endif()

find_package(ZLIB)
if(NOT ZLIB_FOUND)
  mx_missing("zlib" "zlib1g-dev")
endif()

find_path(MX_STB_INC stb_image.h PATHS /usr/include/stb NO_DEFAULT_PATH)
find_library(MX_STB_LIB stb)
if(NOT MX_STB_INC OR NOT MX_STB_LIB)
  mx_missing("stb_image.h and libstb" "libstb-dev")
endif()
add_library(mx_stb INTERFACE)
target_include_directories(mx_stb INTERFACE ${MX_STB_INC})
target_link_libraries(mx_stb INTERFACE ${MX_STB_LIB})

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)

set(MX_FMNIST_DIR "/usr/share/datasets/fashion-mnist")
if(NOT EXISTS "${MX_FMNIST_DIR}/train-images-idx3-ubyte.gz")
  mx_missing("Fashion-MNIST data in ${MX_FMNIST_DIR}" "dataset-fashion-mnist")
endif()
