// Plain parameter structs the binding fills and the kernels consume (torch-free).
//
// Conventions: index space (b, n | k, c, p) with b the flattened broadcast batch,
// n the sample index, k the mixture component, c the channel and p = h * W + w.
// Input operands carry their own strides (0 where broadcast; pixel stride 1 or 0).
// Outputs are always freshly allocated and contiguous in that index order.
#pragma once

#include <cstdint>

#include "gmflow/layout.h"
#include "gmflow/platform.h"

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

// ---------------------------------------------------------------------------------------------
// Sampling path. Operand slots in the layouts: the GM tensors first (GmOperand), then the op's
// own operands in the order listed. Pointers typed acc_t<T> hold tensors that the binding
// requires in the accumulation dtype (rotations and random numbers: float32 for 16-bit data).

// gm_mul_iso_gaussian: every component times N(gaussian_mean, gaussian_var)^ratio, renormalised.
template <typename T>
struct GmMulIsoGaussianParams {
  GmOperands<T> gm;
  BatchLayout<5> layout;  // + gaussian_mean, gaussian_var
  const T* gaussian_mean = nullptr;
  int64_t gaussian_mean_sc = 0;  // pixel stride 1
  const T* gaussian_var = nullptr;
  int64_t gaussian_var_sp = 0;  // 0 or 1
  double ratio = 1.0;           // gaussian_power / gm_power
  double eps = 1e-6;
  T* out_means = nullptr;         // (batch, K, C, P)
  T* out_logstds = nullptr;       // (batch, logstds_k, out_logstds_p)
  int64_t out_logstds_p = 1;      // P (per-pixel std or variance) or 1
  T* out_logweights = nullptr;    // (batch, K, P)
};

// gm_posterior_mean: E[x0 | x_tgt] of an x0-GM predicted at (x_src, sigma_src).
template <typename T>
struct GmPosteriorMeanParams {
  GmOperands<T> gm;
  BatchLayout<7> layout;  // + x_src, x_tgt, sigma_src, sigma_tgt
  const T* x_src = nullptr;
  int64_t x_src_sc = 0;  // pixel stride 1
  const T* x_tgt = nullptr;
  int64_t x_tgt_sc = 0;
  const acc_t<T>* sigma_src = nullptr;  // one value per batch index
  const acc_t<T>* sigma_tgt = nullptr;
  double eps = 1e-6;
  T* mean = nullptr;  // out (batch, C, P)
};

template <typename T>
struct GmPosteriorMeanBackwardParams {
  GmPosteriorMeanParams<T> fwd;  // fwd.mean unused
  const T* grad = nullptr;       // (batch, C, P) contiguous
  const T* mean = nullptr;       // saved forward output, (batch, C, P) contiguous
  T* grad_means = nullptr;       // (batch, K, C, P), may be null
  T* grad_logstds = nullptr;     // (batch, logstds_k, P), reduced by the binding; may be null
  T* grad_logweights = nullptr;  // (batch, K, P), may be null
};

// gm_ode_euler_substeps: S Euler sub-steps of the GM-ODE from (x_src, sigmas[0]), each with the
// posterior mean of the x0-GM at the current state (GM as gm_posterior_mean, x_src its source).
template <typename T>
struct GmOdeEulerSubstepsParams {
  GmOperands<T> gm;
  BatchLayout<5> layout;  // + x_src, sigmas (its batch dims: sigmas[0])
  const T* x_src = nullptr;
  int64_t x_src_sc = 0;              // pixel stride 1
  const acc_t<T>* sigmas = nullptr;  // sigma of sub-step j at j * sigmas_sj + batch offset
  int64_t sigmas_sj = 0;
  int64_t S = 1;  // sub-steps: S + 1 sigmas
  double eps = 1e-6;
  T* out = nullptr;  // (batch, C, P): the state after S sub-steps
};

template <typename T>
struct GmOdeEulerSubstepsBackwardParams {
  GmOdeEulerSubstepsParams<T> fwd;  // fwd.out unused
  const T* grad = nullptr;     // (batch, C, P) contiguous
  T* grad_means = nullptr;       // (batch, K, C, P), may be null
  T* grad_logstds = nullptr;     // (batch, logstds_k, P), reduced by the binding; may be null
  T* grad_logweights = nullptr;  // (batch, K, P), may be null
};

// A 1-D Gaussian mixture per element: means/logweights (K, P) per batch index, one std.
template <typename T>
struct Gm1dOperands {
  int64_t batch = 0, K = 0, P = 0;
  const T* means = nullptr;
  int64_t means_sk = 0;  // pixel stride 1
  const T* logstds = nullptr;
  const T* logweights = nullptr;
  int64_t logweights_sk = 0;  // pixel stride 1
};

// gm1d_inverse_cdf: root of scaled_cdf(x) = c by n_steps clamped Newton steps.
template <typename T>
struct Gm1dInverseCdfParams {
  Gm1dOperands<T> gm;
  BatchLayout<5> layout;  // means, logstds, logweights, scaled_cdfs, gaussian_samples
  int64_t N = 0;
  const T* scaled_cdfs = nullptr;
  int64_t scaled_cdfs_sn = 0;          // pixel stride 1
  const T* gaussian_samples = nullptr;  // may be null: sqrt 2 erfinv(clamp(c)) then
  int64_t gaussian_samples_sn = 0;
  int64_t n_steps = 8;
  double eps = 1e-6, max_step_size = 1.5;
  T* samples = nullptr;  // out (batch, N, P)
};

template <typename T>
struct Gm1dInverseCdfBackwardParams {
  Gm1dInverseCdfParams<T> fwd;  // fwd.gaussian_samples and fwd.samples unused
  const T* grad = nullptr;      // (batch, N, P) contiguous
  const T* samples = nullptr;   // the forward roots, (batch, N, P) contiguous
  T* grad_means = nullptr;        // (batch, K, P)
  T* grad_logstds = nullptr;      // (batch, P), summed over pixels by the binding
  T* grad_logweights = nullptr;   // (batch, K, P)
  T* grad_scaled_cdfs = nullptr;  // (batch, N, P)
};

// gm_kr_inverse / gm_kr_forward: Knothe-Rosenblatt transport for a given rotation V.
template <typename T>
struct GmKrParams {
  GmOperands<T> gm;       // shared std (logstds_k == 1, logstds_sp == 0)
  BatchLayout<6> layout;  // + samples, rotation, uniforms
  int64_t N = 0, n_axes = 0;
  const T* samples = nullptr;  // inverse: standard normals (rotated basis); forward: GM samples
  int64_t samples_sn = 0, samples_sc = 0;  // pixel stride 1
  const acc_t<T>* rotation = nullptr;      // V[c][a] at c * rotation_sc + a * rotation_sa
  int64_t rotation_sp = 0, rotation_sc = 0, rotation_sa = 0;  // rotation_sp: 0 or the pixel stride
  const acc_t<T>* uniforms = nullptr;  // inverse with n_axes < C: (batch, N, P) component draws
  int64_t uniforms_sn = 0;             // pixel stride 1
  int64_t n_steps = 16;
  double eps = 1e-6, max_step_size = 1.5;
  T* out = nullptr;                  // inverse: (batch, N, C, P); forward: (batch, N, n_axes, P)
  acc_t<T>* workspace = nullptr;     // CUDA only: kr_workspace_slots(K, C) * items values
};

// The two KR kernels share their parameters; distinct types name each kernel (the kernel table below).
template <typename T>
struct GmKrInverseParams : GmKrParams<T> {};
template <typename T>
struct GmKrForwardParams : GmKrParams<T> {};

// Per-item scratch values of the CUDA KR kernels (rotated means, conditional sums, coordinates).
inline int64_t kr_workspace_slots(int64_t K, int64_t C) { return K * C + K + C; }

// gm_sample: ancestral samples from given uniforms (component) and normals (noise).
template <typename T>
struct GmSampleParams {
  GmOperands<T> gm;
  BatchLayout<5> layout;  // + uniforms, normals
  int64_t N = 0;
  const acc_t<T>* uniforms = nullptr;  // (batch, N, P) pixel stride 1
  int64_t uniforms_sn = 0;
  const acc_t<T>* normals = nullptr;  // (batch, N, C, P) pixel stride 1
  int64_t normals_sn = 0, normals_sc = 0;
  double power = 1.0;
  bool cov_sharpen = false;
  T* out = nullptr;  // (batch, N, C, P)
};

// ---------------------------------------------------------------------------------------------
// The kernel table: every native kernel, by name and params struct. A kernel is identified by its
// params type, so the declarations (cpu_kernels.h, cuda_kernels.h), the CPU instruction-set
// dispatch and every backend's launch are generated from this one list: a new kernel is its params
// struct above, one line here, its CPU loop and its CUDA kernel.
#define GMFLOW_FOR_EACH_KERNEL(X)                             \
  X(gm_logprob, GmLogprobParams)                              \
  X(gm_logprob_backward, GmLogprobBackwardParams)             \
  X(gm_to_mean, GmToMeanParams)                               \
  X(gm_to_mean_backward, GmToMeanBackwardParams)              \
  X(gm_to_iso_gaussian, GmToIsoGaussianParams)                \
  X(gm_mul_iso_gaussian, GmMulIsoGaussianParams)              \
  X(gm_posterior_mean, GmPosteriorMeanParams)                 \
  X(gm_posterior_mean_backward, GmPosteriorMeanBackwardParams) \
  X(gm_ode_euler_substeps, GmOdeEulerSubstepsParams)                     \
  X(gm_ode_euler_substeps_backward, GmOdeEulerSubstepsBackwardParams)   \
  X(gm_sample, GmSampleParams)                                \
  X(gm1d_inverse_cdf, Gm1dInverseCdfParams)                   \
  X(gm1d_inverse_cdf_backward, Gm1dInverseCdfBackwardParams)  \
  X(gm_kr_inverse, GmKrInverseParams)                         \
  X(gm_kr_forward, GmKrForwardParams)

}  // namespace gmflow
