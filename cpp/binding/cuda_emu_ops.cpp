// Test-only registrations of the CUDA kernels compiled for the host (cuda/cuda_emulation.cuh):
// CPU tensors in, the emulated CUDA kernels do the work, under torch.ops.gmflow_cuda_emu (the
// schemas are defined from Python by gmflow.testing.load_cuda_emulation). Built with
// GMFLOW_CUDA_EMULATION=ON; never part of a release wheel.
#include "cuda_launches.h"
#include "gm_ops.h"
#include "sampling_ops.h"

namespace gmflow {
namespace binding {
namespace {

struct CudaEmulationBackend : CudaLaunches {
  struct Scope {
    void* stream = nullptr;
    explicit Scope(const Tensor& t) {
      if (!t.is_cpu()) throw std::runtime_error("gmflow: the emulated CUDA kernels take CPU tensors");
    }
  };
};

}  // namespace
}  // namespace binding
}  // namespace gmflow

STABLE_TORCH_LIBRARY_IMPL(gmflow_cuda_emu, CPU, m) {
  GMFLOW_REGISTER_GM_OPS(m, gmflow::binding::CudaEmulationBackend);
  GMFLOW_REGISTER_SAMPLING_OPS(m, gmflow::binding::CudaEmulationBackend);
}
