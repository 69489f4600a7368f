// Index arithmetic shared by all kernels (torch-free).
//
// Every GM op works on an index space (batch, <op dims>, pixel). The leading
// batch dims of all operands broadcast against each other; the binding flattens
// them into one index b and records, per operand, the stride of each original
// batch dim (0 where the operand is broadcast). Pixels (H*W) are flattened too:
// an operand's pixel stride is 1 (it varies per pixel) or 0 (shared by all).
#pragma once

#include <cstdint>

#include "gmflow/platform.h"

namespace gmflow {

constexpr int kMaxBatchDims = 6;

template <int kOperands>
struct BatchLayout {
  int32_t ndim = 0;
  int64_t sizes[kMaxBatchDims] = {};
  int64_t strides[kOperands][kMaxBatchDims] = {};

  // Element offset of flattened batch index b in every operand.
  GMFLOW_HD void offsets(int64_t b, int64_t (&out)[kOperands]) const {
    if (ndim == 1) {  // the common case needs no division
      for (int t = 0; t < kOperands; ++t) out[t] = b * strides[t][0];
      return;
    }
    for (int t = 0; t < kOperands; ++t) out[t] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t size = sizes[d];
      const int64_t i = b % size;
      b /= size;
      for (int t = 0; t < kOperands; ++t) out[t] += i * strides[t][d];
    }
  }
};

}  // namespace gmflow
