// CPU registrations of the native ops (loaded as libgmflow_cpu.so).
#include "gm_ops.h"
#include "sampling_ops.h"
#include "gmflow/cpu_kernels.h"

namespace gmflow {
namespace binding {
namespace {

void run_on_torch_pool(int64_t begin, int64_t end, int64_t grain, ParallelFor::Body body, void* context) {
  torch::stable::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { body(b, e, context); });
}

struct CpuBackend {
  struct Scope {
    explicit Scope(const Tensor&) {}
  };
  static ParallelFor pool() {
    ParallelFor pf;
    pf.run = &run_on_torch_pool;
    return pf;
  }
  template <typename T>
  static void launch(const GmLogprobParams<T>& p, const Scope&) {
    cpu::gm_logprob(p, pool());
  }
  template <typename T>
  static void launch(const GmLogprobBackwardParams<T>& p, const Scope&) {
    cpu::gm_logprob_backward(p, pool());
  }
  template <typename T>
  static void launch(const GmToMeanParams<T>& p, const Scope&) {
    cpu::gm_to_mean(p, pool());
  }
  template <typename T>
  static void launch(const GmToMeanBackwardParams<T>& p, const Scope&) {
    cpu::gm_to_mean_backward(p, pool());
  }
  template <typename T>
  static void launch(const GmToIsoGaussianParams<T>& p, const Scope&) {
    cpu::gm_to_iso_gaussian(p, pool());
  }

  static constexpr bool kKrWorkspace = false;
  template <typename T>
  static void launch(const GmMulIsoGaussianParams<T>& p, const Scope&) {
    cpu::gm_mul_iso_gaussian(p, pool());
  }
  template <typename T>
  static void launch(const GmPosteriorMeanParams<T>& p, const Scope&) {
    cpu::gm_posterior_mean(p, pool());
  }
  template <typename T>
  static void launch(const GmPosteriorMeanBackwardParams<T>& p, const Scope&) {
    cpu::gm_posterior_mean_backward(p, pool());
  }
  template <typename T>
  static void launch(const GmSampleParams<T>& p, const Scope&) {
    cpu::gm_sample(p, pool());
  }
  template <typename T>
  static void launch(const Gm1dInverseCdfParams<T>& p, const Scope&) {
    cpu::gm1d_inverse_cdf(p, pool());
  }
  template <typename T>
  static void launch(const Gm1dInverseCdfBackwardParams<T>& p, const Scope&) {
    cpu::gm1d_inverse_cdf_backward(p, pool());
  }
  template <typename T>
  static void launch_kr_inverse(const GmKrParams<T>& p, const Scope&) {
    cpu::gm_kr_inverse(p, pool());
  }
  template <typename T>
  static void launch_kr_forward(const GmKrParams<T>& p, const Scope&) {
    cpu::gm_kr_forward(p, pool());
  }
};

}  // namespace
}  // namespace binding
}  // namespace gmflow

STABLE_TORCH_LIBRARY_IMPL(gmflow, CPU, m) {
  GMFLOW_REGISTER_GM_OPS(m, gmflow::binding::CpuBackend);
  GMFLOW_REGISTER_SAMPLING_OPS(m, gmflow::binding::CpuBackend);
}
