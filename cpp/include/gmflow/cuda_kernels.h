// Host launchers of the CUDA kernels (defined in cuda/, torch-free), generated from the kernel
// table (params.h). Each enqueues on `stream` (a cudaStream_t) and returns nullptr on success or
// the CUDA error string of the launch.
#pragma once

#include "gmflow/params.h"

// The launcher, named as in the table (defined in its cuda/<family>.cu), and `run`, the same
// launcher overloaded on the params type (what the backends call).
#define GMFLOW_DECLARE_CUDA_KERNEL(name, Params)                     \
  template <typename T>                                              \
  const char* name(const Params<T>& params, void* stream);           \
  template <typename T>                                              \
  inline const char* run(const Params<T>& params, void* stream) {    \
    return name(params, stream);                                     \
  }

namespace gmflow {
namespace cuda {

GMFLOW_FOR_EACH_KERNEL(GMFLOW_DECLARE_CUDA_KERNEL)

}  // namespace cuda
}  // namespace gmflow
