// Run-time choice between the baseline and AVX2 builds of the CPU kernels.
#include "gmflow/cpu_kernels.h"

namespace gmflow {
namespace cpu {
namespace {

bool use_avx2() {
#if defined(GMFLOW_HAVE_AVX2_BUILD) && defined(__x86_64__) && defined(__GNUC__)
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return supported;
#else
  return false;
#endif
}

}  // namespace

const char* active_isa() { return use_avx2() ? "avx2" : "baseline"; }

#if defined(GMFLOW_HAVE_AVX2_BUILD)
#define GMFLOW_CPU_CALL(name, params, pf) (use_avx2() ? avx2::name(params, pf) : baseline::name(params, pf))
#else
#define GMFLOW_CPU_CALL(name, params, pf) baseline::name(params, pf)
#endif

template <typename T>
void gm_logprob(const GmLogprobParams<T>& p, const ParallelFor& pf) {
  GMFLOW_CPU_CALL(gm_logprob, p, pf);
}
template <typename T>
void gm_logprob_backward(const GmLogprobBackwardParams<T>& p, const ParallelFor& pf) {
  GMFLOW_CPU_CALL(gm_logprob_backward, p, pf);
}
template <typename T>
void gm_to_mean(const GmToMeanParams<T>& p, const ParallelFor& pf) {
  GMFLOW_CPU_CALL(gm_to_mean, p, pf);
}
template <typename T>
void gm_to_mean_backward(const GmToMeanBackwardParams<T>& p, const ParallelFor& pf) {
  GMFLOW_CPU_CALL(gm_to_mean_backward, p, pf);
}
template <typename T>
void gm_to_iso_gaussian(const GmToIsoGaussianParams<T>& p, const ParallelFor& pf) {
  GMFLOW_CPU_CALL(gm_to_iso_gaussian, p, pf);
}

#define GMFLOW_CPU_FORWARD(name, Params)                \
  template <typename T>                                 \
  void name(const Params<T>& p, const ParallelFor& pf) { \
    GMFLOW_CPU_CALL(name, p, pf);                       \
  }
GMFLOW_CPU_FORWARD(gm_mul_iso_gaussian, GmMulIsoGaussianParams)
GMFLOW_CPU_FORWARD(gm_posterior_mean, GmPosteriorMeanParams)
GMFLOW_CPU_FORWARD(gm_posterior_mean_backward, GmPosteriorMeanBackwardParams)
GMFLOW_CPU_FORWARD(gm_sample, GmSampleParams)
GMFLOW_CPU_FORWARD(gm1d_inverse_cdf, Gm1dInverseCdfParams)
GMFLOW_CPU_FORWARD(gm1d_inverse_cdf_backward, Gm1dInverseCdfBackwardParams)
GMFLOW_CPU_FORWARD(gm_kr_inverse, GmKrParams)
GMFLOW_CPU_FORWARD(gm_kr_forward, GmKrParams)

#define GMFLOW_INSTANTIATE(T)                                                                  \
  template void gm_logprob<T>(const GmLogprobParams<T>&, const ParallelFor&);                 \
  template void gm_logprob_backward<T>(const GmLogprobBackwardParams<T>&, const ParallelFor&); \
  template void gm_to_mean<T>(const GmToMeanParams<T>&, const ParallelFor&);                  \
  template void gm_to_mean_backward<T>(const GmToMeanBackwardParams<T>&, const ParallelFor&); \
  template void gm_to_iso_gaussian<T>(const GmToIsoGaussianParams<T>&, const ParallelFor&);          \
  template void gm_mul_iso_gaussian<T>(const GmMulIsoGaussianParams<T>&, const ParallelFor&);        \
  template void gm_posterior_mean<T>(const GmPosteriorMeanParams<T>&, const ParallelFor&);           \
  template void gm_posterior_mean_backward<T>(const GmPosteriorMeanBackwardParams<T>&, const ParallelFor&); \
  template void gm_sample<T>(const GmSampleParams<T>&, const ParallelFor&);                          \
  template void gm1d_inverse_cdf<T>(const Gm1dInverseCdfParams<T>&, const ParallelFor&);             \
  template void gm1d_inverse_cdf_backward<T>(const Gm1dInverseCdfBackwardParams<T>&, const ParallelFor&); \
  template void gm_kr_inverse<T>(const GmKrParams<T>&, const ParallelFor&);                          \
  template void gm_kr_forward<T>(const GmKrParams<T>&, const ParallelFor&);

GMFLOW_INSTANTIATE(float)
GMFLOW_INSTANTIATE(double)
GMFLOW_INSTANTIATE(Half)
GMFLOW_INSTANTIATE(BFloat16)

}  // namespace cpu
}  // namespace gmflow
