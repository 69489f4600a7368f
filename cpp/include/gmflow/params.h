// Plain parameter structs the binding fills and the kernels consume (torch-free).
//
// Conventions: index space (b, n | k, c, p) with b the flattened broadcast batch,
// n the sample index, k the mixture component, c the channel and p = h * W + w.
// Input operands carry their own strides (0 where broadcast; pixel stride 1 or 0).
// Outputs are always freshly allocated and contiguous in that index order.
#pragma once

#include <cstdint>

#include "gmflow/layout.h"

namespace gmflow {

// Operand slots of the GM tensors in BatchLayout.
enum GmOperand : int { kMeans = 0, kLogstds = 1, kLogweights = 2, kSamples = 3 };

// The iso Gaussian mixture of one pixel: means (K, C), a log std per component
// (stride 0 when shared) and normalised log weights (K).
template <typename T>
struct GmOperands {
  int64_t batch = 0;  // flattened broadcast batch size
  int64_t K = 0, C = 0, P = 0;
  const T* means = nullptr;
  int64_t means_sk = 0, means_sc = 0;  // pixel stride 1
  const T* logstds = nullptr;
  int64_t logstds_sk = 0, logstds_sp = 0;  // logstds_sp is 0 or 1
  int64_t logstds_k = 1;                   // 1 (shared over components) or K
  const T* logweights = nullptr;
  int64_t logweights_sk = 0;  // pixel stride 1
};

// gm_logprob: log density of samples (batch, N, C, P) under the per-pixel GM.
template <typename T>
struct GmLogprobParams {
  GmOperands<T> gm;
  BatchLayout<4> layout;  // slots: GmOperand
  int64_t N = 0;
  const T* samples = nullptr;
  int64_t samples_sn = 0, samples_sc = 0;  // pixel stride 1
  T* logprob = nullptr;                    // out (batch, N, P)
};

// Gradients of gm_logprob. Any output pointer may be null (not requested).
template <typename T>
struct GmLogprobBackwardParams {
  GmLogprobParams<T> fwd;  // fwd.logprob unused
  const T* grad = nullptr;     // (batch, N, P) contiguous
  const T* logprob = nullptr;  // saved forward output, (batch, N, P) contiguous
  T* grad_means = nullptr;       // (batch, K, C, P)
  T* grad_logstds = nullptr;     // (batch, logstds_k, P), reduced by the binding
  T* grad_logweights = nullptr;  // (batch, K, P)
  T* grad_samples = nullptr;     // (batch, N, C, P)
};

// gm_to_mean: sum_k softmax_k(power * logweights) * means.
template <typename T>
struct GmToMeanParams {
  GmOperands<T> gm;  // logstds unused
  BatchLayout<4> layout;
  double power = 1.0;
  T* mean = nullptr;  // out (batch, C, P)
};

template <typename T>
struct GmToMeanBackwardParams {
  GmToMeanParams<T> fwd;  // fwd.mean unused
  const T* grad = nullptr;  // (batch, C, P) contiguous
  const T* mean = nullptr;  // saved forward output, (batch, C, P) contiguous
  T* grad_means = nullptr;       // (batch, K, C, P), may be null
  T* grad_logweights = nullptr;  // (batch, K, P), may be null
};

// gm_to_iso_gaussian: moment-matched isotropic Gaussian per pixel.
template <typename T>
struct GmToIsoGaussianParams {
  GmOperands<T> gm;
  BatchLayout<4> layout;
  T* mean = nullptr;  // out (batch, C, P)
  T* var = nullptr;   // out (batch, P)
};

}  // namespace gmflow
