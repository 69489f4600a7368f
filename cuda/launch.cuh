// Launch helpers shared by the .cu files (torch-free).
#pragma once

#if defined(GMFLOW_CUDA_EMULATION)
#include "cuda_emulation.cuh"
#else
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "gmflow/layout.h"
#include "gmflow/params.h"
#include "gmflow/platform.h"

namespace gmflow {
namespace cuda {

constexpr int kThreads = 256;

// Grid for a grid-stride loop over `items` (64-bit) elements.
inline dim3 grid_for(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(blocks < 1048576 ? (blocks > 0 ? blocks : 1) : 1048576));
}

inline const char* launch_status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Launches kernel(prm) with one thread per item (grid-stride loop) on `stream`; the error
// string of the launch, or null. The one launch point of every kernel: emulated, it runs the
// whole grid on the calling CPU thread.
template <typename Params, typename Kernel>
const char* launch_grid(const Params& prm, int64_t items, Kernel kernel, void* stream) {
#if defined(GMFLOW_CUDA_EMULATION)
  (void)stream;
  cuda_emulation::launch(grid_for(items), dim3(kThreads), kThreads, [&] { kernel(prm); });
#else
  kernel<<<grid_for(items), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(prm);
#endif
  return launch_status();
}

// Pointers of one GM operand set moved to (batch b, pixel p).
template <typename T>
struct PixelGmRef {
  const T* means;
  const T* logstds;
  const T* logweights;
  int64_t means_sk, means_sc, logstds_sk, logweights_sk;
};

template <typename T>
__device__ __forceinline__ PixelGmRef<T> pixel_gm(const GmOperands<T>& gm, const int64_t (&off)[4], int64_t p) {
  return PixelGmRef<T>{gm.means + off[kMeans] + p,
                       gm.logstds + off[kLogstds] + p * gm.logstds_sp,
                       gm.logweights + off[kLogweights] + p,
                       gm.means_sk,
                       gm.means_sc,
                       gm.logstds_k == 1 ? 0 : gm.logstds_sk,
                       gm.logweights_sk};
}

#define GMFLOW_GRID_STRIDE_LOOP(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

}  // namespace cuda
}  // namespace gmflow
