// CPU kernels of gm1d_inverse_cdf (+ implicit backward) and the Knothe-Rosenblatt
// transport gm_kr_inverse / gm_kr_forward (torch-free).
//
// Newton solves (docs/ops.md#gm1d_inverse_cdf): x <- x - clamp((F(x) - c) / (2 max(pdf(x), eps)), +-max_step_size s),
// exactly n_steps times from the moment-matched quantile x0 = g sqrt(v) + m. The solver
// works on the lanes of a tile in chunks of kChunk lanes and stops iterating a lane as soon as
// its iterates have become periodic with period 1 or 2 (x_i == x_{i-1} or x_{i-2}, bit for bit): the
// update is a fixed function of x computed by the same code for every lane and iteration,
// so x_n is then known exactly (x_i or x_{i-1} by the parity of n - i) and the result equals
// that of running all n_steps iterations. Lanes still moving are compacted to the front, so
// the later iterations only cost what the slow lanes need.
//
// gm_kr_inverse (docs/ops.md#gm_kr_inverse) runs the whole per-pixel axis loop in one pass over a tile: rotate the
// means (mu~ = mu V), then for each rotated axis a: conditional logits lambda - S / 2
// (log-softmax), moment-matched init, Newton solve, S += ((x~_a - mu~_a) / s)^2; axes >= n_axes
// take an ancestral draw (component from the uniform, noise from the given normal); x = x~ V^T.
// gm_kr_forward (docs/ops.md#gm_kr_forward): u_a = sum_k softmax(lambda - S / 2)_k erf(z_ka / sqrt 2),
// g_a = sqrt 2 erfinv(clamp(u_a, +-(1 - eps))).
#include "gm_lanes.h"

namespace gmflow {
namespace cpu {
namespace GMFLOW_CPU_ISA {
namespace {

constexpr int64_t kChunk = 8;  // lanes per Newton work unit (one AVX2 vector of floats)

GMFLOW_ALWAYS_INLINE int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The 1-D mixtures of the lanes of one tile: [K][kLanes] component rows and per-lane state.
template <typename A>
struct NewtonSet {
  int64_t K = 0;
  A* mus = nullptr;    // mu_k / s
  A* logit = nullptr;  // lambda_k (pdf term exp(lambda_k - z^2 / 2))
  A* w = nullptr;      // exp(lambda_k) (cdf term)
  A inv_s[kLanes], norm[kLanes], bound[kLanes], c[kLanes];
  A x[kLanes], x1[kLanes], x2[kLanes];  // x_i, x_{i-1}, x_{i-2}
  A alive[kLanes];                      // 1: still iterating, 0: done or padding
  int64_t lane[kLanes];                 // tile lane of each position

  explicit NewtonSet(int64_t k, A* rows) : K(k), mus(rows), logit(rows + k * kLanes), w(rows + 2 * k * kLanes) {}

  GMFLOW_ALWAYS_INLINE void move(int64_t from, int64_t to) {
    for (int64_t k = 0; k < K; ++k) {
      mus[k * kLanes + to] = mus[k * kLanes + from];
      logit[k * kLanes + to] = logit[k * kLanes + from];
      w[k * kLanes + to] = w[k * kLanes + from];
    }
    inv_s[to] = inv_s[from];
    norm[to] = norm[from];
    bound[to] = bound[from];
    c[to] = c[from];
    x[to] = x[from];
    x1[to] = x1[from];
    x2[to] = x2[from];
    alive[to] = alive[from];
    lane[to] = lane[from];
  }
};

// One Newton iteration of the kChunk positions starting at j; shifts the iterate history.
// Returns the number of live positions whose iterates just became periodic (x_i == x_{i-1}
// or x_i == x_{i-2}).
template <typename A>
GMFLOW_ALWAYS_INLINE A newton_chunk(NewtonSet<A>& s, int64_t j, A eps) {
  A pdf[kChunk], cdf[kChunk], xs[kChunk];
#pragma omp simd
  for (int64_t v = 0; v < kChunk; ++v) {
    pdf[v] = A(0);
    cdf[v] = A(0);
    xs[v] = s.x[j + v] * s.inv_s[j + v];
  }
  for (int64_t k = 0; k < s.K; ++k) {
    const A* GMFLOW_RESTRICT mus = s.mus + k * kLanes + j;
    const A* GMFLOW_RESTRICT logit = s.logit + k * kLanes + j;
    const A* GMFLOW_RESTRICT w = s.w + k * kLanes + j;
#pragma omp simd
    for (int64_t v = 0; v < kChunk; ++v) accumulate_pdf_cdf(xs[v] - mus[v], logit[v], w[v], pdf[v], cdf[v]);
  }
  A periodic = A(0);
#pragma omp simd reduction(+ : periodic)
  for (int64_t v = 0; v < kChunk; ++v) {
    const int64_t i = j + v;
    const A x_new = newton_update(s.x[i], s.c[i], pdf[v] * s.norm[i], cdf[v], eps, s.bound[i]);
    s.x2[i] = s.x1[i];
    s.x1[i] = s.x[i];
    s.x[i] = x_new;
    // A NaN iterate stays NaN (x - delta), so it settles at once.
    periodic += (x_new == s.x1[i] || x_new == s.x2[i] || x_new != x_new) ? s.alive[i] : A(0);
  }
  return periodic;
}

// Runs n_steps Newton iterations on all kLanes positions (lanes >= count are padding) and
// writes x_{n_steps} of tile lane v to result[v] for v < count. s.x holds the initial values.
template <typename A>
GMFLOW_ALWAYS_INLINE void newton_solve(NewtonSet<A>& s, int64_t count, int64_t n_steps, A eps, A* result) {
  int64_t width = kLanes, active = count;
  for (int64_t v = 0; v < kLanes; ++v) {
    s.lane[v] = v;
    s.alive[v] = v < count ? A(1) : A(0);
    s.x1[v] = s.x[v];
    s.x2[v] = s.x[v];
  }
  for (int64_t it = 1; it <= n_steps; ++it) {
    for (int64_t j = 0; j < width; j += kChunk) {
      if (newton_chunk(s, j, eps) > A(0)) {
        for (int64_t i = j; i < j + kChunk; ++i) {
          if (s.alive[i] == A(0)) continue;
          if (s.x[i] == s.x1[i] || s.x[i] != s.x[i]) {  // fixed point (or NaN): every later iterate equals x_it
            result[s.lane[i]] = s.x[i];
          } else if (it >= 2 && s.x[i] == s.x2[i]) {  // period 2: x_{n_steps} is x_it or x_{it-1}
            result[s.lane[i]] = ((n_steps - it) & 1) ? s.x1[i] : s.x[i];
          } else {
            continue;
          }
          s.alive[i] = A(0);
          --active;
        }
      }
    }
    if (active == 0) return;
    const int64_t new_width = round_up(active, kChunk);
    if (2 * new_width <= width) {  // move the live lanes of [new_width, width) into free slots below
      int64_t to = 0;
      for (int64_t from = new_width; from < width; ++from) {
        if (s.alive[from] == A(0)) continue;
        while (s.alive[to] != A(0)) ++to;
        s.move(from, to);
        s.alive[from] = A(0);
      }
      width = new_width;
    }
  }
  for (int64_t v = 0; v < width; ++v)
    if (s.alive[v] != A(0)) result[s.lane[v]] = s.x[v];
}

// Moments and the Newton initialisation of the 1-D mixtures in s: mu holds the means
// [K][kLanes] (may be s.mus itself), s.logit and s.w hold lambda_k and exp(lambda_k);
// writes s.mus = mu / s and x0 = g sqrt(v) + m. g: standard normals of the lanes.
template <typename A>
GMFLOW_ALWAYS_INLINE void newton_prepare(NewtonSet<A>& s, const A* mu_rows, const A* GMFLOW_RESTRICT logstd,
                                         const A* GMFLOW_RESTRICT g, A max_step_size) {
  A m[kLanes], var[kLanes], std_dev[kLanes];
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) {
    std_dev[v] = fast_exp(logstd[v]);
    s.inv_s[v] = fast_exp(-logstd[v]);
    s.norm[v] = s.inv_s[v] * A(kInvSqrt2Pi);
    s.bound[v] = max_step_size * std_dev[v];
    m[v] = A(0);
    var[v] = A(0);
  }
  for (int64_t k = 0; k < s.K; ++k) {
    const A* GMFLOW_RESTRICT w = s.w + k * kLanes;
    const A* mu = mu_rows + k * kLanes;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) m[v] += w[v] * mu[v];
  }
  for (int64_t k = 0; k < s.K; ++k) {
    const A* GMFLOW_RESTRICT w = s.w + k * kLanes;
    const A* mu = mu_rows + k * kLanes;
    A* mus = s.mus + k * kLanes;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      const A mv = mu[v];
      const A d = mv - m[v];
      var[v] += w[v] * d * d;
      mus[v] = mv * s.inv_s[v];
    }
  }
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) s.x[v] = g[v] * std::sqrt(var[v] + std_dev[v] * std_dev[v]) + m[v];
}

// ------------------------------------------------------------------ gm1d_inverse_cdf

template <typename T>
LaneStrides<5> inverse_cdf_strides(const Gm1dInverseCdfParams<T>& prm, bool per_sample) {
  LaneStrides<5> st;
  const int64_t pixel[5] = {1, 0, 1, 1, 1};
  for (int t = 0; t < 5; ++t) st.pixel[t] = pixel[t];
  if (per_sample) {
    st.inner[3] = prm.scaled_cdfs_sn;
    st.inner[4] = prm.gaussian_samples_sn;
  }
  return st;
}

template <typename T>
GMFLOW_FLATTEN void inverse_cdf_range(const Gm1dInverseCdfParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const Gm1dOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, P = gm.P, N = prm.N;
  const A eps = A(prm.eps), max_step = A(prm.max_step_size);
  Scratch<A> scratch(3 * K * kLanes);
  NewtonSet<A> s(K, scratch.get());
  LaneTile<5> tile;
  for_each_lane_tile(prm.layout, inverse_cdf_strides(prm, true), N, P, begin, end, tile, [&](const LaneTile<5>& L) {
    A logstd[kLanes], g[kLanes], result[kLanes];
    gather(gm.logstds, L, 1, 0, 0, logstd);
    gather(prm.scaled_cdfs, L, 3, 1, 0, s.c);
    if (prm.gaussian_samples) {
      gather(prm.gaussian_samples, L, 4, 1, 0, g);
    } else {
      const A lo = A(-1) + eps, hi = A(1) - eps;
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        const A c = s.c[v] < lo ? lo : (s.c[v] > hi ? hi : s.c[v]);
        g[v] = scaled_normal_quantile(c);
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      gather(gm.means, L, 0, 1, k * gm.means_sk, s.mus + k * kLanes);
      A* lg = s.logit + k * kLanes;
      A* w = s.w + k * kLanes;
      gather(gm.logweights, L, 2, 1, k * gm.logweights_sk, lg);
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) w[v] = fast_exp(lg[v]);
    }
    newton_prepare(s, s.mus, logstd, g, max_step);
    newton_solve(s, L.count, prm.n_steps, eps, result);
    scatter(prm.samples, L, P, 0, result);
  });
}

template <typename T>
GMFLOW_FLATTEN void inverse_cdf_backward_range(const Gm1dInverseCdfBackwardParams<T>& prm, int64_t begin,
                                               int64_t end) {
  using A = acc_t<T>;
  const Gm1dInverseCdfParams<T>& fwd = prm.fwd;
  const Gm1dOperands<T>& gm = fwd.gm;
  const int64_t K = gm.K, P = gm.P, N = fwd.N;
  const A eps = A(fwd.eps);
  Scratch<A> scratch(5 * K * kLanes);
  A* mu = scratch.get();     // [K][kLanes]
  A* lw = mu + K * kLanes;   // [K][kLanes]
  A* comp = lw + K * kLanes;  // N_k = w_k phi(z_k) / s
  A* g_mu = comp + K * kLanes;
  A* g_lw = g_mu + K * kLanes;
  LaneTile<5> tile;
  for_each_lane_tile(fwd.layout, inverse_cdf_strides(fwd, false), 1, P, begin, end, tile, [&](const LaneTile<5>& L) {
    A logstd[kLanes], inv_s[kLanes], x[kLanes], grad[kLanes], pdf[kLanes], gp[kLanes], g_ls[kLanes], res[kLanes];
    gather(gm.logstds, L, 1, 0, 0, logstd);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      inv_s[v] = fast_exp(-logstd[v]);
      g_ls[v] = A(0);
    }
    for (int64_t k = 0; k < K; ++k) {
      gather(gm.means, L, 0, 1, k * gm.means_sk, mu + k * kLanes);
      gather(gm.logweights, L, 2, 1, k * gm.logweights_sk, lw + k * kLanes);
    }
    for (int64_t i = 0; i < K * kLanes; ++i) {
      g_mu[i] = A(0);
      g_lw[i] = A(0);
    }
    for (int64_t n = 0; n < N; ++n) {
      gather_rows(prm.samples, L, N * P, n * P, x);
      gather_rows(prm.grad, L, N * P, n * P, grad);
      for (int64_t v = 0; v < kLanes; ++v) pdf[v] = A(0);
      for (int64_t k = 0; k < K; ++k) {
        const A* m = mu + k * kLanes;
        const A* l = lw + k * kLanes;
        A* ck = comp + k * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          const A z = (x[v] - m[v]) * inv_s[v];
          ck[v] = fast_exp(l[v] - A(0.5) * z * z - logstd[v]) * A(kInvSqrt2Pi);
          pdf[v] += ck[v];
        }
      }
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        gp[v] = grad[v] / (pdf[v] < eps ? eps : pdf[v]);
        res[v] = A(0.5) * gp[v];
      }
      if (prm.grad_scaled_cdfs) scatter(prm.grad_scaled_cdfs, L, N * P, n * P, res);
      for (int64_t k = 0; k < K; ++k) {
        const A* m = mu + k * kLanes;
        const A* l = lw + k * kLanes;
        const A* ck = comp + k * kLanes;
        A* gm_k = g_mu + k * kLanes;
        A* gl_k = g_lw + k * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          const A d = x[v] - m[v];
          gm_k[v] += gp[v] * ck[v];
          g_ls[v] += gp[v] * ck[v] * d;
          gl_k[v] -= A(0.5) * gp[v] * fast_exp(l[v]) * scaled_normal_cdf(d * inv_s[v]);
        }
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      if (prm.grad_means) scatter(prm.grad_means, L, K * P, k * P, g_mu + k * kLanes);
      if (prm.grad_logweights) scatter(prm.grad_logweights, L, K * P, k * P, g_lw + k * kLanes);
    }
    if (prm.grad_logstds) scatter(prm.grad_logstds, L, P, 0, g_ls);
  });
}

// ------------------------------------------------------------------ Knothe-Rosenblatt transport

template <typename T>
LaneStrides<6> kr_strides(const GmKrParams<T>& prm) {
  LaneStrides<6> st;
  const int64_t inner[6] = {0, 0, 0, prm.samples_sn, 0, prm.uniforms_sn};
  const int64_t pixel[6] = {1, 0, 1, 1, prm.rotation_sp, 1};
  for (int t = 0; t < 6; ++t) {
    st.inner[t] = inner[t];
    st.pixel[t] = pixel[t];
  }
  return st;
}

// Rotation rows rot[c * axes + a] (a < axes) and rotated means mut[a][k] = sum_c mu_kc V_ca.
// mu_k: scratch of C rows.
template <typename T, typename A>
GMFLOW_ALWAYS_INLINE void kr_rotate_means(const GmKrParams<T>& prm, const LaneTile<6>& L, int64_t axes,
                                          A* GMFLOW_RESTRICT rot, A* GMFLOW_RESTRICT mut, A* GMFLOW_RESTRICT mu_k) {
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t a = 0; a < axes; ++a)
      gather(prm.rotation, L, 4, prm.rotation_sp, c * prm.rotation_sc + a * prm.rotation_sa, rot + (c * axes + a) * kLanes);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t c = 0; c < C; ++c) gather(gm.means, L, 0, 1, k * gm.means_sk + c * gm.means_sc, mu_k + c * kLanes);
    for (int64_t a = 0; a < axes; ++a) {
      A acc[kLanes];
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) acc[v] = mu_k[v] * rot[a * kLanes + v];
      for (int64_t c = 1; c < C; ++c) {
        const A* GMFLOW_RESTRICT mc = mu_k + c * kLanes;
        const A* GMFLOW_RESTRICT r = rot + (c * axes + a) * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) acc[v] += mc[v] * r[v];
      }
      A* GMFLOW_RESTRICT dst = mut + (a * K + k) * kLanes;
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) dst[v] = acc[v];
    }
  }
}

template <typename T>
GMFLOW_FLATTEN void kr_inverse_range(const GmKrParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, N = prm.N, axes = prm.n_axes;
  const A eps = A(prm.eps), max_step = A(prm.max_step_size);
  Scratch<A> scratch((C * C + C * K + 2 * K + 3 * C + 3 * K) * kLanes);
  A* rot = scratch.get();          // [C][C][kLanes]
  A* mut = rot + C * C * kLanes;   // [C][K][kLanes]
  A* lw = mut + C * K * kLanes;    // [K][kLanes]
  A* sq = lw + K * kLanes;         // [K][kLanes] running sum of squared normalised residuals
  A* g = sq + K * kLanes;          // [C][kLanes]
  A* xt = g + C * kLanes;          // [C][kLanes] rotated coordinates
  A* tmp = xt + C * kLanes;        // [C][kLanes]
  NewtonSet<A> s(K, tmp + C * kLanes);
  LaneTile<6> tile;
  for_each_lane_tile(prm.layout, kr_strides(prm), N, P, begin, end, tile, [&](const LaneTile<6>& L) {
    A logstd[kLanes], std_dev[kLanes], max_value[kLanes], sum[kLanes];
    gather(gm.logstds, L, 1, 0, 0, logstd);
    kr_rotate_means(prm, L, C, rot, mut, tmp);
    for (int64_t k = 0; k < K; ++k) gather(gm.logweights, L, 2, 1, k * gm.logweights_sk, lw + k * kLanes);
    for (int64_t c = 0; c < C; ++c) gather(prm.samples, L, 3, 1, c * prm.samples_sc, g + c * kLanes);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) std_dev[v] = fast_exp(logstd[v]);
    for (int64_t a = 0; a <= axes && a < C; ++a) {
      // Conditional logits of axis a: lambda (a = 0) or log_softmax(lambda - S / 2), and their weights.
      if (a == 0) {
        for (int64_t k = 0; k < K; ++k) {
          A* l = s.logit + k * kLanes;
          A* w = s.w + k * kLanes;
          const A* lk = lw + k * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) {
            l[v] = lk[v];
            w[v] = fast_exp(lk[v]);
          }
        }
      } else {
        for (int64_t v = 0; v < kLanes; ++v) {
          max_value[v] = neg_infinity<A>();
          sum[v] = A(0);
        }
        for (int64_t k = 0; k < K; ++k) {
          A* l = s.logit + k * kLanes;
          const A* lk = lw + k * kLanes;
          const A* sk = sq + k * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) {
            l[v] = lk[v] - A(0.5) * sk[v];
            max_value[v] = l[v] > max_value[v] ? l[v] : max_value[v];
          }
        }
        for (int64_t k = 0; k < K; ++k) {
          const A* l = s.logit + k * kLanes;
          A* w = s.w + k * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) {
            w[v] = fast_exp(l[v] - max_value[v]);
            sum[v] += w[v];
          }
        }
        A shift[kLanes], inv_sum[kLanes];
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          shift[v] = max_value[v] + fast_log(sum[v]);
          inv_sum[v] = A(1) / sum[v];
        }
        for (int64_t k = 0; k < K; ++k) {
          A* l = s.logit + k * kLanes;
          A* w = s.w + k * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) {
            l[v] -= shift[v];
            w[v] *= inv_sum[v];
          }
        }
      }
      if (a == axes) {  // axes >= n_axes: ancestral draw from the GM conditioned on the solved axes
        A u[kLanes], total[kLanes];
        int64_t chosen[kLanes];
        CategoricalDraw<A> draw[kLanes];
        gather(prm.uniforms, L, 5, 1, 0, u);
        for (int64_t v = 0; v < kLanes; ++v) total[v] = A(0);
        for (int64_t k = 0; k < K; ++k) {  // weights of the conditional
          const A* wk = s.w + k * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) total[v] += wk[v];
        }
        for (int64_t v = 0; v < kLanes; ++v) draw[v].target = u[v] * total[v];
        for (int64_t k = 0; k < K; ++k) {
          const A* wk = s.w + k * kLanes;
          for (int64_t v = 0; v < kLanes; ++v) draw[v].push(k, wk[v]);
        }
        for (int64_t v = 0; v < kLanes; ++v) chosen[v] = draw[v].result();
        for (int64_t b = axes; b < C; ++b)
          for (int64_t v = 0; v < kLanes; ++v)
            xt[b * kLanes + v] = mut[(b * K + chosen[v]) * kLanes + v] + std_dev[v] * g[b * kLanes + v];
        break;
      }
      // Newton solve of axis a from the moment-matched quantile of the conditional.
      const A* ga = g + a * kLanes;
      newton_prepare(s, mut + a * K * kLanes, logstd, ga, max_step);
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) s.c[v] = scaled_normal_cdf(ga[v]);
      A* x_a = xt + a * kLanes;
      newton_solve(s, L.count, prm.n_steps, eps, x_a);
      for (int64_t v = L.count; v < kLanes; ++v) x_a[v] = x_a[L.count - 1];
      if (a + 1 < C) {
        A inv_s[kLanes];
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) inv_s[v] = fast_exp(-logstd[v]);
        for (int64_t k = 0; k < K; ++k) {
          const A* m = mut + (a * K + k) * kLanes;
          A* sk = sq + k * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) {
            const A z = (x_a[v] - m[v]) * inv_s[v];
            sk[v] = (a == 0 ? A(0) : sk[v]) + z * z;
          }
        }
      }
    }
    // Back to the channel basis: x_c = sum_a x~_a V_ca.
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t v = 0; v < kLanes; ++v) tmp[v] = A(0);
      for (int64_t a = 0; a < C; ++a) {
        const A* r = rot + (c * C + a) * kLanes;
        const A* xa = xt + a * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) tmp[v] += xa[v] * r[v];
      }
      scatter(prm.out, L, C * P, c * P, tmp);
    }
  });
}

template <typename T>
GMFLOW_FLATTEN void kr_forward_range(const GmKrParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, N = prm.N, axes = prm.n_axes;
  const A eps = A(prm.eps);
  Scratch<A> scratch((C * axes + axes * K + 3 * K + axes + C) * kLanes);
  A* rot = scratch.get();             // [C][axes][kLanes]
  A* mut = rot + C * axes * kLanes;   // [axes][K][kLanes]
  A* lw = mut + axes * K * kLanes;    // [K][kLanes]
  A* sq = lw + K * kLanes;            // [K][kLanes]
  A* e = sq + K * kLanes;             // [K][kLanes]
  A* xt = e + K * kLanes;             // [axes][kLanes]
  A* tmp = xt + axes * kLanes;        // [C][kLanes]
  LaneTile<6> tile;
  for_each_lane_tile(prm.layout, kr_strides(prm), N, P, begin, end, tile, [&](const LaneTile<6>& L) {
    A logstd[kLanes], inv_s[kLanes], max_value[kLanes], sum[kLanes], u[kLanes];
    gather(gm.logstds, L, 1, 0, 0, logstd);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) inv_s[v] = fast_exp(-logstd[v]);
    kr_rotate_means(prm, L, axes, rot, mut, tmp);
    for (int64_t i = 0; i < axes * kLanes; ++i) xt[i] = A(0);
    for (int64_t c = 0; c < C; ++c) {
      gather(prm.samples, L, 3, 1, c * prm.samples_sc, tmp);
      for (int64_t a = 0; a < axes; ++a) {
        A* xa = xt + a * kLanes;
        const A* r = rot + (c * axes + a) * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) xa[v] += tmp[v] * r[v];
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      gather(gm.logweights, L, 2, 1, k * gm.logweights_sk, lw + k * kLanes);
      for (int64_t v = 0; v < kLanes; ++v) sq[k * kLanes + v] = A(0);
    }
    for (int64_t a = 0; a < axes; ++a) {
      for (int64_t v = 0; v < kLanes; ++v) {
        max_value[v] = neg_infinity<A>();
        sum[v] = A(0);
        u[v] = A(0);
      }
      for (int64_t k = 0; k < K; ++k) {
        A* ek = e + k * kLanes;
        const A* lk = lw + k * kLanes;
        const A* sk = sq + k * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          ek[v] = lk[v] - A(0.5) * sk[v];
          max_value[v] = ek[v] > max_value[v] ? ek[v] : max_value[v];
        }
      }
      const A* xa = xt + a * kLanes;
      for (int64_t k = 0; k < K; ++k) {
        A* ek = e + k * kLanes;
        A* sk = sq + k * kLanes;
        const A* m = mut + (a * K + k) * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          const A wk = fast_exp(ek[v] - max_value[v]);
          const A z = (xa[v] - m[v]) * inv_s[v];
          sum[v] += wk;
          u[v] += wk * scaled_normal_cdf(z);
          sk[v] += z * z;
        }
      }
      const A lo = A(-1) + eps, hi = A(1) - eps;
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        A uc = u[v] / sum[v];
        uc = uc < lo ? lo : (uc > hi ? hi : uc);
        tmp[v] = scaled_normal_quantile(uc);
      }
      scatter(prm.out, L, axes * P, a * P, tmp);
    }
  });
}

}  // namespace

template <typename T>
void gm1d_inverse_cdf(const Gm1dInverseCdfParams<T>& prm, const ParallelFor& pf) {
  run_items(prm, prm.gm.batch * prm.N * prm.gm.P, prm.gm.K * (2 * prm.n_steps + 4), pf,
            [](const auto& q, int64_t b, int64_t e) { inverse_cdf_range(q, b, e); });
}

template <typename T>
void gm1d_inverse_cdf_backward(const Gm1dInverseCdfBackwardParams<T>& prm, const ParallelFor& pf) {
  const Gm1dOperands<T>& gm = prm.fwd.gm;
  run_items(prm, gm.batch * gm.P, gm.K * 6 * std::max<int64_t>(prm.fwd.N, 1), pf,
            [](const auto& q, int64_t b, int64_t e) { inverse_cdf_backward_range(q, b, e); });
}

template <typename T>
void gm_kr_inverse(const GmKrInverseParams<T>& prm, const ParallelFor& pf) {
  const GmOperands<T>& gm = prm.gm;
  run_items(prm, gm.batch * prm.N * gm.P, gm.K * gm.C * (2 * prm.n_steps + gm.C + 4), pf,
            [](const auto& q, int64_t b, int64_t e) { kr_inverse_range(q, b, e); });
}

template <typename T>
void gm_kr_forward(const GmKrForwardParams<T>& prm, const ParallelFor& pf) {
  const GmOperands<T>& gm = prm.gm;
  run_items(prm, gm.batch * prm.N * gm.P, gm.K * gm.C * (gm.C + 6), pf,
            [](const auto& q, int64_t b, int64_t e) { kr_forward_range(q, b, e); });
}

#define GMFLOW_INSTANTIATE_TRANSPORT(T)                                                                  \
  template void gm1d_inverse_cdf<T>(const Gm1dInverseCdfParams<T>&, const ParallelFor&);                 \
  template void gm1d_inverse_cdf_backward<T>(const Gm1dInverseCdfBackwardParams<T>&, const ParallelFor&); \
  template void gm_kr_inverse<T>(const GmKrInverseParams<T>&, const ParallelFor&);                              \
  template void gm_kr_forward<T>(const GmKrForwardParams<T>&, const ParallelFor&);

GMFLOW_INSTANTIATE_TRANSPORT(float)
GMFLOW_INSTANTIATE_TRANSPORT(double)
GMFLOW_INSTANTIATE_TRANSPORT(Half)
GMFLOW_INSTANTIATE_TRANSPORT(BFloat16)

}  // namespace GMFLOW_CPU_ISA
}  // namespace cpu
}  // namespace gmflow
