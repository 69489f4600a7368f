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
#define GMFLOW_DEFINE_CPU_RUN(name, Params)                          \
  template <typename T>                                             \
  void run(const Params<T>& p, const ParallelFor& pf) {             \
    use_avx2() ? avx2::name(p, pf) : baseline::name(p, pf);         \
  }
#else
#define GMFLOW_DEFINE_CPU_RUN(name, Params)              \
  template <typename T>                                 \
  void run(const Params<T>& p, const ParallelFor& pf) { \
    baseline::name(p, pf);                              \
  }
#endif
GMFLOW_FOR_EACH_KERNEL(GMFLOW_DEFINE_CPU_RUN)

#define GMFLOW_INSTANTIATE_CPU_RUN(name, Params)                                  \
  template void run<float>(const Params<float>&, const ParallelFor&);            \
  template void run<double>(const Params<double>&, const ParallelFor&);          \
  template void run<Half>(const Params<Half>&, const ParallelFor&);              \
  template void run<BFloat16>(const Params<BFloat16>&, const ParallelFor&);
GMFLOW_FOR_EACH_KERNEL(GMFLOW_INSTANTIATE_CPU_RUN)

}  // namespace cpu
}  // namespace gmflow
