// CUDA kernels of gm_logprob and its backward (torch-free).
// One thread per output pixel (coalesced along p), an online logsumexp over K.
#include "gmflow/cuda_kernels.h"
#include "gmflow/gm_math.h"
#include "launch.cuh"

namespace gmflow {
namespace cuda {
namespace {

// log w_k + log N(x; mu_k, s_k^2 I) of component k; also returns 1/s_k.
template <typename T, typename A>
__device__ __forceinline__ A component_log_density(const PixelGmRef<T>& g, const T* x, int64_t x_sc, int64_t C,
                                                   int64_t k, A& inv_std) {
  const A ls = load_acc(g.logstds + k * g.logstds_sk);
  inv_std = fast_exp(-ls);
  A q = A(0);
  const T* mu = g.means + k * g.means_sk;
  for (int64_t c = 0; c < C; ++c) {
    const A z = (load_acc(x + c * x_sc) - load_acc(mu + c * g.means_sc)) * inv_std;
    q += z * z;
  }
  return load_acc(g.logweights + k * g.logweights_sk) - A(C) * ls - A(0.5 * kLog2Pi) * A(C) - A(0.5) * q;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) logprob_kernel(const GmLogprobParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t items = gm.batch * prm.N * gm.P;
  GMFLOW_GRID_STRIDE_LOOP(item, items) {
    const int64_t p = item % gm.P;
    const int64_t bn = item / gm.P;
    const int64_t n = bn % prm.N, b = bn / prm.N;
    int64_t off[4];
    prm.layout.offsets(b, off);
    const PixelGmRef<T> g = pixel_gm(gm, off, p);
    const T* x = prm.samples + off[kSamples] + n * prm.samples_sn + p;
    OnlineLogSumExp<A> lse;
    for (int64_t k = 0; k < gm.K; ++k) {
      A inv_std;
      lse.push(component_log_density(g, x, prm.samples_sc, gm.C, k, inv_std));
    }
    store_acc(prm.logprob + item, lse.result());
  }
}

// One thread per (b, p), summing over the N samples (same formulas as the CPU kernel).
template <typename T>
__global__ void __launch_bounds__(kThreads) logprob_backward_kernel(const GmLogprobBackwardParams<T> prm) {
  using A = acc_t<T>;
  const GmLogprobParams<T>& fwd = prm.fwd;
  const GmOperands<T>& gm = fwd.gm;
  const int64_t N = fwd.N, K = gm.K, C = gm.C, P = gm.P;
  const bool shared_std = gm.logstds_k == 1;
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    int64_t off[4];
    fwd.layout.offsets(b, off);
    const PixelGmRef<T> g = pixel_gm(gm, off, p);
    A g_ls_shared = A(0);
    for (int64_t k = 0; k < K; ++k) {
      A g_lw = A(0), g_ls = A(0);
      const T* mu = g.means + k * g.means_sk;
      for (int64_t n = 0; n < N; ++n) {
        const T* x = fwd.samples + off[kSamples] + n * fwd.samples_sn + p;
        const int64_t out_index = (b * N + n) * P + p;
        A inv_std;
        const A a = component_log_density(g, x, fwd.samples_sc, C, k, inv_std);
        const A r = responsibility(a, load_acc(prm.logprob + out_index)) * load_acc(prm.grad + out_index);
        g_lw += r;
        A zsq = A(0);
        for (int64_t c = 0; c < C; ++c) {
          const A z = (load_acc(x + c * fwd.samples_sc) - load_acc(mu + c * g.means_sc)) * inv_std;
          zsq += z * z;
          const A w = r * z * inv_std;
          if (prm.grad_means) {
            T* dst = prm.grad_means + ((b * K + k) * C + c) * P + p;
            store_acc(dst, n == 0 ? w : load_acc(dst) + w);
          }
          if (prm.grad_samples) {
            T* dst = prm.grad_samples + ((b * N + n) * C + c) * P + p;
            store_acc(dst, k == 0 ? -w : load_acc(dst) - w);
          }
        }
        g_ls += r * (zsq - A(C));
      }
      if (N == 0 && prm.grad_means) {
        for (int64_t c = 0; c < C; ++c) store_acc(prm.grad_means + ((b * K + k) * C + c) * P + p, A(0));
      }
      if (prm.grad_logweights) store_acc(prm.grad_logweights + (b * K + k) * P + p, g_lw);
      if (prm.grad_logstds) {
        if (shared_std) {
          g_ls_shared += g_ls;
        } else {
          store_acc(prm.grad_logstds + (b * K + k) * P + p, g_ls);
        }
      }
    }
    if (prm.grad_logstds && shared_std) store_acc(prm.grad_logstds + b * P + p, g_ls_shared);
  }
}

}  // namespace

template <typename T>
const char* gm_logprob(const GmLogprobParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.gm.batch * prm.N * prm.gm.P, logprob_kernel<T>, stream);
}

template <typename T>
const char* gm_logprob_backward(const GmLogprobBackwardParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.fwd.gm.batch * prm.fwd.gm.P, logprob_backward_kernel<T>, stream);
}

#define GMFLOW_INSTANTIATE(T)                                                       \
  template const char* gm_logprob<T>(const GmLogprobParams<T>&, void*);             \
  template const char* gm_logprob_backward<T>(const GmLogprobBackwardParams<T>&, void*);

GMFLOW_INSTANTIATE(float)
GMFLOW_INSTANTIATE(double)
GMFLOW_INSTANTIATE(Half)
GMFLOW_INSTANTIATE(BFloat16)

}  // namespace cuda
}  // namespace gmflow
