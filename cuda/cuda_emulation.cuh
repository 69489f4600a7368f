// Host emulation of the CUDA surface used by cuda/*.cu, so that the same kernel sources compile
// with the host C++ compiler (GMFLOW_CUDA_EMULATION) and launch_grid runs every block and thread
// of a launch on the CPU, one after the other. Test-only: it builds libgmflow_cuda_emu.so, which
// is never installed into a release wheel. The kernels use no shared memory, warp intrinsics or
// atomics, so a sequential run of the threads is one of the schedules the GPU may pick.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#define GMFLOW_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Launch state of the thread being emulated.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidValue = 1,
};

inline thread_local cudaError_t gmflow_emulated_last_error = cudaSuccess;

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = gmflow_emulated_last_error;
  gmflow_emulated_last_error = cudaSuccess;
  return e;
}

inline cudaError_t cudaPeekAtLastError() { return gmflow_emulated_last_error; }

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    default:
      return "invalid argument";
  }
}

// Device intrinsics and math functions, as exact host equivalents.
inline uint32_t __float_as_uint(float f) { return __builtin_bit_cast(uint32_t, f); }
inline float __uint_as_float(uint32_t u) { return __builtin_bit_cast(float, u); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

// erfinv is a CUDA math function without a host libm counterpart: an initial guess refined by
// Halley steps on erf (erfc in the tail), to double rounding.
inline double erfinv(double y) {
  const double a = y < 0 ? -y : y;
  if (!(a < 1.0)) return a == 1.0 ? (y < 0 ? -INFINITY : INFINITY) : NAN;
  if (a == 0.0) return y;
  // Closed-form guess with relative error below 2e-3 on (0, 1).
  const double kA = 0.147, kTwoOverPiA = 2.0 / (3.14159265358979323846 * kA);
  const double l = log((1.0 - a) * (1.0 + a));
  const double t = kTwoOverPiA + 0.5 * l;
  double x = sqrt(sqrt(t * t - l / kA) - t);
  const double kTwoOverSqrtPi = 1.1283791670955125738961589031215;
  for (int i = 0; i < 4; ++i) {
    const double f = a < 0.5 ? erf(x) - a : (1.0 - a) - erfc(x);
    const double df = kTwoOverSqrtPi * exp(-x * x);
    x -= f / (df + x * f);
  }
  return y < 0 ? -x : x;
}
inline float erfinvf(float y) { return static_cast<float>(erfinv(static_cast<double>(y))); }

namespace gmflow {
namespace cuda_emulation {

// GMFLOW_CUDA_EMU_GRID="BLOCKSxTHREADS" (e.g. "3x37") replaces the launch configuration of every
// kernel, so tests can run grid-stride loops on grids smaller or odder than the production one.
// Unset, empty or "production": the configuration launch_grid computes.
inline bool grid_override(dim3& grid, dim3& block) {
  const char* s = std::getenv("GMFLOW_CUDA_EMU_GRID");
  if (!s || !*s || std::strcmp(s, "production") == 0) return false;
  char* end = nullptr;
  const unsigned long blocks = std::strtoul(s, &end, 10);
  const char* rest = end + 1;
  const unsigned long threads = (end == s || (*end != 'x' && *end != 'X')) ? 0 : std::strtoul(rest, &end, 10);
  if (threads == 0 || end == rest || *end) {  // unparsable: launched as an invalid (empty) grid
    grid = dim3(0);
    return true;
  }
  grid = dim3(static_cast<unsigned>(blocks));
  block = dim3(static_cast<unsigned>(threads));
  return true;
}

// Runs body() once per thread of every block, with the launch state set; a configuration the
// device would reject (an empty grid or block, more threads than the kernel's launch bounds) sets
// the launch error instead, as cudaGetLastError reports it after a failed launch.
template <class Body>
void launch(dim3 grid, dim3 block, unsigned max_threads_per_block, Body&& body) {
  grid_override(grid, block);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > max_threads_per_block) {
    gmflow_emulated_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              threadIdx = uint3{tx, ty, tz};
              body();
            }
      }
}

}  // namespace cuda_emulation
}  // namespace gmflow
