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

// ------------------------------------------------------------------ gm_ode_euler_substeps

// One item of gm_ode_euler_substeps: the state and source live in arrays of kC >= C values (registers
// for kC = kRegisterChannels); the GM is re-read from the cache at every sub-step.
template <typename T, int kC>
struct OdeItem {
  using A = acc_t<T>;
  const T *mu, *ls, *lw;
  const acc_t<T>* sig;
  int64_t means_sk, means_sc, ls_sk, lw_sk, sig_sj, K, C, S;
  bool per_component;
  A eps;
  A x_src[kC];

  __device__ __forceinline__ A mean(int64_t k, int c) const { return load_acc(mu + k * means_sk + c * means_sc); }

  // Coefficients of sub-step j at the state x; nu = c_tgt x - c_src x_src and sq = |nu|^2.
  __device__ __forceinline__ OdeSubstep<A> setup(int64_t j, const A (&x)[kC], A (&nu)[kC], A& sq) const {
    const OdeSubstep<A> o = ode_substep(A(sig[0]), A(sig[j * sig_sj]), A(sig[(j + 1) * sig_sj]), eps);
    sq = A(0);
#pragma unroll
    for (int c = 0; c < kC; ++c)
      if (c < C) {
        nu[c] = o.c_tgt * x[c] - o.c_src * x_src[c];
        sq += nu[c] * nu[c];
      }
    return o;
  }

  // Logit of component k and its pieces (var, den, 1 / den, d den / d var, Q = sum_c mu (nu - zeta mu / 2)).
  __device__ __forceinline__ A logit(int64_t k, A zeta, const A (&nu)[kC], A sq, A& var, A& inv, A& dden,
                                     A& q) const {
    var = fast_exp(A(2) * A(load_acc(ls + (per_component ? k * ls_sk : 0))));
    const A raw = var * zeta + A(1);
    const A den = clamp_min(raw, eps);
    inv = A(1) / den;
    dden = raw > eps ? zeta : A(0);
    q = A(0);
#pragma unroll
    for (int c = 0; c < kC; ++c)
      if (c < C) {
        const A m = mean(k, c);
        q += m * (nu[c] - A(0.5) * zeta * m);
      }
    A l = A(load_acc(lw + k * lw_sk)) + q * inv;
    if (per_component) l += A(0.5) * var * sq * inv - A(0.5) * A(C) * fast_log(den);
    return l;
  }

  // Posterior mean x0 at nu (one online-softmax pass over K); returns its log normaliser.
  __device__ __forceinline__ A posterior(A zeta, const A (&nu)[kC], A sq, A (&x0)[kC]) const {
    A max_value = neg_infinity<A>(), sum = A(0), w_var = A(0), var, inv, dden, q;
#pragma unroll
    for (int c = 0; c < kC; ++c) x0[c] = A(0);
    for (int64_t k = 0; k < K; ++k) {
      const A l = logit(k, zeta, nu, sq, var, inv, dden, q);
      if (l == neg_infinity<A>()) continue;  // zero weight
      A e = A(1);
      if (l <= max_value) {
        e = fast_exp(l - max_value);
      } else {  // also taken for NaN, which then propagates
        const A scale = fast_exp(max_value - l);
        sum *= scale;
        w_var *= scale;
#pragma unroll
        for (int c = 0; c < kC; ++c) x0[c] *= scale;
        max_value = l;
      }
      sum += e;
      const A w = e * inv;
      w_var += w * var;
#pragma unroll
      for (int c = 0; c < kC; ++c)
        if (c < C) x0[c] += w * mean(k, c);
    }
#pragma unroll
    for (int c = 0; c < kC; ++c)
      if (c < C) x0[c] = (x0[c] + w_var * nu[c]) / sum;
    return lse_result(max_value, sum);
  }

  // Runs sub-steps [0, end) from x_src into x.
  __device__ __forceinline__ void advance(int64_t end, A (&x)[kC]) const {
#pragma unroll
    for (int c = 0; c < kC; ++c) x[c] = x_src[c];
    A nu[kC], x0[kC], sq;
    for (int64_t j = 0; j < end; ++j) {
      const OdeSubstep<A> o = setup(j, x, nu, sq);
      posterior(o.zeta, nu, sq, x0);
#pragma unroll
      for (int c = 0; c < kC; ++c)
        if (c < C) x[c] = x0[c] + o.ratio * (x[c] - x0[c]);
    }
  }
};

template <typename T, int kC, typename Params>
__device__ __forceinline__ OdeItem<T, kC> ode_item(const Params& prm, int64_t b, int64_t p) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  int64_t off[5];
  prm.layout.offsets(b, off);
  OdeItem<T, kC> it;
  it.mu = gm.means + off[kMeans] + p;
  it.ls = gm.logstds + off[kLogstds] + p * gm.logstds_sp;
  it.lw = gm.logweights + off[kLogweights] + p;
  it.sig = prm.sigmas + off[4];
  it.means_sk = gm.means_sk;
  it.means_sc = gm.means_sc;
  it.ls_sk = gm.logstds_sk;
  it.lw_sk = gm.logweights_sk;
  it.sig_sj = prm.sigmas_sj;
  it.K = gm.K;
  it.C = gm.C;
  it.S = prm.S;
  it.per_component = gm.logstds_k != 1;
  it.eps = A(prm.eps);
  const T* xs = prm.x_src + off[3] + p;
#pragma unroll
  for (int c = 0; c < kC; ++c) it.x_src[c] = c < gm.C ? A(load_acc(xs + c * prm.x_src_sc)) : A(0);
  return it;
}

template <typename T, int kC>
__global__ void __launch_bounds__(kThreads) ode_kernel(const GmOdeEulerSubstepsParams<T> prm) {
  using A = acc_t<T>;
  const int64_t C = prm.gm.C, P = prm.gm.P;
  GMFLOW_GRID_STRIDE_LOOP(item, prm.gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    const OdeItem<T, kC> it = ode_item<T, kC>(prm, b, p);
    A x[kC];
    it.advance(prm.S, x);
    T* out = prm.out + b * C * P + p;
#pragma unroll
    for (int c = 0; c < kC; ++c)
      if (c < C) store_acc(out + c * P, x[c]);
  }
}

constexpr int kOdeMaxChannels = 64;     // channel bound of the CUDA sub-step kernels
constexpr int kOdeSavedValues = 128;  // backward: states kept per thread when S C fits, else recomputed

// Backward by recompute (see cpp/cpu/gm_algebra.cpp ode_backward_range for the formulas): the states
// x_j of the forward pass are kept in a per-thread array when S C <= kOdeSavedValues, else each is
// recomputed from x_src; the sub-steps are then reversed, the GM gradients accumulated in the outputs.
template <typename T, int kC>
__global__ void __launch_bounds__(kThreads) ode_backward_kernel(const GmOdeEulerSubstepsBackwardParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.fwd.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, Kl = gm.logstds_k, S = prm.fwd.S;
  const bool per_component = Kl != 1;
  const bool keep = S * C <= kOdeSavedValues;
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    const OdeItem<T, kC> it = ode_item<T, kC>(prm.fwd, b, p);
    A saved[kOdeSavedValues];
    A x[kC], nu[kC], x0[kC], g[kC], h[kC], gx[kC], sq;
    if (keep) {
#pragma unroll
      for (int c = 0; c < kC; ++c) x[c] = it.x_src[c];
      for (int64_t j = 0; j < S; ++j) {
#pragma unroll
        for (int c = 0; c < kC; ++c)
          if (c < C) saved[j * C + c] = x[c];
        const OdeSubstep<A> o = it.setup(j, x, nu, sq);
        it.posterior(o.zeta, nu, sq, x0);
#pragma unroll
        for (int c = 0; c < kC; ++c)
          if (c < C) x[c] = x0[c] + o.ratio * (x[c] - x0[c]);
      }
    }
    const T* grad = prm.grad + b * C * P + p;
#pragma unroll
    for (int c = 0; c < kC; ++c) g[c] = c < C ? A(load_acc(grad + c * P)) : A(0);
    T* g_mu = prm.grad_means ? prm.grad_means + b * K * C * P + p : nullptr;
    T* g_lw = prm.grad_logweights ? prm.grad_logweights + b * K * P + p : nullptr;
    T* g_ls = prm.grad_logstds ? prm.grad_logstds + b * Kl * P + p : nullptr;
    for (int64_t k = 0; k < K; ++k) {
      if (g_lw) store_acc(g_lw + k * P, A(0));
      if (g_mu)
        for (int64_t c = 0; c < C; ++c) store_acc(g_mu + (k * C + c) * P, A(0));
    }
    if (g_ls)
      for (int64_t k = 0; k < Kl; ++k) store_acc(g_ls + k * P, A(0));
    for (int64_t j = S - 1; j >= 0; --j) {
      if (keep) {
#pragma unroll
        for (int c = 0; c < kC; ++c) x[c] = c < C ? saved[j * C + c] : A(0);
      } else {
        it.advance(j, x);
      }
      const OdeSubstep<A> o = it.setup(j, x, nu, sq);
      const A lse = it.posterior(o.zeta, nu, sq, x0);
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        h[c] = (A(1) - o.ratio) * g[c];
        gx[c] = A(0);
      }
      A w_var = A(0);
      for (int64_t k = 0; k < K; ++k) {
        A var, inv, dden, q;
        const A pi = responsibility(it.logit(k, o.zeta, nu, sq, var, inv, dden, q), lse);
        A d = A(0), g_var = A(0);
#pragma unroll
        for (int c = 0; c < kC; ++c)
          if (c < C) {
            const A moved = (var * nu[c] + it.mean(k, c)) * inv;
            d += h[c] * (moved - x0[c]);
            g_var += h[c] * (nu[c] - moved * dden);
          }
        w_var += pi * var * inv;
        if (g_lw) store_acc(g_lw + k * P, A(load_acc(g_lw + k * P)) + pi * d);
#pragma unroll
        for (int c = 0; c < kC; ++c)
          if (c < C) {
            const A m = it.mean(k, c);
            gx[c] += pi * d * ((var * nu[c] + m) * inv - x0[c]);
            if (g_mu) {
              T* gm_kc = g_mu + (k * C + c) * P;
              store_acc(gm_kc, A(load_acc(gm_kc)) + pi * (h[c] + d * (nu[c] - o.zeta * m)) * inv);
            }
          }
        if (g_ls) {
          A dlogit = -q * inv * dden * inv;
          if (per_component)
            dlogit += A(0.5) * sq * inv - A(0.5) * var * sq * dden * inv * inv - A(0.5) * A(C) * dden * inv;
          T* gls_k = g_ls + (per_component ? k : 0) * P;
          store_acc(gls_k, A(load_acc(gls_k)) + A(2) * var * pi * (g_var * inv + d * dlogit));
        }
      }
#pragma unroll
      for (int c = 0; c < kC; ++c) g[c] = o.ratio * g[c] + o.c_tgt * (w_var * h[c] + gx[c]);
    }
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

// Channel counts above kOdeMaxChannels are refused (the CPU kernel has no bound).
template <typename T>
const char* gm_ode_euler_substeps(const GmOdeEulerSubstepsParams<T>& prm, void* stream) {
  const int64_t items = prm.gm.batch * prm.gm.P;
  if (prm.gm.C <= kRegisterChannels) return launch_grid(prm, items, ode_kernel<T, kRegisterChannels>, stream);
  if (prm.gm.C <= kOdeMaxChannels) return launch_grid(prm, items, ode_kernel<T, kOdeMaxChannels>, stream);
  return "gm_ode_euler_substeps(): the CUDA kernel supports at most 64 channels (C of 'means'); run it on the CPU";
}

template <typename T>
const char* gm_ode_euler_substeps_backward(const GmOdeEulerSubstepsBackwardParams<T>& prm, void* stream) {
  const int64_t items = prm.fwd.gm.batch * prm.fwd.gm.P;
  if (prm.fwd.gm.C <= kRegisterChannels)
    return launch_grid(prm, items, ode_backward_kernel<T, kRegisterChannels>, stream);
  if (prm.fwd.gm.C <= kOdeMaxChannels) return launch_grid(prm, items, ode_backward_kernel<T, kOdeMaxChannels>, stream);
  return "gm_ode_euler_substeps_backward(): the CUDA kernel supports at most 64 channels (C of 'means'); "
         "run it on the CPU";
}

#define GMFLOW_INSTANTIATE(T)                                                                            \
  template const char* gm_mul_iso_gaussian<T>(const GmMulIsoGaussianParams<T>&, void*);                 \
  template const char* gm_posterior_mean<T>(const GmPosteriorMeanParams<T>&, void*);                    \
  template const char* gm_posterior_mean_backward<T>(const GmPosteriorMeanBackwardParams<T>&, void*);   \
  template const char* gm_ode_euler_substeps<T>(const GmOdeEulerSubstepsParams<T>&, void*);                      \
  template const char* gm_ode_euler_substeps_backward<T>(const GmOdeEulerSubstepsBackwardParams<T>&, void*);     \
  template const char* gm_sample<T>(const GmSampleParams<T>&, void*);

GMFLOW_INSTANTIATE(float)
GMFLOW_INSTANTIATE(double)
GMFLOW_INSTANTIATE(Half)
GMFLOW_INSTANTIATE(BFloat16)

}  // namespace cuda
}  // namespace gmflow
