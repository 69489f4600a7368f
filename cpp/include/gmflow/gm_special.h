// Normal CDF / quantile and the 1-D GM Newton step, shared by the CPU and CUDA
// kernels of the sampling path (torch-free).
//
// Conventions: the "scaled" normal CDF is erf(z / sqrt 2) = 2 Phi(z) - 1 in [-1, 1]
// (the scaled CDF of docs/ops.md#one-dimensional-mixtures); its inverse is sqrt 2 erfinv(u).
//
// float on the host: branch-free polynomial forms that vectorise inside simd loops
// (coefficients fitted for this library: weighted least squares in double precision
// against scipy's erfcx / erfinv, then checked in float arithmetic):
//   erf(z / sqrt 2) = sign(z) (1 - exp(-z^2 / 2) R(|z|)),  R(y) = erfcx(y / sqrt 2), a
//     degree-11 polynomial on [0, 4 sqrt 2] with R(0) = 1 exactly; max abs error 1.8e-7
//     (torch's own vectorised float erf is within 1.5e-7).
//   erfinv(y) = y P(w), w = -log(1 - y^2): P a degree-9 polynomial in w - 3.125 for
//     w < 6.25 and a degree-7 polynomial in sqrt(w) - 3.3 above; max rel error 2e-7 for
//     every float |y| < 1.
// The 1-D GM pdf and scaled CDF share the exponential: with e_k = exp(lambda_k - z_k^2 / 2),
//   pdf = e^-logstd / sqrt(2 pi) sum_k e_k,   w_k erf(z_k / sqrt 2) = sign(z_k) (w_k - e_k R(|z_k|)),
// so a Newton step costs one exp and one polynomial per component.
// float on the device uses the same polynomial with expf; double uses the libm / CUDA
// erf, erfc, erfinv (the double host quantile refines the polynomial guess by Halley steps).
#pragma once

#include <cmath>

#include "gmflow/gm_math.h"
#include "gmflow/platform.h"

namespace gmflow {

constexpr double kSqrt2 = 1.4142135623730950488016887242097;
constexpr double kInvSqrt2 = 0.70710678118654752440084436210485;
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;
constexpr double kSqrtPi = 1.7724538509055160272981674833411;

// R(y) = erfcx(y / sqrt 2) = exp(y^2 / 2) (1 - erf(y / sqrt 2)) for y >= 0, clamped to
// y <= 4 sqrt 2 (beyond, exp(-y^2 / 2) R(y) < 2e-8: erf is 1 in float).
GMFLOW_HD float erfcx_half(float y) {
  const float yc = y < 5.65685424949238f ? y : 5.65685424949238f;
  float p = -6.475520984428051e-07f;
  p = p * yc + 1.5756363434149545e-05f;
  p = p * yc - 1.7251631363258968e-04f;
  p = p * yc + 1.1419031408944486e-03f;
  p = p * yc - 5.224278099752826e-03f;
  p = p * yc + 1.8092785141885843e-02f;
  p = p * yc - 5.104901369207932e-02f;
  p = p * yc + 1.2392986734722618e-01f;
  p = p * yc - 2.656496776116596e-01f;
  p = p * yc + 4.9995473998238094e-01f;
  p = p * yc - 7.978822851842035e-01f;
  return p * yc + 1.0f;
}

// erf(z / sqrt 2), the scaled normal CDF.
GMFLOW_HD float scaled_normal_cdf(float z) {
  const float y = z < 0.0f ? -z : z;
  const float t = 1.0f - exp_clamped(-0.5f * y * y) * erfcx_half(y);
  return z < 0.0f ? -t : t;
}
GMFLOW_HD double scaled_normal_cdf(double z) { return erf(z * kInvSqrt2); }

// erfinv(y) in float: the two polynomial branches, selected without a branch.
GMFLOW_HD float erfinv_poly(float y) {
  const float w = -fast_log((1.0f - y) * (1.0f + y));
  const float t = w - 3.125f;
  float p = -5.0632539827510925e-09f;
  p = p * t - 8.734236014995567e-09f;
  p = p * t + 4.3565275332710374e-07f;
  p = p * t - 1.5231113397583956e-06f;
  p = p * t - 1.3960001867807052e-05f;
  p = p * t + 1.8725201742883285e-04f;
  p = p * t - 7.405013788825132e-04f;
  p = p * t - 6.034273271684187e-03f;
  p = p * t + 2.4015803743275488e-01f;
  p = p * t + 1.6536546746728458f;
  const float s = sqrtf(w) - 3.3f;
  float q = -2.4856940887749146e-04f;
  q = q * s + 8.529287614770509e-04f;
  q = q * s - 1.4719709221800437e-03f;
  q = q * s + 2.099423030916203e-03f;
  q = q * s - 3.2824361251964085e-03f;
  q = q * s + 4.843971177279749e-03f;
  q = q * s + 1.0057685564755845f;
  q = q * s + 3.1341615230752153f;
  return (w < 6.25f ? p : q) * y;
}

// sqrt 2 erfinv(u): the inverse of scaled_normal_cdf.
GMFLOW_HD float scaled_normal_quantile(float u) {
#if GMFLOW_DEVICE_MATH
  return float(kSqrt2) * erfinvf(u);
#else
  return float(kSqrt2) * erfinv_poly(u);
#endif
}

GMFLOW_HD double scaled_normal_quantile(double u) {
#if GMFLOW_DEVICE_MATH
  return kSqrt2 * erfinv(u);
#else
  // Solve erf(x) = a for a = |u| by Halley steps on f = (1 - a) - erfc(x) (or erf(x) - a for
  // small a), from the float polynomial guess (or the asymptotic one far in the tail).
  const double a = u < 0 ? -u : u;
  if (!(a < 1.0)) return a == 1.0 ? (u < 0 ? -INFINITY : INFINITY) : NAN;
  const double w = -log((1.0 - a) * (1.0 + a));
  double x;
  if (w < 16.0) {
    x = double(erfinv_poly(float(a)));
  } else {  // 1 - a ~ erfc(x) ~ exp(-x^2) / (x sqrt pi)
    x = sqrt(w);
    for (int i = 0; i < 2; ++i) x = sqrt(w + log(2.0 / (x * kSqrtPi)));
  }
  for (int i = 0; i < 3; ++i) {
    const double f = a < 0.5 ? erf(x) - a : (1.0 - a) - erfc(x);
    const double df = 2.0 / kSqrtPi * exp(-x * x);
    x -= f / (df + x * f);
  }
  return kSqrt2 * (u < 0 ? -x : x);
#endif
}

// One component of the 1-D GM at z = (x - mu) / s with logit lambda and weight w = e^lambda:
// pdf_sum += exp(lambda - z^2 / 2), cdf_sum += w erf(z / sqrt 2).
GMFLOW_HD void accumulate_pdf_cdf(float z, float lambda, float w, float& pdf_sum, float& cdf_sum) {
  const uint32_t bits = float_bits(z);
  const float y = bits_float(bits & 0x7fffffffu);  // |z|
  const float e = exp_clamped(lambda - 0.5f * y * y);
  pdf_sum += e;
  const float t = w - e * erfcx_half(y);
  cdf_sum += bits_float(float_bits(t) ^ (bits & 0x80000000u));  // sign(z) t
}
GMFLOW_HD void accumulate_pdf_cdf(double z, double lambda, double w, double& pdf_sum, double& cdf_sum) {
  pdf_sum += exp(lambda - 0.5 * z * z);
  cdf_sum += w * erf(z * kInvSqrt2);
}

// The clamped Newton update of docs/ops.md#gm1d_inverse_cdf: with p = max(pdf, eps),
// delta = clamp((cdf - c) / (2 p), -bound, bound); returns x - delta. NaN propagates.
template <typename A>
GMFLOW_HD A newton_update(A x, A c, A pdf, A cdf, A eps, A bound) {
  const A p = pdf < eps ? eps : pdf;
  A delta = A(0.5) * (cdf - c) / p;
  delta = delta < -bound ? -bound : delta;
  delta = delta > bound ? bound : delta;
  return x - delta;
}

}  // namespace gmflow
