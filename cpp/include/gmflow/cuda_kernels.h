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

}  // namespace cuda
}  // namespace gmflow
