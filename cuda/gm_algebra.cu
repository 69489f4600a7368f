// CUDA kernels of gm_mul_iso_gaussian, gm_posterior_mean (+ backward) and gm_sample
// (torch-free). One thread per output item (batch, [sample,] pixel): neighbouring threads
// read neighbouring pixels, so every load and store is coalesced along p. Formulas as in
// cpp/cpu/gm_algebra.cpp.
#include "gmflow/cuda_kernels.h"
#include "gmflow/gm_math.h"
#include "launch.cuh"

namespace gmflow {
namespace cuda {
namespace {

constexpr int kRegisterChannels = 8;  // channel counts whose per-item sums stay in registers

template <typename A>
__device__ __forceinline__ A clamp_min(A x, A lo) {
  return x < lo ? lo : x;  // NaN stays NaN
}

// ------------------------------------------------------------------ gm_mul_iso_gaussian

// Two passes over K per item: the log normaliser of the logits, then the outputs (no
// intermediate is stored in the possibly 16-bit outputs).
template <typename T>
__global__ void __launch_bounds__(kThreads) mul_iso_kernel(const GmMulIsoGaussianParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, Kl = gm.logstds_k, Po = prm.out_logstds_p;
  const bool per_component = Kl != 1;
  const A r = A(prm.ratio), eps = A(prm.eps);
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    int64_t off[5];
    prm.layout.offsets(b, off);
    const T* mu = gm.means + off[kMeans] + p;
    const T* ls = gm.logstds + off[kLogstds] + p * gm.logstds_sp;
    const T* lw = gm.logweights + off[kLogweights] + p;
    const T* g_mean = prm.gaussian_mean + off[3] + p;
    const A var_g = load_acc(prm.gaussian_var + off[4] + p * prm.gaussian_var_sp);
    OnlineLogSumExp<A> lse;
    for (int pass = 0; pass < 2; ++pass) {
      const A norm = pass == 1 ? lse.result() : A(0);
      for (int64_t k = 0; k < K; ++k) {
        const A lsk = load_acc(ls + (per_component ? k * gm.logstds_sk : 0));
        const A var = fast_exp(A(2) * lsk);
        const A n = clamp_min(var_g + r * var, eps);
        const A inv = A(1) / n;
        A q = A(0);
        for (int64_t c = 0; c < C; ++c) {
          const A m = load_acc(mu + k * gm.means_sk + c * gm.means_sc);
          const A mg = load_acc(g_mean + c * prm.gaussian_mean_sc);
          if (pass == 1) store_acc(prm.out_means + ((b * K + k) * C + c) * P + p, (var_g * m + r * var * mg) * inv);
          q += (m - mg) * (m - mg);
        }
        const A log_n = fast_log(n);
        A logit = A(load_acc(lw + k * gm.logweights_sk)) - A(0.5) * r * q * inv;
        if (per_component) logit -= A(0.5) * A(C) * log_n;
        if (pass == 0) {
          lse.push(logit);
          continue;
        }
        store_acc(prm.out_logweights + (b * K + k) * P + p, logit - norm);
        if (k < Kl && (Po == P || p == 0))
          store_acc(prm.out_logstds + (b * Kl + k) * Po + (Po == P ? p : 0),
                    lsk + A(0.5) * fast_log(var_g) - A(0.5) * log_n);
      }
    }
  }
}

// ------------------------------------------------------------------ gm_posterior_mean

// Per-item constants and component terms of the posterior-mean conversion.
template <typename T, typename A = acc_t<T>>
struct PosteriorItem {
  const T *mu, *ls, *lw, *x_src, *x_tgt;
  int64_t means_sk, means_sc, ls_sk, lw_sk, x_src_sc, x_tgt_sc, C;
  bool per_component;
  A zeta, c_src, c_tgt, sq, eps;

  __device__ __forceinline__ A nu(int64_t c) const {
    return c_tgt * A(load_acc(x_tgt + c * x_tgt_sc)) - c_src * A(load_acc(x_src + c * x_src_sc));
  }

  // Logit of component k and its pieces (var, den, d den / d var, Q = sum_c mu (nu - zeta mu / 2)).
  __device__ __forceinline__ A logit(int64_t k, A& var, A& den, A& dden, A& q) const {
    var = fast_exp(A(2) * A(load_acc(ls + (per_component ? k * ls_sk : 0))));
    const A raw = var * zeta + A(1);
    den = clamp_min(raw, eps);
    dden = raw > eps ? zeta : A(0);
    q = A(0);
    for (int64_t c = 0; c < C; ++c) {
      const A m = load_acc(mu + k * means_sk + c * means_sc);
      q += m * (nu(c) - A(0.5) * zeta * m);
    }
    A l = A(load_acc(lw + k * lw_sk)) + q / den;
    if (per_component) l += A(0.5) * var * sq / den - A(0.5) * A(C) * fast_log(den);
    return l;
  }
};

template <typename T, typename Params>
__device__ __forceinline__ PosteriorItem<T> posterior_item(const Params& prm, int64_t b, int64_t p) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  int64_t off[7];
  prm.layout.offsets(b, off);
  PosteriorItem<T> it;
  it.mu = gm.means + off[kMeans] + p;
  it.ls = gm.logstds + off[kLogstds] + p * gm.logstds_sp;
  it.lw = gm.logweights + off[kLogweights] + p;
  it.x_src = prm.x_src + off[3] + p;
  it.x_tgt = prm.x_tgt + off[4] + p;
  it.means_sk = gm.means_sk;
  it.means_sc = gm.means_sc;
  it.ls_sk = gm.logstds_sk;
  it.lw_sk = gm.logweights_sk;
  it.x_src_sc = prm.x_src_sc;
  it.x_tgt_sc = prm.x_tgt_sc;
  it.C = gm.C;
  it.per_component = gm.logstds_k != 1;
  it.eps = A(prm.eps);
  const A ss = clamp_min(A(prm.sigma_src[off[5]]), it.eps), st = clamp_min(A(prm.sigma_tgt[off[6]]), it.eps);
  const A as = A(1) - ss, at = A(1) - st;
  it.zeta = (at / st) * (at / st) - (as / ss) * (as / ss);
  it.c_src = as / (ss * ss);
  it.c_tgt = at / (st * st);
  it.sq = A(0);
  for (int64_t c = 0; c < gm.C; ++c) {
    const A n = it.nu(c);
    it.sq += n * n;
  }
  return it;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) posterior_kernel(const GmPosteriorMeanParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    const PosteriorItem<T> it = posterior_item<T>(prm, b, p);
    A var, den, dden, q;
    OnlineLogSumExp<A> lse;
    for (int64_t k = 0; k < K; ++k) lse.push(it.logit(k, var, den, dden, q));
    const A norm = lse.result();
    T* out = prm.mean + b * C * P + p;
    if (C <= kRegisterChannels) {  // one pass over K, the channel sums in registers
      A acc[kRegisterChannels];
#pragma unroll
      for (int c = 0; c < kRegisterChannels; ++c) acc[c] = A(0);
      for (int64_t k = 0; k < K; ++k) {
        const A pi = responsibility(it.logit(k, var, den, dden, q), norm);
#pragma unroll
        for (int c = 0; c < kRegisterChannels; ++c)
          if (c < C) acc[c] += pi * (var * it.nu(c) + A(load_acc(it.mu + k * it.means_sk + c * it.means_sc))) / den;
      }
#pragma unroll
      for (int c = 0; c < kRegisterChannels; ++c)
        if (c < C) store_acc(out + c * P, acc[c]);
    } else {  // many channels: one pass over K per channel
      for (int64_t c = 0; c < C; ++c) {
        A acc = A(0);
        for (int64_t k = 0; k < K; ++k) {
          const A pi = responsibility(it.logit(k, var, den, dden, q), norm);
          acc += pi * (var * it.nu(c) + A(load_acc(it.mu + k * it.means_sk + c * it.means_sc))) / den;
        }
        store_acc(out + c * P, acc);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) posterior_backward_kernel(const GmPosteriorMeanBackwardParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.fwd.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, Kl = gm.logstds_k;
  const bool per_component = Kl != 1;
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    const PosteriorItem<T> it = posterior_item<T>(prm.fwd, b, p);
    A var, den, dden, q;
    OnlineLogSumExp<A> lse;
    for (int64_t k = 0; k < K; ++k) lse.push(it.logit(k, var, den, dden, q));
    const A norm = lse.result();
    const T* g = prm.grad + b * C * P + p;
    const T* out = prm.mean + b * C * P + p;
    A g_ls_shared = A(0);
    for (int64_t k = 0; k < K; ++k) {
      const A pi = responsibility(it.logit(k, var, den, dden, q), norm);
      const A inv = A(1) / den;
      A d = A(0), g_var = A(0);
      for (int64_t c = 0; c < C; ++c) {
        const A gc = load_acc(g + c * P);
        const A nc = it.nu(c);
        const A moved = (var * nc + A(load_acc(it.mu + k * it.means_sk + c * it.means_sc))) * inv;
        d += gc * (moved - A(load_acc(out + c * P)));
        g_var += gc * (nc - moved * dden);
      }
      if (prm.grad_logweights) store_acc(prm.grad_logweights + (b * K + k) * P + p, pi * d);
      if (prm.grad_means) {
        for (int64_t c = 0; c < C; ++c) {
          const A m = load_acc(it.mu + k * it.means_sk + c * it.means_sc);
          store_acc(prm.grad_means + ((b * K + k) * C + c) * P + p,
                    pi * (A(load_acc(g + c * P)) + d * (it.nu(c) - it.zeta * m)) * inv);
        }
      }
      if (prm.grad_logstds) {
        A dlogit = -q * inv * dden * inv;
        if (per_component)
          dlogit += A(0.5) * it.sq * inv - A(0.5) * var * it.sq * dden * inv * inv - A(0.5) * A(C) * dden * inv;
        const A gls = A(2) * var * (pi * g_var * inv + pi * d * dlogit);
        if (per_component) {
          store_acc(prm.grad_logstds + (b * Kl + k) * P + p, gls);
        } else {
          g_ls_shared += gls;
        }
      }
    }
    if (prm.grad_logstds && !per_component) store_acc(prm.grad_logstds + b * P + p, g_ls_shared);
  }
}

// ------------------------------------------------------------------ gm_sample

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(const GmSampleParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, N = prm.N;
  const A power = A(prm.power);
  const A std_scale = prm.cov_sharpen ? A(1) / A(sqrt(prm.power)) : A(1);
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * N * P) {
    const int64_t p = item % P, bn = item / P;
    const int64_t n = bn % N, b = bn / N;
    int64_t off[5];
    prm.layout.offsets(b, off);
    const T* lw = gm.logweights + off[kLogweights] + p;
    A max_value = neg_infinity<A>();
    for (int64_t k = 0; k < K; ++k) {
      const A l = power * A(load_acc(lw + k * gm.logweights_sk));
      max_value = l > max_value ? l : max_value;
    }
    A total = A(0);
    for (int64_t k = 0; k < K; ++k) total += fast_exp(power * A(load_acc(lw + k * gm.logweights_sk)) - max_value);
    CategoricalDraw<A> draw;
    draw.target = prm.uniforms[off[3] + n * prm.uniforms_sn + p] * total;
    for (int64_t k = 0; k < K; ++k) draw.push(k, fast_exp(power * A(load_acc(lw + k * gm.logweights_sk)) - max_value));
    const int64_t chosen = draw.result();
    const int64_t ks = gm.logstds_k == 1 ? 0 : chosen * gm.logstds_sk;
    const A std_dev = fast_exp(A(load_acc(gm.logstds + off[kLogstds] + p * gm.logstds_sp + ks))) * std_scale;
    const T* mu = gm.means + off[kMeans] + p + chosen * gm.means_sk;
    const acc_t<T>* z = prm.normals + off[4] + n * prm.normals_sn + p;
    for (int64_t c = 0; c < C; ++c)
      store_acc(prm.out + (bn * C + c) * P + p, A(load_acc(mu + c * gm.means_sc)) + std_dev * z[c * prm.normals_sc]);
  }
}

}  // namespace

template <typename T>
const char* gm_mul_iso_gaussian(const GmMulIsoGaussianParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.gm.batch * prm.gm.P, mul_iso_kernel<T>, stream);
}

template <typename T>
const char* gm_posterior_mean(const GmPosteriorMeanParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.gm.batch * prm.gm.P, posterior_kernel<T>, stream);
}

template <typename T>
const char* gm_posterior_mean_backward(const GmPosteriorMeanBackwardParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.fwd.gm.batch * prm.fwd.gm.P, posterior_backward_kernel<T>, stream);
}

template <typename T>
const char* gm_sample(const GmSampleParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.gm.batch * prm.N * prm.gm.P, sample_kernel<T>, stream);
}

#define GMFLOW_INSTANTIATE(T)                                                                            \
  template const char* gm_mul_iso_gaussian<T>(const GmMulIsoGaussianParams<T>&, void*);                 \
  template const char* gm_posterior_mean<T>(const GmPosteriorMeanParams<T>&, void*);                    \
  template const char* gm_posterior_mean_backward<T>(const GmPosteriorMeanBackwardParams<T>&, void*);   \
  template const char* gm_sample<T>(const GmSampleParams<T>&, void*);

GMFLOW_INSTANTIATE(float)
GMFLOW_INSTANTIATE(double)
GMFLOW_INSTANTIATE(Half)
GMFLOW_INSTANTIATE(BFloat16)

}  // namespace cuda
}  // namespace gmflow
