// Host entry points of the CPU kernels (torch-free).
//
// Every kernel source in cpp/cpu/ is compiled twice: for the x86-64 baseline
// (namespace cpu::baseline) and for x86-64-v3, i.e. AVX2 + FMA (cpu::avx2).
// cpp/cpu/dispatch.cpp picks one at run time, so wheels stay portable while
// whole translation units (lambdas included) get the wide instruction set.
#pragma once

#include "gmflow/parallel.h"
#include "gmflow/params.h"

#define GMFLOW_ALWAYS_INLINE inline __attribute__((always_inline))
// On a kernel's per-range entry: inline everything it calls, lambdas included,
// so the whole loop nest is optimised (and vectorised) as one function.
#define GMFLOW_FLATTEN __attribute__((flatten))

#define GMFLOW_DECLARE_CPU_KERNELS                                                                 \
  template <typename T>                                                                            \
  void gm_logprob(const GmLogprobParams<T>& params, const ParallelFor& parallel_for);              \
  template <typename T>                                                                            \
  void gm_logprob_backward(const GmLogprobBackwardParams<T>& params, const ParallelFor& parallel_for); \
  template <typename T>                                                                            \
  void gm_to_mean(const GmToMeanParams<T>& params, const ParallelFor& parallel_for);              \
  template <typename T>                                                                            \
  void gm_to_mean_backward(const GmToMeanBackwardParams<T>& params, const ParallelFor& parallel_for); \
  template <typename T>                                                                            \
  void gm_to_iso_gaussian(const GmToIsoGaussianParams<T>& params, const ParallelFor& parallel_for); \
  template <typename T>                                                                            \
  void gm_mul_iso_gaussian(const GmMulIsoGaussianParams<T>& params, const ParallelFor& parallel_for); \
  template <typename T>                                                                            \
  void gm_posterior_mean(const GmPosteriorMeanParams<T>& params, const ParallelFor& parallel_for);  \
  template <typename T>                                                                            \
  void gm_posterior_mean_backward(const GmPosteriorMeanBackwardParams<T>& params,                  \
                                  const ParallelFor& parallel_for);                                \
  template <typename T>                                                                            \
  void gm_sample(const GmSampleParams<T>& params, const ParallelFor& parallel_for);                \
  template <typename T>                                                                            \
  void gm1d_inverse_cdf(const Gm1dInverseCdfParams<T>& params, const ParallelFor& parallel_for);   \
  template <typename T>                                                                            \
  void gm1d_inverse_cdf_backward(const Gm1dInverseCdfBackwardParams<T>& params,                    \
                                 const ParallelFor& parallel_for);                                 \
  template <typename T>                                                                            \
  void gm_kr_inverse(const GmKrParams<T>& params, const ParallelFor& parallel_for);                \
  template <typename T>                                                                            \
  void gm_kr_forward(const GmKrParams<T>& params, const ParallelFor& parallel_for);

namespace gmflow {
namespace cpu {

GMFLOW_DECLARE_CPU_KERNELS  // dispatching entry points (dispatch.cpp)

namespace baseline {
GMFLOW_DECLARE_CPU_KERNELS
}
namespace avx2 {
GMFLOW_DECLARE_CPU_KERNELS
}

// Name of the instruction set the dispatcher uses on this machine ("avx2" or "baseline").
const char* active_isa();

}  // namespace cpu
}  // namespace gmflow
