// Host entry points of the CPU kernels (torch-free), generated from the kernel table (params.h).
//
// Every kernel source in cpp/cpu/ is compiled three times: for the x86-64 baseline
// (namespace cpu::baseline), for x86-64-v3, i.e. AVX2 + FMA (cpu::avx2), and for
// x86-64-v4, i.e. AVX-512 (cpu::avx512).
// cpp/cpu/dispatch.cpp picks one at run time, so wheels stay portable while
// whole translation units (lambdas included) get the wide instruction set.
#pragma once

#include "gmflow/parallel.h"
#include "gmflow/params.h"

#define GMFLOW_ALWAYS_INLINE inline __attribute__((always_inline))
// On a kernel's per-range entry: inline everything it calls, lambdas included,
// so the whole loop nest is optimised (and vectorised) as one function.
#define GMFLOW_FLATTEN __attribute__((flatten))
// A flattened loop nest of its own, kept out of its caller (which would grow past what GCC
// allocates registers well for when it holds several such nests).
#define GMFLOW_SEPARATE_NEST __attribute__((noinline, flatten))

// The per-ISA kernel, named as in the table (defined in its cpp/cpu/<family>.cpp).
#define GMFLOW_DECLARE_CPU_KERNEL(name, Params) \
  template <typename T>                         \
  void name(const Params<T>& params, const ParallelFor& parallel_for);
// The dispatching entry point, overloaded on the params type (defined in dispatch.cpp).
#define GMFLOW_DECLARE_CPU_RUN(name, Params) \
  template <typename T>                      \
  void run(const Params<T>& params, const ParallelFor& parallel_for);

namespace gmflow {
namespace cpu {

GMFLOW_FOR_EACH_KERNEL(GMFLOW_DECLARE_CPU_RUN)

namespace baseline {
GMFLOW_FOR_EACH_KERNEL(GMFLOW_DECLARE_CPU_KERNEL)
}
namespace avx2 {
GMFLOW_FOR_EACH_KERNEL(GMFLOW_DECLARE_CPU_KERNEL)
}
namespace avx512 {
GMFLOW_FOR_EACH_KERNEL(GMFLOW_DECLARE_CPU_KERNEL)
}

// Name of the instruction set the dispatcher uses on this machine ("avx512", "avx2" or
// "baseline"); GMFLOW_CPU_ISA caps it.
const char* active_isa();

}  // namespace cpu
}  // namespace gmflow
