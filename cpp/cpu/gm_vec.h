// CPU building block (torch-free): fp32 lanes in one SIMD register.
//
// The lane-tile kernels (gm_lanes.h) loop over whole 64-lane rows, so every row a k-loop
// updates (a running max, a sum, per-channel accumulators) goes through memory once per k.
// Kernels whose k-loop does little arithmetic per load run faster on a block of lanes held in
// registers for the whole loop. VecF is that block, a GCC/Clang vector as wide as the ISA's
// registers: 16 floats on AVX-512, 8 on AVX2, 4 on the SSE2 baseline (wider vectors than the
// registers make GCC lower the selects lane by lane).
#pragma once

#include <cstdint>
#include <cstring>

#include "gmflow/cpu_kernels.h"
#include "gmflow/gm_math.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))  // GCC and Clang vector extensions, x86
#define GMFLOW_HAVE_VECF 1

#include <immintrin.h>

namespace gmflow {
namespace cpu {
namespace GMFLOW_CPU_ISA {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
typedef float VecF __attribute__((vector_size(kVecBytes)));
typedef int32_t VecI __attribute__((vector_size(kVecBytes)));
constexpr int64_t kVecLanes = kVecBytes / 4;

GMFLOW_ALWAYS_INLINE VecF splat(float x) { return VecF{} + x; }

GMFLOW_ALWAYS_INLINE VecF load_vec(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);  // an unaligned vector load
  return v;
}

GMFLOW_ALWAYS_INLINE void store_vec(float* p, VecF v) { std::memcpy(p, &v, sizeof v); }

// a > b ? a : b lane by lane, one max instruction (x86's max returns b when either is NaN).
GMFLOW_ALWAYS_INLINE VecF max_vec(VecF a, VecF b) {
#if defined(__AVX512F__)
  return _mm512_mask_max_ps(a, 0xffff, a, b);  // _mm512_max_ps trips GCC 12's -Wmaybe-uninitialized
#elif defined(__AVX__)
  return _mm256_max_ps(a, b);
#else
  return _mm_max_ps(a, b);
#endif
}

// exp(x) for x <= 0, e.g. a logit minus the running max of a softmax: fast_exp's (gm_math.h)
// reduction and polynomial coefficients, the polynomial in Estrin's order (a shorter dependency
// chain) and no overflow branch. NaN stays NaN; x below -87.3 (and -inf) gives 0.
GMFLOW_ALWAYS_INLINE VecF exp_nonpositive_vec(VecF x) {
  const VecF lo = splat(-87.3365447504f);
  const VecF xc = max_vec(lo, x);  // a NaN x is returned: it propagates
  const float kRound = 12582912.0f;
  const VecF n = (xc * 1.44269504088896341f + kRound) - kRound;
  const VecF r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const VecF r2 = r * r;
  const VecF p01 = r * 1.6666665459e-1f + 5.0000001201e-1f;
  const VecF p23 = r * 8.3334519073e-3f + 4.1665795894e-2f;
  const VecF p45 = r * 1.9875691500e-4f + 1.3981999507e-3f;
  const VecF p = (p45 * r2 + p23) * r2 + p01;
  const VecI exponent = (__builtin_convertvector(n, VecI) + 127) << 23;
  const VecF result = (p * r2 + r + 1.0f) * (VecF)exponent;  // a same-size vector cast reinterprets the bits
  return x < lo ? splat(0.0f) : result;
}

}  // namespace GMFLOW_CPU_ISA
}  // namespace cpu
}  // namespace gmflow

#endif  // GMFLOW_HAVE_VECF
