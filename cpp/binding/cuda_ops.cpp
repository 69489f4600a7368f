// CUDA registrations of the native ops (loaded as libgmflow_cuda.so only when
// torch has CUDA). Compiled by the host compiler: kernels live in cuda/*.cu.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "gm_ops.h"
#include "sampling_ops.h"
#include "cuda_launches.h"

namespace gmflow {
namespace binding {
namespace {

struct CudaBackend : CudaLaunches {
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
};

}  // namespace
}  // namespace binding
}  // namespace gmflow

STABLE_TORCH_LIBRARY_IMPL(gmflow, CUDA, m) {
  GMFLOW_REGISTER_GM_OPS(m, gmflow::binding::CudaBackend);
  GMFLOW_REGISTER_SAMPLING_OPS(m, gmflow::binding::CudaBackend);
}
