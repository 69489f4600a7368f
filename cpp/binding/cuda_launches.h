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
  // Every kernel of the table (params.h), picked by its params type.
  template <class Params, class Scope>
  static void launch(const Params& p, const Scope& s) {
    check(cuda::run(p, s.stream));
  }
};

}  // namespace binding
}  // namespace gmflow
