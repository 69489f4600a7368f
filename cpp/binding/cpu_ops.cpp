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
  static constexpr bool kKrWorkspace = false;
  // Every kernel of the table (params.h), picked by its params type.
  template <class Params>
  static void launch(const Params& p, const Scope&) {
    cpu::run(p, pool());
  }
};

}  // namespace
}  // namespace binding
}  // namespace gmflow

STABLE_TORCH_LIBRARY_IMPL(gmflow, CPU, m) {
  GMFLOW_REGISTER_GM_OPS(m, gmflow::binding::CpuBackend);
  GMFLOW_REGISTER_SAMPLING_OPS(m, gmflow::binding::CpuBackend);
}
