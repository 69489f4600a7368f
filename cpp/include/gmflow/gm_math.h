// Per-element math shared by the CPU and CUDA kernels (torch-free).
#pragma once

#include <cmath>

#include "gmflow/platform.h"

namespace gmflow {

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

template <typename T>
GMFLOW_HD T neg_infinity() {
  return T(-INFINITY);
}

// exp(x) with x clamped to [-87.3, 88.37] and no special-value selects: -inf and NaN give
// ~1e-38 (callers propagate NaN through their other operands). On the host a branch-free
// Cody-Waite reduction plus a degree-6 polynomial (max error ~2 ulp on the normal range) whose
// clamps have the shape of the x86 max/min instructions, so it vectorises inside simd loops.
// Device code and fp64 use the library exp.
GMFLOW_HD float exp_clamped(float x) {
#if GMFLOW_DEVICE_MATH
  return expf(x);
#else
  float xc = x > -87.3365447504f ? x : -87.3365447504f;
  xc = xc < 88.3762626647949f ? xc : 88.3762626647949f;
  // Round to nearest with the 1.5*2^23 trick (vectorises without SSE4.1 rounding).
  const float kRound = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
#endif
}
GMFLOW_HD double exp_clamped(double x) { return exp(x); }

// exp() that vectorises on the host: exp_clamped plus exact underflow (-inf -> 0), overflow
// (-> inf) and NaN propagation.
GMFLOW_HD float fast_exp(float x) {
#if GMFLOW_DEVICE_MATH
  return expf(x);
#else
  float result = exp_clamped(x);
  result = x < -87.3365447504f ? 0.0f : result;
  result = x > 88.3762626647949f ? INFINITY : result;
  return x != x ? x : result;
#endif
}

GMFLOW_HD double fast_exp(double x) { return exp(x); }

// log() for normal x > 0 that vectorises on the host (exponent split + Cephes-style
// polynomial on [sqrt(1/2), sqrt(2)), max error ~2 ulp); x = 0 gives -inf, NaN and
// negative x give NaN, +inf gives +inf. Device code uses the library log.
GMFLOW_HD float fast_log(float x) {
#if GMFLOW_DEVICE_MATH
  return logf(x);
#else
  const uint32_t bits = float_bits(x);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xffu) - 126;
  float m = bits_float((bits & 0x007fffffu) | 0x3f000000u);  // mantissa in [0.5, 1)
  const bool small = m < 0.70710678118654752f;
  e = small ? e - 1 : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  const float y = m * z * p - 2.12194440e-4f * fe - 0.5f * z;
  float result = (m + y) + 0.693359375f * fe;
  result = x == 0.0f ? -INFINITY : result;
  result = x == INFINITY ? x : result;
  return (x < 0.0f || x != x) ? NAN : result;
#endif
}
GMFLOW_HD double fast_log(double x) { return log(x); }

// max + log(sum), where max = -inf means "no finite term": -inf, or NaN if a NaN was summed.
template <typename A>
GMFLOW_HD A lse_result(A max_value, A sum) {
  const A empty = sum == A(0) ? max_value : sum;
  return max_value == neg_infinity<A>() ? empty : max_value + fast_log(sum);
}

// Online logsumexp with a single exp per pushed value.
template <typename A>
struct OnlineLogSumExp {
  A max_value = neg_infinity<A>();
  A sum = A(0);

  GMFLOW_HD void push(A a) {
    if (a == neg_infinity<A>()) return;  // zero-weight term: contributes nothing
    if (a <= max_value) {
      sum += fast_exp(a - max_value);
    } else {  // also taken for NaN, which then propagates
      sum = sum * fast_exp(max_value - a) + A(1);
      max_value = a;
    }
  }

  // Merge a block whose maximum is block_max and sum of exp(a - block_max) is block_sum.
  GMFLOW_HD void merge(A block_max, A block_sum) {
    if (block_max == neg_infinity<A>()) {
      sum += block_sum;  // 0, or NaN from a NaN input
      return;
    }
    if (block_max <= max_value) {
      sum += block_sum * fast_exp(block_max - max_value);
    } else {
      sum = sum * fast_exp(max_value - block_max) + block_sum;
      max_value = block_max;
    }
  }

  GMFLOW_HD A result() const { return lse_result(max_value, sum); }
};

// Categorical inverse-CDF draw over the components visited in order k = 0, 1, ...: the first k
// whose cumulative weight exceeds target = u * (sum of the weights), u in [0, 1); when rounding
// leaves none (u close to 1), the last component of positive weight.
template <typename A>
struct CategoricalDraw {
  A target = A(0), cum = A(0);
  int64_t chosen = -1, last = 0;

  GMFLOW_HD void push(int64_t k, A weight) {
    cum += weight;
    chosen = (chosen < 0 && target < cum) ? k : chosen;
    last = weight > A(0) ? k : last;
  }
  GMFLOW_HD int64_t result() const { return chosen < 0 ? last : chosen; }
};

// exp(a - lse) with the all-zero-weight convention: a pixel whose log density is
// -inf has no responsibilities (instead of 0 * inf = NaN gradients).
template <typename A>
GMFLOW_HD A responsibility(A a, A lse) {
  return lse == neg_infinity<A>() ? A(0) : fast_exp(a - lse);
}

// One GM-ODE sub-step from sigma to sigma_next of a state whose x0-GM was predicted at
// (x_src, sigma_src): the posterior-mean coefficients (both sigmas clamped at eps)
// zeta = (a / s)^2 - (a_src / s_src)^2, nu = c_tgt x - c_src x_src (c = a / s^2, a = 1 - s), and the
// Euler step x' = x0 + ratio (x - x0), ratio = sigma_next / max(sigma, eps), which is
// x + (x - x0) / sigma (sigma_next - sigma) and returns x0 exactly at sigma_next = 0.
template <typename A>
struct OdeSubstep {
  A zeta, c_src, c_tgt, ratio;
};

template <typename A>
GMFLOW_HD OdeSubstep<A> ode_substep(A sigma_src, A sigma, A sigma_next, A eps) {
  const A ss = sigma_src < eps ? eps : sigma_src;  // NaN stays NaN
  const A st = sigma < eps ? eps : sigma;
  const A as = A(1) - ss, at = A(1) - st;
  OdeSubstep<A> o;
  o.zeta = (at / st) * (at / st) - (as / ss) * (as / ss);
  o.c_src = as / (ss * ss);
  o.c_tgt = at / (st * st);
  o.ratio = sigma_next / st;
  return o;
}

}  // namespace gmflow
