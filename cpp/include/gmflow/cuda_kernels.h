// Host launchers of the CUDA kernels (defined in cuda/, torch-free). Each
// enqueues on `stream` (a cudaStream_t) and returns nullptr on success or the
// CUDA error string of the launch.
#pragma once

#include "gmflow/params.h"

namespace gmflow {
namespace cuda {

template <typename T>
const char* gm_logprob(const GmLogprobParams<T>& params, void* stream);
template <typename T>
const char* gm_logprob_backward(const GmLogprobBackwardParams<T>& params, void* stream);

template <typename T>
const char* gm_to_mean(const GmToMeanParams<T>& params, void* stream);
template <typename T>
const char* gm_to_mean_backward(const GmToMeanBackwardParams<T>& params, void* stream);

template <typename T>
const char* gm_to_iso_gaussian(const GmToIsoGaussianParams<T>& params, void* stream);

template <typename T>
const char* gm_mul_iso_gaussian(const GmMulIsoGaussianParams<T>& params, void* stream);
template <typename T>
const char* gm_posterior_mean(const GmPosteriorMeanParams<T>& params, void* stream);
template <typename T>
const char* gm_posterior_mean_backward(const GmPosteriorMeanBackwardParams<T>& params, void* stream);
template <typename T>
const char* gm_sample(const GmSampleParams<T>& params, void* stream);

template <typename T>
const char* gm1d_inverse_cdf(const Gm1dInverseCdfParams<T>& params, void* stream);
template <typename T>
const char* gm1d_inverse_cdf_backward(const Gm1dInverseCdfBackwardParams<T>& params, void* stream);
template <typename T>
const char* gm_kr_inverse(const GmKrParams<T>& params, void* stream);
template <typename T>
const char* gm_kr_forward(const GmKrParams<T>& params, void* stream);

}  // namespace cuda
}  // namespace gmflow
