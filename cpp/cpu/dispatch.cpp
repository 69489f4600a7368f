// Run-time choice between the baseline, AVX2 and AVX-512 builds of the CPU kernels.
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "gmflow/cpu_kernels.h"

namespace gmflow {
namespace cpu {
namespace {

enum class Isa { baseline, avx2, avx512 };

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

Isa best_supported_isa() {
#if defined(GMFLOW_HAVE_X86_ISA_BUILDS) && defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // The x86-64-v4 feature set the avx512 build is compiled for.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::baseline;
}

// GMFLOW_CPU_ISA=baseline|avx2|avx512 caps the choice (benchmarks compare ISAs in one build);
// a higher ISA than the machine has, or any other value, leaves the best supported one.
Isa chosen_isa() {
  static const Isa chosen = [] {
    const Isa best = best_supported_isa();
    const char* cap = std::getenv("GMFLOW_CPU_ISA");
    if (cap == nullptr) return best;
    for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512})
      if (std::strcmp(cap, isa_name(isa)) == 0 && isa < best) return isa;
    return best;
  }();
  return chosen;
}

}  // namespace

const char* active_isa() { return isa_name(chosen_isa()); }

#if defined(GMFLOW_HAVE_X86_ISA_BUILDS)
#define GMFLOW_DEFINE_CPU_RUN(name, Params)                  \
  template <typename T>                                     \
  void run(const Params<T>& p, const ParallelFor& pf) {     \
    switch (chosen_isa()) {                                 \
      case Isa::avx512: return avx512::name(p, pf);         \
      case Isa::avx2: return avx2::name(p, pf);             \
      default: return baseline::name(p, pf);                \
    }                                                       \
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

// For gmflow.info (read through ctypes): which build the dispatcher runs.
extern "C" __attribute__((visibility("default"))) const char* gmflow_cpu_active_isa() {
  return gmflow::cpu::active_isa();
}
