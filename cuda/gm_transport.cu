// CUDA kernels of gm1d_inverse_cdf (+ implicit backward) and the Knothe-Rosenblatt transport
// gm_kr_inverse / gm_kr_forward (torch-free). One thread per output item, items ordered
// (batch, [sample,] pixel) with the pixel fastest, so every load and store is coalesced along p.
// Formulas as in cpp/cpu/gm_transport.cpp:
//   Newton (docs/ops.md#gm1d_inverse_cdf): exactly n_steps clamped steps from x0 = g sqrt(v + s^2) + m; a thread stops
//     early once its iterates are periodic with period 1 or 2 (bit for bit), which gives the same
//     x_{n_steps} because the update is a fixed function of x.
//   gm_kr_inverse: per-axis conditional logits log_softmax(lambda - S / 2), a Newton solve per
//     axis < n_axes, an ancestral draw for the rest, x = x~ V^T.
//   gm_kr_forward: u_a = sum_k softmax(lambda - S / 2)_k erf(z_ka / sqrt 2), sqrt 2 erfinv(clamp(u_a)).
// The KR per-item scratch lives in prm.workspace, slot-major (workspace[slot * items + item]) so
// that neighbouring threads touch neighbouring addresses.
#include "gmflow/cuda_kernels.h"
#include "gmflow/gm_math.h"
#include "gmflow/gm_special.h"
#include "launch.cuh"

namespace gmflow {
namespace cuda {
namespace {

// Mixtures with at most this many components are copied into registers before a Newton solve
// (the iterations then touch no memory and take one exp per component instead of two). Fewer
// for fp64, whose values take two registers each.
template <typename A>
constexpr int kRegisterComponents = sizeof(A) == sizeof(float) ? 8 : 4;
// Components whose backward accumulators are held in registers per pass over the samples.
constexpr int kBackwardChunk = 8;

__device__ __forceinline__ float sqrt_acc(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_acc(double x) { return sqrt(x); }

// ------------------------------------------------------------------ 1-D mixtures and Newton

// A source of 1-D mixture components: component(k, mu, logit, w) gives the mean mu_k, the logit
// lambda_k (pdf term exp(lambda_k - z^2 / 2)) and the weight w_k = e^lambda_k (cdf term).

// gm1d_inverse_cdf: components read from the (batch, pixel) operands.
template <typename T>
struct Gm1dComponents {
  using A = acc_t<T>;
  int64_t K;
  const T* mu;  // at (batch, pixel), component stride mu_sk
  const T* lw;
  int64_t mu_sk, lw_sk;

  __device__ __forceinline__ void component(int64_t k, A& mu_k, A& logit, A& w) const {
    mu_k = load_acc(mu + k * mu_sk);
    logit = load_acc(lw + k * lw_sk);
    w = fast_exp(logit);
  }
};

// gm_kr_inverse: the conditional of rotated axis a given the solved axes < a. Rotated means and
// squared sums S_k come from the workspace (component stride `items`); lambda_k from the operand.
template <typename T>
struct KrConditional {
  using A = acc_t<T>;
  int64_t K;
  const A* mut;  // workspace slots of mu~[a][k]
  const A* sq;   // workspace slots of S_k (unused when first)
  int64_t items;
  const T* lw;
  int64_t lw_sk;
  bool first;                   // a = 0: the logits are lambda itself
  A max_value, shift, inv_sum;  // a > 0: max_k(lambda - S / 2), max + log(sum), 1 / sum

  __device__ __forceinline__ void component(int64_t k, A& mu_k, A& logit, A& w) const {
    mu_k = mut[k * items];
    const A lk = load_acc(lw + k * lw_sk);
    if (first) {
      logit = lk;
      w = fast_exp(lk);
      return;
    }
    const A l = lk - A(0.5) * sq[k * items];
    logit = l - shift;
    w = fast_exp(l - max_value) * inv_sum;
  }
};

// A small mixture copied into registers. Only unrolled loops index the arrays, so they stay in
// registers.
template <typename A, int kMax>
struct RegisterMix {
  int64_t K;
  A mu[kMax], logit[kMax], w[kMax];

  template <class Src>
  __device__ __forceinline__ explicit RegisterMix(const Src& src) : K(src.K) {
#pragma unroll
    for (int k = 0; k < kMax; ++k) {
      mu[k] = logit[k] = w[k] = A(0);
      if (k < K) src.component(k, mu[k], logit[k], w[k]);
    }
  }
};

template <class Src, class F>
__device__ __forceinline__ void for_each_component(const Src& src, F&& f) {
  for (int64_t k = 0; k < src.K; ++k) {
    typename Src::A mu, logit, w;
    src.component(k, mu, logit, w);
    f(mu, logit, w);
  }
}

template <typename A, int kMax, class F>
__device__ __forceinline__ void for_each_component(const RegisterMix<A, kMax>& mix, F&& f) {
#pragma unroll
  for (int k = 0; k < kMax; ++k)
    if (k < mix.K) f(mix.mu[k], mix.logit[k], mix.w[k]);
}

// Per-solve constants from the (shared) log std.
template <typename A>
struct NewtonScale {
  A std_dev, inv_s, norm, bound;
  __device__ __forceinline__ NewtonScale(A logstd, A max_step)
      : std_dev(fast_exp(logstd)), inv_s(fast_exp(-logstd)), norm(inv_s * A(kInvSqrt2Pi)), bound(max_step * std_dev) {}
};

// Moment-matched init, then n_steps clamped Newton steps on scaled_cdf(x) = c.
template <typename A, class Mix>
__device__ __forceinline__ A newton_solve(const Mix& mix, const NewtonScale<A>& s, A g, A c, A eps, int64_t n_steps) {
  A m = A(0), var = A(0);
  for_each_component(mix, [&](A mu, A, A w) { m += w * mu; });
  for_each_component(mix, [&](A mu, A, A w) {
    const A d = mu - m;
    var += w * d * d;
  });
  A x = g * sqrt_acc(var + s.std_dev * s.std_dev) + m;
  A x1 = x, x2 = x;  // x_{i-1}, x_{i-2}
  for (int64_t it = 1; it <= n_steps; ++it) {
    const A xs = x * s.inv_s;
    A pdf = A(0), cdf = A(0);
    for_each_component(mix, [&](A mu, A logit, A w) { accumulate_pdf_cdf(xs - mu * s.inv_s, logit, w, pdf, cdf); });
    const A x_new = newton_update(x, c, pdf * s.norm, cdf, eps, s.bound);
    x2 = x1;
    x1 = x;
    x = x_new;
    if (x == x1 || x != x) return x;                                // fixed point or NaN: x_{n_steps} = x_it
    if (it >= 2 && x == x2) return ((n_steps - it) & 1) ? x1 : x;  // period 2: by the parity of the rest
  }
  return x;
}

// K is the same for every thread of a launch, so the branch does not diverge.
template <typename A, class Src>
__device__ __forceinline__ A solve_1d(const Src& src, const NewtonScale<A>& s, A g, A c, A eps, int64_t n_steps) {
  constexpr int kMax = kRegisterComponents<A>;
  if (src.K <= kMax) return newton_solve(RegisterMix<A, kMax>(src), s, g, c, eps, n_steps);
  return newton_solve(src, s, g, c, eps, n_steps);
}

// ------------------------------------------------------------------ gm1d_inverse_cdf

template <typename T>
__global__ void __launch_bounds__(kThreads) inverse_cdf_kernel(const Gm1dInverseCdfParams<T> prm) {
  using A = acc_t<T>;
  const Gm1dOperands<T>& gm = prm.gm;
  const int64_t P = gm.P, N = prm.N;
  const A eps = A(prm.eps), max_step = A(prm.max_step_size);
  const A lo = A(-1) + eps, hi = A(1) - eps;
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * N * P) {
    const int64_t p = item % P, bn = item / P;
    const int64_t n = bn % N, b = bn / N;
    int64_t off[5];
    prm.layout.offsets(b, off);
    const NewtonScale<A> s(A(load_acc(gm.logstds + off[1])), max_step);  // one std per batch element
    const A c = load_acc(prm.scaled_cdfs + off[3] + n * prm.scaled_cdfs_sn + p);
    A g;
    if (prm.gaussian_samples) {
      g = load_acc(prm.gaussian_samples + off[4] + n * prm.gaussian_samples_sn + p);
    } else {
      const A cc = c < lo ? lo : (c > hi ? hi : c);  // NaN stays NaN
      g = scaled_normal_quantile(cc);
    }
    const Gm1dComponents<T> src{gm.K, gm.means + off[kMeans] + p, gm.logweights + off[kLogweights] + p, gm.means_sk,
                                gm.logweights_sk};
    store_acc(prm.samples + item, solve_1d(src, s, g, c, eps, prm.n_steps));
  }
}

// Implicit-function gradients at the roots x_n: with N_k = w_k phi(z_k) / s and p = max(sum N_k, eps),
// d/dc = 1 / (2 p), d/dmu_k = N_k / p, d/dlogstd = sum_k N_k (x - mu_k) / p,
// d/dlambda_k = -w_k erf(z_k / sqrt 2) / (2 p). One thread per (batch, pixel) sums over the N
// samples. The per-component sums are held in registers for kBackwardChunk components at a time;
// every chunk re-walks the samples (recomputing the density), so K <= kBackwardChunk takes one pass.
template <typename T>
__global__ void __launch_bounds__(kThreads) inverse_cdf_backward_kernel(const Gm1dInverseCdfBackwardParams<T> prm) {
  using A = acc_t<T>;
  const Gm1dInverseCdfParams<T>& fwd = prm.fwd;
  const Gm1dOperands<T>& gm = fwd.gm;
  const int64_t K = gm.K, P = gm.P, N = fwd.N;
  const A eps = A(fwd.eps);
  const bool want_params = prm.grad_means || prm.grad_logweights || prm.grad_logstds;
  GMFLOW_GRID_STRIDE_LOOP(item, gm.batch * P) {
    const int64_t p = item % P, b = item / P;
    int64_t off[5];
    fwd.layout.offsets(b, off);
    const T* mu = gm.means + off[kMeans] + p;
    const T* lw = gm.logweights + off[kLogweights] + p;
    const A logstd = load_acc(gm.logstds + off[1]);
    const A inv_s = fast_exp(-logstd);
    // N_k of component k at x.
    const auto density = [&](int64_t k, A x, A& d, A& l) {
      const A m = load_acc(mu + k * gm.means_sk);
      l = load_acc(lw + k * gm.logweights_sk);
      d = x - m;
      const A z = d * inv_s;
      return fast_exp(l - A(0.5) * z * z - logstd) * A(kInvSqrt2Pi);
    };
    A g_ls = A(0);
    for (int64_t k0 = 0; k0 < K; k0 += kBackwardChunk) {
      A g_mu[kBackwardChunk], g_lw[kBackwardChunk];
#pragma unroll
      for (int j = 0; j < kBackwardChunk; ++j) g_mu[j] = g_lw[j] = A(0);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t row = (b * N + n) * P + p;  // (batch, N, P) contiguous
        const A x = load_acc(prm.samples + row);
        A pdf = A(0), d, l;
        for (int64_t k = 0; k < K; ++k) pdf += density(k, x, d, l);
        const A gp = A(load_acc(prm.grad + row)) / (pdf < eps ? eps : pdf);
        if (k0 == 0 && prm.grad_scaled_cdfs) store_acc(prm.grad_scaled_cdfs + row, A(0.5) * gp);
        if (!want_params) continue;
#pragma unroll
        for (int j = 0; j < kBackwardChunk; ++j) {
          const int64_t k = k0 + j;
          if (k < K) {
            const A ck = density(k, x, d, l);
            g_mu[j] += gp * ck;
            g_ls += gp * ck * d;
            g_lw[j] -= A(0.5) * gp * fast_exp(l) * scaled_normal_cdf(d * inv_s);
          }
        }
      }
      if (!want_params) break;  // grad_scaled_cdfs only: one pass
#pragma unroll
      for (int j = 0; j < kBackwardChunk; ++j) {
        const int64_t k = k0 + j;
        if (k < K) {
          if (prm.grad_means) store_acc(prm.grad_means + (b * K + k) * P + p, g_mu[j]);
          if (prm.grad_logweights) store_acc(prm.grad_logweights + (b * K + k) * P + p, g_lw[j]);
        }
      }
    }
    if (prm.grad_logstds) store_acc(prm.grad_logstds + b * P + p, g_ls);
  }
}

// ------------------------------------------------------------------ Knothe-Rosenblatt transport

// Operand pointers of one KR item (batch b, sample n, pixel p).
template <typename T>
struct KrItem {
  using A = acc_t<T>;
  const T* mu;   // means at (b, p): + k * means_sk + c * means_sc
  const T* lw;   // logweights at (b, p): + k * logweights_sk
  const T* x;    // samples at (b, n, p): + c * samples_sc
  const A* rot;  // V at (b, p): V[c][a] at + c * rotation_sc + a * rotation_sa
  A logstd;

  __device__ __forceinline__ KrItem(const GmKrParams<T>& prm, const int64_t (&off)[6], int64_t n, int64_t p)
      : mu(prm.gm.means + off[kMeans] + p),
        lw(prm.gm.logweights + off[kLogweights] + p),
        x(prm.samples + off[kSamples] + n * prm.samples_sn + p),
        rot(prm.rotation + off[4] + p * prm.rotation_sp),
        logstd(load_acc(prm.gm.logstds + off[kLogstds])) {}  // one std per batch element

  __device__ __forceinline__ A V(const GmKrParams<T>& prm, int64_t c, int64_t a) const {
    return rot[c * prm.rotation_sc + a * prm.rotation_sa];
  }

  // mu~[a][k] = sum_c mu_kc V_ca.
  __device__ __forceinline__ A rotated_mean(const GmKrParams<T>& prm, int64_t k, int64_t a) const {
    const T* mk = mu + k * prm.gm.means_sk;
    A acc = A(load_acc(mk)) * V(prm, 0, a);
    for (int64_t c = 1; c < prm.gm.C; ++c) acc += A(load_acc(mk + c * prm.gm.means_sc)) * V(prm, c, a);
    return acc;
  }
};

// Workspace slots of gm_kr_inverse (kr_workspace_slots(K, C) = K C + K + C per item):
// mu~[a][k] at a * K + k, S_k at C K + k, x~_c at C K + K + c.
template <typename A>
struct KrWorkspace {
  A* base;  // workspace + item
  int64_t items, K, C;
  __device__ __forceinline__ A* mut(int64_t a) const { return base + a * K * items; }  // + k * items
  __device__ __forceinline__ A* sq() const { return base + C * K * items; }            // + k * items
  __device__ __forceinline__ A& xt(int64_t c) const { return base[(C * K + K + c) * items]; }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) kr_inverse_kernel(const GmKrParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, N = prm.N, axes = prm.n_axes;
  const int64_t items = gm.batch * N * P;
  const A eps = A(prm.eps), max_step = A(prm.max_step_size);
  GMFLOW_GRID_STRIDE_LOOP(item, items) {
    const int64_t p = item % P, bn = item / P;
    const int64_t n = bn % N, b = bn / N;
    int64_t off[6];
    prm.layout.offsets(b, off);
    const KrItem<T> it(prm, off, n, p);
    const KrWorkspace<A> ws{prm.workspace + item, items, K, C};
    for (int64_t k = 0; k < K; ++k)
      for (int64_t a = 0; a < C; ++a) ws.mut(a)[k * items] = it.rotated_mean(prm, k, a);
    const NewtonScale<A> s(it.logstd, max_step);
    A* sq = ws.sq();
    KrConditional<T> cond{K, nullptr, sq, items, it.lw, gm.logweights_sk, true, A(0), A(0), A(1)};
    for (int64_t a = 0; a <= axes && a < C; ++a) {
      cond.mut = ws.mut(a);
      if (a > 0) {  // log_softmax(lambda - S / 2) of the solved axes
        cond.first = false;
        A max_value = neg_infinity<A>(), sum = A(0);
        for (int64_t k = 0; k < K; ++k) {
          const A l = A(load_acc(it.lw + k * gm.logweights_sk)) - A(0.5) * sq[k * items];
          max_value = l > max_value ? l : max_value;
        }
        for (int64_t k = 0; k < K; ++k)
          sum += fast_exp(A(load_acc(it.lw + k * gm.logweights_sk)) - A(0.5) * sq[k * items] - max_value);
        cond.max_value = max_value;
        cond.shift = max_value + fast_log(sum);
        cond.inv_sum = A(1) / sum;
      }
      if (a == axes) {  // axes >= n_axes: ancestral draw from the GM conditioned on the solved axes
        A total = A(0), mu_k, logit, w;
        for (int64_t k = 0; k < K; ++k) {
          cond.component(k, mu_k, logit, w);
          total += w;
        }
        CategoricalDraw<A> draw;
        draw.target = prm.uniforms[off[5] + n * prm.uniforms_sn + p] * total;
        for (int64_t k = 0; k < K; ++k) {
          cond.component(k, mu_k, logit, w);
          draw.push(k, w);
        }
        const int64_t chosen = draw.result();
        for (int64_t c = axes; c < C; ++c)
          ws.xt(c) = ws.mut(c)[chosen * items] + s.std_dev * A(load_acc(it.x + c * prm.samples_sc));
        break;
      }
      const A g = load_acc(it.x + a * prm.samples_sc);
      const A x_a = solve_1d(cond, s, g, scaled_normal_cdf(g), eps, prm.n_steps);
      ws.xt(a) = x_a;
      if (a + 1 < C) {
        for (int64_t k = 0; k < K; ++k) {
          const A z = (x_a - cond.mut[k * items]) * s.inv_s;
          sq[k * items] = (a == 0 ? A(0) : sq[k * items]) + z * z;
        }
      }
    }
    // Back to the channel basis: x_c = sum_a x~_a V_ca.
    T* out = prm.out + bn * C * P + p;
    for (int64_t c = 0; c < C; ++c) {
      A acc = A(0);
      for (int64_t a = 0; a < C; ++a) acc += ws.xt(a) * it.V(prm, c, a);
      store_acc(out + c * P, acc);
    }
  }
}

// Each rotated mean and coordinate is used once here, so they are computed in place; only the
// squared sums S_k go through the workspace (the S slots of kr_inverse's layout).
template <typename T>
__global__ void __launch_bounds__(kThreads) kr_forward_kernel(const GmKrParams<T> prm) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, N = prm.N, axes = prm.n_axes;
  const int64_t items = gm.batch * N * P;
  const A eps = A(prm.eps);
  const A lo = A(-1) + eps, hi = A(1) - eps;
  GMFLOW_GRID_STRIDE_LOOP(item, items) {
    const int64_t p = item % P, bn = item / P;
    const int64_t n = bn % N, b = bn / N;
    int64_t off[6];
    prm.layout.offsets(b, off);
    const KrItem<T> it(prm, off, n, p);
    const A inv_s = fast_exp(-it.logstd);
    A* sq = KrWorkspace<A>{prm.workspace + item, items, K, C}.sq();
    for (int64_t k = 0; k < K; ++k) sq[k * items] = A(0);
    T* out = prm.out + bn * axes * P + p;
    for (int64_t a = 0; a < axes; ++a) {
      A xa = A(0);  // x~_a = sum_c x_c V_ca
      for (int64_t c = 0; c < C; ++c) xa += A(load_acc(it.x + c * prm.samples_sc)) * it.V(prm, c, a);
      A max_value = neg_infinity<A>();
      for (int64_t k = 0; k < K; ++k) {
        const A e = A(load_acc(it.lw + k * gm.logweights_sk)) - A(0.5) * sq[k * items];
        max_value = e > max_value ? e : max_value;
      }
      A sum = A(0), u = A(0);
      for (int64_t k = 0; k < K; ++k) {
        const A e = A(load_acc(it.lw + k * gm.logweights_sk)) - A(0.5) * sq[k * items];
        const A wk = fast_exp(e - max_value);
        const A z = (xa - it.rotated_mean(prm, k, a)) * inv_s;
        sum += wk;
        u += wk * scaled_normal_cdf(z);
        if (a + 1 < axes) sq[k * items] += z * z;
      }
      A uc = u / sum;
      uc = uc < lo ? lo : (uc > hi ? hi : uc);
      store_acc(out + a * P, scaled_normal_quantile(uc));
    }
  }
}

}  // namespace

template <typename T>
const char* gm1d_inverse_cdf(const Gm1dInverseCdfParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.gm.batch * prm.N * prm.gm.P, inverse_cdf_kernel<T>, stream);
}

template <typename T>
const char* gm1d_inverse_cdf_backward(const Gm1dInverseCdfBackwardParams<T>& prm, void* stream) {
  return launch_grid(prm, prm.fwd.gm.batch * prm.fwd.gm.P, inverse_cdf_backward_kernel<T>, stream);
}

template <typename T>
const char* gm_kr_inverse(const GmKrInverseParams<T>& prm, void* stream) {
  if (!prm.workspace) return "gm_kr_inverse: no workspace (kr_workspace_slots(K, C) values per item)";
  return launch_grid(prm, prm.gm.batch * prm.N * prm.gm.P, kr_inverse_kernel<T>, stream);
}

template <typename T>
const char* gm_kr_forward(const GmKrForwardParams<T>& prm, void* stream) {
  if (!prm.workspace) return "gm_kr_forward: no workspace (kr_workspace_slots(K, C) values per item)";
  return launch_grid(prm, prm.gm.batch * prm.N * prm.gm.P, kr_forward_kernel<T>, stream);
}

#define GMFLOW_INSTANTIATE(T)                                                                                  \
  template const char* gm1d_inverse_cdf<T>(const Gm1dInverseCdfParams<T>&, void*);                            \
  template const char* gm1d_inverse_cdf_backward<T>(const Gm1dInverseCdfBackwardParams<T>&, void*);           \
  template const char* gm_kr_inverse<T>(const GmKrInverseParams<T>&, void*);                                         \
  template const char* gm_kr_forward<T>(const GmKrForwardParams<T>&, void*);

GMFLOW_INSTANTIATE(float)
GMFLOW_INSTANTIATE(double)
GMFLOW_INSTANTIATE(Half)
GMFLOW_INSTANTIATE(BFloat16)

}  // namespace cuda
}  // namespace gmflow
