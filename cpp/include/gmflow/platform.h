// Torch-free portability layer shared by the CPU and CUDA kernels: host/device
// qualifiers, 16-bit float storage types and the accumulation-type rule.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GMFLOW_HD __host__ __device__ __forceinline__
#define GMFLOW_DEVICE_CODE 1
#else
#define GMFLOW_HD inline __attribute__((always_inline))
#define GMFLOW_DEVICE_CODE 0
#endif

#define GMFLOW_RESTRICT __restrict__

// The math of CUDA device code (library expf/logf/erfinvf instead of the host polynomials): taken
// by nvcc's device pass and by the host emulation of the CUDA kernels (cuda/cuda_emulation.cuh).
#if (defined(__CUDACC__) && defined(__CUDA_ARCH__)) || defined(GMFLOW_CUDA_EMULATION)
#define GMFLOW_DEVICE_MATH 1
#else
#define GMFLOW_DEVICE_MATH 0
#endif

namespace gmflow {

// Storage-only 16-bit floats. Kernels load them into fp32 and store back with
// round-to-nearest-even; no arithmetic is ever done in 16 bits.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

GMFLOW_HD uint32_t float_bits(float f) {
#if GMFLOW_DEVICE_CODE && defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}

GMFLOW_HD float bits_float(uint32_t u) {
#if GMFLOW_DEVICE_CODE && defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);
#endif
}

GMFLOW_HD float to_float(BFloat16 v) { return bits_float(uint32_t(v.bits) << 16); }

GMFLOW_HD BFloat16 bfloat16_from_float(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((u >> 16) | 0x40u)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{uint16_t(u >> 16)};
}

GMFLOW_HD float to_float(Half v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  uint32_t exp = (v.bits >> 10) & 0x1fu;
  uint32_t mant = v.bits & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal half: renormalise.
    exp = 113;  // 127 - 15 + 1
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    mant &= 0x3ffu;
    return bits_float(sign | (exp << 23) | (mant << 13));
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

GMFLOW_HD Half half_from_float(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return Half{uint16_t(sign | 0x7e00u)};  // NaN
  if (abs >= 0x477ff000u) return Half{uint16_t(sign | 0x7c00u)};  // overflow -> inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in half precision: round the shifted mantissa.
    if (abs < 0x33000000u) return Half{sign};
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // 14..24
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return Half{uint16_t(sign | r)};
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return Half{uint16_t(sign | (r >> 13))};
}

// Accumulation type: fp64 stays fp64, everything else accumulates in fp32.
template <typename T>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccumulateType<T>::type;

GMFLOW_HD float load_acc(const float* p) { return *p; }
GMFLOW_HD double load_acc(const double* p) { return *p; }
GMFLOW_HD float load_acc(const Half* p) { return to_float(*p); }
GMFLOW_HD float load_acc(const BFloat16* p) { return to_float(*p); }

GMFLOW_HD void store_acc(float* p, float v) { *p = v; }
GMFLOW_HD void store_acc(double* p, double v) { *p = v; }
GMFLOW_HD void store_acc(Half* p, float v) { *p = half_from_float(v); }
GMFLOW_HD void store_acc(BFloat16* p, float v) { *p = bfloat16_from_float(v); }

// Element types the binding may pass; used to dispatch without torch headers.
enum class DType : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace gmflow
