// Kernel launches of the CUDA backends (the CUDA library and its host emulation): each checks the
// launch error. A backend derives from CudaLaunches and adds its Scope (device guard, stream).
#pragma once

#include <stdexcept>
#include <string>

#include "gmflow/cuda_kernels.h"
#include "gmflow/params.h"

namespace gmflow {
namespace binding {

struct CudaLaunches {
  static constexpr bool kKrWorkspace = true;

  static void check(const char* error) {
    if (error) throw std::runtime_error(std::string("gmflow: CUDA kernel launch failed: ") + error);
  }
  template <typename T, class Scope>
  static void launch(const GmLogprobParams<T>& p, const Scope& s) {
    check(cuda::gm_logprob(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmLogprobBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm_logprob_backward(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmToMeanParams<T>& p, const Scope& s) {
    check(cuda::gm_to_mean(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmToMeanBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm_to_mean_backward(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmToIsoGaussianParams<T>& p, const Scope& s) {
    check(cuda::gm_to_iso_gaussian(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmMulIsoGaussianParams<T>& p, const Scope& s) {
    check(cuda::gm_mul_iso_gaussian(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmPosteriorMeanParams<T>& p, const Scope& s) {
    check(cuda::gm_posterior_mean(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmPosteriorMeanBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm_posterior_mean_backward(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const GmSampleParams<T>& p, const Scope& s) {
    check(cuda::gm_sample(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const Gm1dInverseCdfParams<T>& p, const Scope& s) {
    check(cuda::gm1d_inverse_cdf(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch(const Gm1dInverseCdfBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm1d_inverse_cdf_backward(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch_kr_inverse(const GmKrParams<T>& p, const Scope& s) {
    check(cuda::gm_kr_inverse(p, s.stream));
  }
  template <typename T, class Scope>
  static void launch_kr_forward(const GmKrParams<T>& p, const Scope& s) {
    check(cuda::gm_kr_forward(p, s.stream));
  }
};

}  // namespace binding
}  // namespace gmflow
