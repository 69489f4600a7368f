// CUDA registrations of the native ops (loaded as libgmflow_cuda.so only when
// torch has CUDA). Compiled by the host compiler: kernels live in cuda/*.cu.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "gm_ops.h"
#include "sampling_ops.h"
#include "gmflow/cuda_kernels.h"

namespace gmflow {
namespace binding {
namespace {

struct CudaBackend {
  // Device guard plus torch's current stream of the operands' device.
  struct Scope {
    torch::stable::accelerator::DeviceGuard guard;
    void* stream = nullptr;
    explicit Scope(const Tensor& t) : guard(t.get_device_index()) {
      if (!t.is_cuda()) throw std::runtime_error("gmflow: CUDA kernel called with a non-CUDA tensor");
      STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == AOTI_TORCH_SUCCESS,
                      "gmflow: could not get the current CUDA stream");
    }
  };
  static void check(const char* error) {
    if (error) throw std::runtime_error(std::string("gmflow: CUDA kernel launch failed: ") + error);
  }
  template <typename T>
  static void launch(const GmLogprobParams<T>& p, const Scope& s) {
    check(cuda::gm_logprob(p, s.stream));
  }
  template <typename T>
  static void launch(const GmLogprobBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm_logprob_backward(p, s.stream));
  }
  template <typename T>
  static void launch(const GmToMeanParams<T>& p, const Scope& s) {
    check(cuda::gm_to_mean(p, s.stream));
  }
  template <typename T>
  static void launch(const GmToMeanBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm_to_mean_backward(p, s.stream));
  }
  template <typename T>
  static void launch(const GmToIsoGaussianParams<T>& p, const Scope& s) {
    check(cuda::gm_to_iso_gaussian(p, s.stream));
  }

  static constexpr bool kKrWorkspace = true;
  template <typename T>
  static void launch(const GmMulIsoGaussianParams<T>& p, const Scope& s) {
    check(cuda::gm_mul_iso_gaussian(p, s.stream));
  }
  template <typename T>
  static void launch(const GmPosteriorMeanParams<T>& p, const Scope& s) {
    check(cuda::gm_posterior_mean(p, s.stream));
  }
  template <typename T>
  static void launch(const GmPosteriorMeanBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm_posterior_mean_backward(p, s.stream));
  }
  template <typename T>
  static void launch(const GmSampleParams<T>& p, const Scope& s) {
    check(cuda::gm_sample(p, s.stream));
  }
  template <typename T>
  static void launch(const Gm1dInverseCdfParams<T>& p, const Scope& s) {
    check(cuda::gm1d_inverse_cdf(p, s.stream));
  }
  template <typename T>
  static void launch(const Gm1dInverseCdfBackwardParams<T>& p, const Scope& s) {
    check(cuda::gm1d_inverse_cdf_backward(p, s.stream));
  }
  template <typename T>
  static void launch_kr_inverse(const GmKrParams<T>& p, const Scope& s) {
    check(cuda::gm_kr_inverse(p, s.stream));
  }
  template <typename T>
  static void launch_kr_forward(const GmKrParams<T>& p, const Scope& s) {
    check(cuda::gm_kr_forward(p, s.stream));
  }
};

}  // namespace
}  // namespace binding
}  // namespace gmflow

STABLE_TORCH_LIBRARY_IMPL(gmflow, CUDA, m) {
  GMFLOW_REGISTER_GM_OPS(m, gmflow::binding::CudaBackend);
  GMFLOW_REGISTER_SAMPLING_OPS(m, gmflow::binding::CudaBackend);
}
