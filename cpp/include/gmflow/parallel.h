// A torch-free handle on the host thread pool. The binding fills `run` with
// torch's parallel_for, so CPU kernels honour torch.set_num_threads without
// linking torch or starting an OpenMP runtime of their own.
#pragma once

#include <cstdint>

namespace gmflow {

struct ParallelFor {
  using Body = void (*)(int64_t begin, int64_t end, void* context);
  void (*run)(int64_t begin, int64_t end, int64_t grain_size, Body body, void* context) = nullptr;

  template <class F>
  void operator()(int64_t begin, int64_t end, int64_t grain_size, const F& f) const {
    if (begin >= end) return;
    run(
        begin, end, grain_size,
        [](int64_t b, int64_t e, void* context) { (*static_cast<const F*>(context))(b, e); },
        const_cast<void*>(static_cast<const void*>(&f)));
  }
};

// Grain size so that each task touches roughly `target_work` inner iterations.
inline int64_t grain_for(int64_t work_per_item, int64_t target_work = 16384) {
  const int64_t g = target_work / (work_per_item > 0 ? work_per_item : 1);
  return g > 0 ? g : 1;
}

}  // namespace gmflow
