// CUDA kernels of gm_to_mean (+ backward) and gm_to_iso_gaussian (torch-free).
// One thread per (batch, pixel); formulas as in cpp/cpu/gm_moments.cpp.
#include "gmflow/cuda_kernels.h"
#include "gmflow/gm_math.h"
#include "launch.cuh"

namespace gmflow {
namespace cuda {
namespace {

// max_k(power * logweight_k) and sum_k exp(power * logweight_k - max).
template <typename T, typename A>
__device__ __forceinline__ void softmax_stats(const PixelGmRef<T>& g, int64_t K, A power, A& max_value, A& sum) {
  A m = neg_infinity<A>();
  for (int64_t k = 0; k < K; ++k) m = fmax(m, power * load_acc(g.logweights + k * g.logweights_sk));
  A s = A(0);
  for (int64_t k = 0; k < K; ++k) s += fast_exp(power * load_acc(g.logweights + k * g.logweights_sk) - m);
  max_value = m;
  sum = s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) to_mean_kernel(const GmToMeanParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const A power = A(prm.power);
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * gm.P) {
    const int64_t p = item % gm.P, b = item / gm.P;
    int64_t off[4];
    prm.layout.offsets(b, off);
    const PixelGmRef<T> g = pixel_gm(gm, off, p);
    A m, s;
    softmax_stats(g, gm.K, power, m, s);
    const A inv_sum = A(1) / s;
    for (int64_t c = 0; c < gm.C; ++c) {
      A acc = A(0);
      for (int64_t k = 0; k < gm.K; ++k) {
        const A w = fast_exp(power * load_acc(g.logweights + k * g.logweights_sk) - m);
        acc += w * load_acc(g.means + k * g.means_sk + c * g.means_sc);
      }
      store_acc(prm.mean + (b * gm.C + c) * gm.P + p, acc * inv_sum);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) to_mean_backward_kernel(const GmToMeanBackwardParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.fwd.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  const A power = A(prm.fwd.power);
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    int64_t off[4];
    prm.fwd.layout.offsets(b, off);
    const PixelGmRef<T> g = pixel_gm(gm, off, p);
    A m, s;
    softmax_stats(g, K, power, m, s);
    const A inv_sum = A(1) / s;
    for (int64_t k = 0; k < K; ++k) {
      const A w = fast_exp(power * load_acc(g.logweights + k * g.logweights_sk) - m) * inv_sum;
      A dot = A(0);
      for (int64_t c = 0; c < C; ++c) {
        const A gc = load_acc(prm.grad + (b * C + c) * P + p);
        dot += gc * (load_acc(g.means + k * g.means_sk + c * g.means_sc) - load_acc(prm.mean + (b * C + c) * P + p));
        if (prm.grad_means) store_acc(prm.grad_means + ((b * K + k) * C + c) * P + p, gc * w);
      }
      if (prm.grad_logweights) store_acc(prm.grad_logweights + (b * K + k) * P + p, power * w * dot);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) to_iso_gaussian_kernel(const GmToIsoGaussianParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    int64_t off[4];
    prm.layout.offsets(b, off);
    const PixelGmRef<T> g = pixel_gm(gm, off, p);
    A between = A(0);
    for (int64_t c = 0; c < C; ++c) {
      A m = A(0);
      for (int64_t k = 0; k < K; ++k)
        m += fast_exp(load_acc(g.logweights + k * g.logweights_sk)) * load_acc(g.means + k * g.means_sk + c * g.means_sc);
      A d2 = A(0);
      for (int64_t k = 0; k < K; ++k) {
        const A d = load_acc(g.means + k * g.means_sk + c * g.means_sc) - m;
        d2 += fast_exp(load_acc(g.logweights + k * g.logweights_sk)) * d * d;
      }
      between += d2;
      store_acc(prm.mean + (b * C + c) * P + p, m);
    }
    A within = A(0);
    if (g.logstds_sk == 0) {
      within = fast_exp(A(2) * load_acc(g.logstds));
    } else {
      for (int64_t k = 0; k < K; ++k)
        within += fast_exp(load_acc(g.logweights + k * g.logweights_sk)) *
                  fast_exp(A(2) * load_acc(g.logstds + k * g.logstds_sk));
    }
    store_acc(prm.var + b * P + p, (C > 0 ? between / A(C) : A(0)) + within);
  }
}

}  // namespace

template <typename T>
const char* gm_to_mean(const GmToMeanParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.gm.batch * prm.gm.P, to_mean_kernel<T>, stream);
}

template <typename T>
const char* gm_to_mean_backward(const GmToMeanBackwardParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.fwd.gm.batch * prm.fwd.gm.P, to_mean_backward_kernel<T>, stream);
}

template <typename T>
const char* gm_to_iso_gaussian(const GmToIsoGaussianParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.gm.batch * prm.gm.P, to_iso_gaussian_kernel<T>, stream);
}

#define GMFLOW_INSTANTIATE(T)                                                                  \
  template const char* gm_to_mean<T>(const GmToMeanParams<T>&, void*);                         \
  template const char* gm_to_mean_backward<T>(const GmToMeanBackwardParams<T>&, void*);        \
  template const char* gm_to_iso_gaussian<T>(const GmToIsoGaussianParams<T>&, void*);

GMFLOW_INSTANTIATE(float)
GMFLOW_INSTANTIATE(double)
GMFLOW_INSTANTIATE(Half)
GMFLOW_INSTANTIATE(BFloat16)

}  // namespace cuda
}  // namespace gmflow
