// CPU kernels of gm_mul_iso_gaussian, gm_posterior_mean (+ backward) and gm_sample (torch-free).
//
// All three work per (batch, [sample,] pixel) item on lane tiles (gm_lanes.h) and loop over
// the K components of each item in registers/L1: no (K, C, H, W)-sized temporary exists.
//
//   gm_mul_iso_gaussian (docs/ops.md#gm_mul_iso_gaussian), v_k = s_k^2, n_k = max(v_g + r v_k, eps):
//     mu'_k = (v_g mu_k + r v_k m_g) / n_k
//     lambda' = log_softmax_k(lambda_k - r |mu_k - m_g|^2 / (2 n_k) [- C/2 log n_k, per-component s])
//     logstd'_k = logstd_k + 1/2 log v_g - 1/2 log n_k
//   gm_posterior_mean (docs/ops.md#gm_posterior_mean, natural-parameter form), sigmas clamped at eps:
//     zeta = (a_t / s_t)^2 - (a_s / s_s)^2,  nu = a_t x_t / s_t^2 - a_s x_s / s_s^2,
//     den_k = max(v_k zeta + 1, eps),  mu'_k = (v_k nu + mu_k) / den_k,
//     logit_k = lambda_k + sum_c mu_kc (nu_c - zeta mu_kc / 2) / den_k
//               [+ v_k |nu|^2 / (2 den_k) - C/2 log den_k, per-component s],
//     mean = sum_k softmax_k(logit)_k mu'_k  (one pass, online softmax)
//   gm_sample (docs/ops.md#gm_sample): component = first k with cumsum_k(e) > u sum(e), e = exp(power lambda - max),
//     sample = mu_k + s_k (/ sqrt power if cov_sharpen) * normal.
#include "gm_lanes.h"
#include "gm_vec.h"

namespace gmflow {
namespace cpu {
namespace GMFLOW_CPU_ISA {
namespace {

template <typename A>
GMFLOW_ALWAYS_INLINE A clamp_min(A x, A lo) {
  return x < lo ? lo : x;  // NaN stays NaN
}

// Online softmax-weighted sum over k, one lane per item: folds (logit, values[c][lane]) into
// (max, sum, acc[c]) with one exp per update. Zero-weight components (-inf) contribute nothing.
template <typename A>
GMFLOW_ALWAYS_INLINE void online_softmax_push(int64_t C, const A* GMFLOW_RESTRICT logit, const A* const* values,
                                              A* GMFLOW_RESTRICT max_value, A* GMFLOW_RESTRICT sum,
                                              A* GMFLOW_RESTRICT acc) {
  A keep[kLanes], add[kLanes];  // acc <- acc * keep + value * add
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) {
    const A d = logit[v] - max_value[v];
    const A ev = fast_exp(-(d < A(0) ? -d : d));
    const bool zero = logit[v] == neg_infinity<A>();
    const A e = zero ? A(0) : ev;
    const bool grow = !(d <= A(0)) && !zero;  // NaN grows, so it propagates
    keep[v] = grow ? e : A(1);
    add[v] = grow ? A(1) : e;
    sum[v] = sum[v] * keep[v] + add[v];
    max_value[v] = grow ? logit[v] : max_value[v];
  }
  for (int64_t c = 0; c < C; ++c) {
    A* a = acc + c * kLanes;
    const A* GMFLOW_RESTRICT x = values[c];
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) a[v] = a[v] * keep[v] + x[v] * add[v];
  }
}

// ------------------------------------------------------------------ gm_mul_iso_gaussian

// The GM of a chunk of single-pixel items: operand pointers and the one log-std of each item.
template <typename T, typename A = acc_t<T>>
struct ItemChunk {
  const T* means[kItems];
  const T* logweights[kItems];
  A log_std[kItems] = {};

  // Loads items i0 .. i0+count and calls op_operands(i, offsets) for the op's own operands.
  template <int kOps, class F>
  GMFLOW_ALWAYS_INLINE void load(const GmOperands<T>& gm, const BatchLayout<kOps>& layout, int64_t i0, int64_t count,
                                 const F& op_operands) {
    for (int64_t i = 0; i < count; ++i) {
      int64_t off[kOps];
      layout.offsets(i0 + i, off);
      means[i] = gm.means + off[kMeans];
      log_std[i] = load_acc(gm.logstds + off[kLogstds]);
      logweights[i] = gm.logweights + off[kLogweights];
      op_operands(i, off);
    }
  }
};

// Single-pixel images with one std per item (the toy): a chunk of items at a time, an item's
// components in the vector lanes; the per-item factors and the final logs run over the chunk.
template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void mul_iso_items(const GmMulIsoGaussianParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K;
  const A r = A(prm.ratio), eps = A(prm.eps);
  A logits[kItems][kBlock];
  for (int64_t i0 = begin; i0 < end; i0 += kItems) {
    const int64_t count = std::min(kItems, end - i0);
    A var_g[kItems] = {}, g_mean[kC][kItems] = {};
    ItemChunk<T> items;
    const A* log_std = items.log_std;
    items.load(gm, prm.layout, i0, count, [&](int64_t i, const int64_t(&off)[5]) {
      for (int c = 0; c < kC; ++c) g_mean[c][i] = load_acc(prm.gaussian_mean + off[3] + c * prm.gaussian_mean_sc);
      var_g[i] = load_acc(prm.gaussian_var + off[4]);
    });
    A a[kItems], b[kItems], half_r_inv_n[kItems], out_log_std[kItems], lse[kItems];
    A block_max[kItems] = {}, block_sum[kItems] = {};
#pragma omp simd
    for (int64_t i = 0; i < kItems; ++i) {
      const A var = fast_exp(A(2) * log_std[i]);
      const A n = clamp_min(var_g[i] + r * var, eps);
      const A inv_n = A(1) / n;
      a[i] = var_g[i] * inv_n;
      b[i] = r * var * inv_n;
      half_r_inv_n[i] = A(0.5) * r * inv_n;
      out_log_std[i] = log_std[i] + A(0.5) * fast_log(var_g[i]) - A(0.5) * fast_log(n);
    }
    for (int64_t i = 0; i < count; ++i) {
      A m[kC];
      for (int c = 0; c < kC; ++c) m[c] = g_mean[c][i];
      const A ai = a[i], bi = b[i], h = half_r_inv_n[i];
      const T* mu = items.means[i];
      T* out_mu = prm.out_means + (i0 + i) * K * kC;
      A* logit = logits[i];
      with_unit_stride(gm.logweights_sk, [&](auto sk) {
#pragma omp simd
        for (int64_t j = 0; j < K; ++j) {
          A q = A(0);
          for (int c = 0; c < kC; ++c) {
            const A x = load_acc(mu + j * kC + c);
            store_acc(out_mu + j * kC + c, ai * x + bi * m[c]);
            const A d = x - m[c];
            q += d * d;
          }
          logit[j] = load_acc(items.logweights[i] + j * sk) - h * q;
        }
      });
      block_logsumexp(logit, K, block_max[i], block_sum[i]);
    }
    // The chunk's logs, vectorised.
#pragma omp simd
    for (int64_t i = 0; i < kItems; ++i) lse[i] = lse_result(block_max[i], block_sum[i]);
    for (int64_t i = 0; i < count; ++i) {
      T* out_lw = prm.out_logweights + (i0 + i) * K;
      const A* logit = logits[i];
      const A l = lse[i];
#pragma omp simd
      for (int64_t j = 0; j < K; ++j) store_acc(out_lw + j, logit[j] - l);
      store_acc(prm.out_logstds + (i0 + i), out_log_std[i]);
    }
  }
}

// Component k of a lane tile with one std per lane and C = kC: one pass over the lanes reads the
// component's kC mean rows, writes its kC moved rows, and keeps the squared distance in a register
// (a loop per channel would store and reload it). Writes the logits and updates their running max.
template <int kC, int64_t kLanes, typename T, typename A>
GMFLOW_ALWAYS_INLINE void mul_iso_component(const GmMulIsoGaussianParams<T>& prm, const LaneTile<5, kLanes>& L,
                                            int64_t k, const A* GMFLOW_RESTRICT a, const A* GMFLOW_RESTRICT shift,
                                            const A* GMFLOW_RESTRICT g_mean, const A* GMFLOW_RESTRICT half_r_inv_n,
                                            A* copies, A* GMFLOW_RESTRICT logit, A* GMFLOW_RESTRICT max_value) {
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, P = gm.P;
  const A* x[kC];
  A* moved[kC];
  for (int c = 0; c < kC; ++c) {
    x[c] = gather_view(gm.means, L, 0, 1, k * gm.means_sk + c * gm.means_sc, copies + c * kLanes);
    moved[c] = scatter_slot(prm.out_means, L, K * kC * P, (k * kC + c) * P, copies + (kC + c) * kLanes);
  }
  // One pointer and a channel stride each (the rows are in place or all copies): eight row
  // pointers would not stay in registers through the loop.
  const A* GMFLOW_RESTRICT x0 = x[0];
  A* GMFLOW_RESTRICT moved0 = moved[0];
  const int64_t x_sc = kC > 1 ? x[kC - 1] - x[kC - 2] : 0, moved_sc = kC > 1 ? moved[kC - 1] - moved[kC - 2] : 0;
  const A* GMFLOW_RESTRICT lw = gather_view(gm.logweights, L, 2, 1, k * gm.logweights_sk, copies + 2 * kC * kLanes);
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) {
    A q = A(0);
    for (int c = 0; c < kC; ++c) {
      const A xv = x0[c * x_sc + v];
      moved0[c * moved_sc + v] = a[v] * xv + shift[c * kLanes + v];
      const A d = xv - g_mean[c * kLanes + v];
      q += d * d;
    }
    const A l = lw[v] - half_r_inv_n[v] * q;
    logit[v] = l;
    max_value[v] = l > max_value[v] || l != l ? l : max_value[v];  // NaN stays
  }
  for (int c = 0; c < kC; ++c) scatter_done(prm.out_means, L, K * kC * P, (k * kC + c) * P, moved[c]);
}

// Lane tiles of kLanes items (gm_lanes.h).
template <int64_t kLanes, typename T>
GMFLOW_SEPARATE_NEST void mul_iso_tiles(const GmMulIsoGaussianParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, Kl = gm.logstds_k, Po = prm.out_logstds_p;
  const bool per_component = Kl != 1;
  const A r = A(prm.ratio), eps = A(prm.eps);
  LaneStrides<5> st;
  const int64_t pixel[5] = {1, gm.logstds_sp, 1, 1, prm.gaussian_var_sp};
  for (int t = 0; t < 5; ++t) st.pixel[t] = pixel[t];
  const bool fused_channels = !per_component && C >= 1 && C <= 4;
  Scratch<A> scratch((C + K) * kLanes + (fused_channels ? (3 * C + 1) * kLanes : 0));
  A* g_mean = scratch.get();        // [C][kLanes]
  A* logits = g_mean + C * kLanes;  // [K][kLanes]
  A* shift = logits + K * kLanes;   // fused channels: [C][kLanes] b m, then row copies
  A* copies = shift + C * kLanes;
  LaneTile<5, kLanes> tile;
  for_each_lane_tile(prm.layout, st, 1, P, begin, end, tile, [&](const LaneTile<5, kLanes>& L) {
    A var_g[kLanes], half_log_var_g[kLanes], ls[kLanes], var[kLanes], n[kLanes], inv_n[kLanes], log_n[kLanes];
    A a[kLanes], b[kLanes], q[kLanes], half_r_inv_n[kLanes];
    A mu[kLanes], out[kLanes], max_value[kLanes], lw[kLanes];
    gather(prm.gaussian_var, L, 4, prm.gaussian_var_sp, 0, var_g);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      half_log_var_g[v] = A(0.5) * fast_log(var_g[v]);
      max_value[v] = neg_infinity<A>();
    }
    for (int64_t c = 0; c < C; ++c) gather(prm.gaussian_mean, L, 3, 1, c * prm.gaussian_mean_sc, g_mean + c * kLanes);
    // The factors of component k's std (the same for every k with a shared std), and its output std.
    const auto std_factors = [&](int64_t k) {
      gather(gm.logstds, L, 1, gm.logstds_sp, per_component ? k * gm.logstds_sk : 0, ls);
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        var[v] = fast_exp(A(2) * ls[v]);
        n[v] = clamp_min(var_g[v] + r * var[v], eps);
        inv_n[v] = A(1) / n[v];
        a[v] = var_g[v] * inv_n[v];
        b[v] = r * var[v] * inv_n[v];
        log_n[v] = fast_log(n[v]);
        out[v] = ls[v] + half_log_var_g[v] - A(0.5) * log_n[v];
      }
      if (Po == P) {
        scatter(prm.out_logstds, L, Kl * Po, k * Po, out);
      } else {  // one std per (batch, k): written by the lane of pixel 0
        for (int64_t v = 0; v < L.count; ++v)
          if (L.p[v] == 0) store_acc(prm.out_logstds + L.row[v] * Kl * Po + k * Po, out[v]);
      }
    };
    if (fused_channels) {  // one std per lane
      std_factors(0);
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) half_r_inv_n[v] = A(0.5) * r * inv_n[v];
      for (int64_t c = 0; c < C; ++c) {
        A* sh = shift + c * kLanes;
        const A* m = g_mean + c * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) sh[v] = b[v] * m[v];
      }
      dispatch_packed_channels(C, true, [&]<int kC>() {
        if constexpr (kC > 0)
          for (int64_t k = 0; k < K; ++k)
            mul_iso_component<kC, kLanes>(prm, L, k, a, shift, g_mean, half_r_inv_n, copies, logits + k * kLanes,
                                          max_value);
      });
    }
    for (int64_t k = 0; k < K && !fused_channels; ++k) {
      if (k < Kl) std_factors(k);  // a shared std: the same factors for every component
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) q[v] = A(0);
      for (int64_t c = 0; c < C; ++c) {
        const A* GMFLOW_RESTRICT x = gather_view(gm.means, L, 0, 1, k * gm.means_sk + c * gm.means_sc, mu);
        const A* GMFLOW_RESTRICT m = g_mean + c * kLanes;
        const int64_t at = (k * C + c) * P;
        A* GMFLOW_RESTRICT moved = scatter_slot(prm.out_means, L, K * C * P, at, out);
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          moved[v] = a[v] * x[v] + b[v] * m[v];
          const A d = x[v] - m[v];
          q[v] += d * d;
        }
        scatter_done(prm.out_means, L, K * C * P, at, moved);
      }
      const A* GMFLOW_RESTRICT lw_k = gather_view(gm.logweights, L, 2, 1, k * gm.logweights_sk, lw);
      A* logit = logits + k * kLanes;
      const A half_c = A(0.5) * A(C);
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        A l = lw_k[v] - A(0.5) * r * q[v] * inv_n[v];
        l = per_component ? l - half_c * log_n[v] : l;
        logit[v] = l;
        max_value[v] = l > max_value[v] ? l : max_value[v];
      }
    }
    A sum[kLanes], lse[kLanes];
    for (int64_t v = 0; v < kLanes; ++v) sum[v] = A(0);
    for (int64_t k = 0; k < K; ++k) {
      const A* logit = logits + k * kLanes;
      if (fused_channels) {  // its max keeps a NaN: exp_clamped's result for NaN and -inf cannot matter
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) sum[v] += exp_clamped(logit[v] - max_value[v]);
      } else {
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) sum[v] += fast_exp(logit[v] - max_value[v]);
      }
    }
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) lse[v] = max_value[v] + fast_log(sum[v]);
    for (int64_t k = 0; k < K; ++k) {
      const A* logit = logits + k * kLanes;
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) out[v] = logit[v] - lse[v];
      scatter(prm.out_logweights, L, K * P, k * P, out);
    }
  });
}

template <typename T>
GMFLOW_FLATTEN void mul_iso_range(const GmMulIsoGaussianParams<T>& prm, int64_t begin, int64_t end) {
  const GmOperands<T>& gm = prm.gm;
  if (gm.P == 1 && single_pixel_items(gm)) {
    return dispatch_packed_channels(gm.C, true, [&]<int kC>() {
      if constexpr (kC > 0) mul_iso_items<kC>(prm, begin, end);
    });
  }
  if (wide_tiles(gm.P)) return mul_iso_tiles<kWideLanes>(prm, begin, end);
  mul_iso_tiles<kLanes>(prm, begin, end);
}

// ------------------------------------------------------------------ gm_posterior_mean

// Per-tile constants of the posterior-mean conversion.
template <typename A>
struct PosteriorTile {
  A zeta[kLanes], sq[kLanes];
  A* nu;  // [C][kLanes]
};

template <typename T, typename A>
GMFLOW_ALWAYS_INLINE void posterior_setup(const GmPosteriorMeanParams<T>& prm, const LaneTile<7>& L,
                                          PosteriorTile<A>& pt, A* work) {
  const int64_t C = prm.gm.C;
  const A eps = A(prm.eps);
  A s_src[kLanes], s_tgt[kLanes], c_src[kLanes], c_tgt[kLanes], x[kLanes];
  gather(prm.sigma_src, L, 5, 0, 0, s_src);
  gather(prm.sigma_tgt, L, 6, 0, 0, s_tgt);
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) {
    const A ss = clamp_min(s_src[v], eps), stt = clamp_min(s_tgt[v], eps);
    const A as = A(1) - ss, at = A(1) - stt;
    pt.zeta[v] = (at / stt) * (at / stt) - (as / ss) * (as / ss);
    c_src[v] = as / (ss * ss);
    c_tgt[v] = at / (stt * stt);
    pt.sq[v] = A(0);
  }
  pt.nu = work;
  for (int64_t c = 0; c < C; ++c) {
    A* nu = pt.nu + c * kLanes;
    gather(prm.x_tgt, L, 4, 1, c * prm.x_tgt_sc, nu);
    gather(prm.x_src, L, 3, 1, c * prm.x_src_sc, x);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      nu[v] = c_tgt[v] * nu[v] - c_src[v] * x[v];
      pt.sq[v] += nu[v] * nu[v];
    }
  }
}

// Component k of every lane: the raw means (mu_rows[c]: the operand itself, or a copy in
// mu_scratch[C][kLanes]), the moved means (into moved[C][kLanes], unless null), the logit and the
// pieces the backward needs (var, den, its derivative factor, 1 / den, Q = sum_c mu (nu - zeta mu / 2)).
// var, den, dden and inv are only recomputed when the std changes (k = 0 or per-component stds).
template <typename T, typename A>
GMFLOW_ALWAYS_INLINE void posterior_component(const GmPosteriorMeanParams<T>& prm, const LaneTile<7>& L,
                                              const PosteriorTile<A>& pt, int64_t k, A* GMFLOW_RESTRICT var,
                                              A* GMFLOW_RESTRICT den, A* GMFLOW_RESTRICT dden,
                                              A* GMFLOW_RESTRICT inv, A* GMFLOW_RESTRICT q,
                                              A* GMFLOW_RESTRICT logit, A* GMFLOW_RESTRICT moved,
                                              A* GMFLOW_RESTRICT mu_scratch, const A** mu_rows) {
  const GmOperands<T>& gm = prm.gm;
  const int64_t C = gm.C;
  const bool per_component = gm.logstds_k != 1;
  const A eps = A(prm.eps);
  if (k == 0 || per_component) {
    A ls[kLanes];
    gather(gm.logstds, L, 1, gm.logstds_sp, per_component ? k * gm.logstds_sk : 0, ls);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      var[v] = fast_exp(A(2) * ls[v]);
      const A raw = var[v] * pt.zeta[v] + A(1);
      den[v] = clamp_min(raw, eps);
      dden[v] = raw > eps ? pt.zeta[v] : A(0);
      inv[v] = A(1) / den[v];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const A* GMFLOW_RESTRICT mu =
        gather_view(gm.means, L, 0, 1, k * gm.means_sk + c * gm.means_sc, mu_scratch + c * kLanes);
    mu_rows[c] = mu;
    const A* nu = pt.nu + c * kLanes;
    A* mv = moved ? moved + c * kLanes : nullptr;
    const bool first = c == 0;  // q starts at channel 0 (no separate zeroing pass)
    if (moved) {
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) mv[v] = (var[v] * nu[v] + mu[v]) * inv[v];
    }
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) q[v] = (first ? A(0) : q[v]) + mu[v] * (nu[v] - A(0.5) * pt.zeta[v] * mu[v]);
  }
  A lw_copy[kLanes];
  const A* GMFLOW_RESTRICT lw = gather_view(gm.logweights, L, 2, 1, k * gm.logweights_sk, lw_copy);
  if (per_component) {  // separate loops: a simd loop would evaluate the log for a shared std too
    const A half_c = A(0.5) * A(C);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v)
      logit[v] = lw[v] + q[v] * inv[v] + A(0.5) * var[v] * pt.sq[v] * inv[v] - half_c * fast_log(den[v]);
  } else {
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) logit[v] = lw[v] + q[v] * inv[v];
  }
}

template <typename T>
LaneStrides<7> posterior_strides(const GmPosteriorMeanParams<T>& prm) {
  LaneStrides<7> st;
  const int64_t pixel[7] = {1, prm.gm.logstds_sp, 1, 1, 1, 0, 0};
  for (int t = 0; t < 7; ++t) st.pixel[t] = pixel[t];
  return st;
}

// Single-pixel images with one std per item (the toy): a chunk of items at a time, an item's
// components in the vector lanes. With a shared std, den (and the log den, var |nu|^2 / den logit
// terms) is the same for every component: those terms cancel in the softmax and the moved means
// average to (var nu + sum_k pi_k mu_k) / den, one softmax-weighted sum of the raw means.
template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void posterior_items(const GmPosteriorMeanParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K;
  const A eps = A(prm.eps);
  for (int64_t i0 = begin; i0 < end; i0 += kItems) {
    const int64_t count = std::min(kItems, end - i0);
    A s_src[kItems] = {}, s_tgt[kItems] = {}, x_src[kC][kItems] = {}, x_tgt[kC][kItems] = {};
    ItemChunk<T> items;
    const A* log_std = items.log_std;
    items.load(gm, prm.layout, i0, count, [&](int64_t i, const int64_t(&off)[7]) {
      s_src[i] = prm.sigma_src[off[5]];
      s_tgt[i] = prm.sigma_tgt[off[6]];
      for (int c = 0; c < kC; ++c) {
        x_src[c][i] = load_acc(prm.x_src + off[3] + c * prm.x_src_sc);
        x_tgt[c][i] = load_acc(prm.x_tgt + off[4] + c * prm.x_tgt_sc);
      }
    });
    A zeta[kItems], var[kItems], inv_den[kItems], nu[kC][kItems], sum[kItems], acc[kC][kItems];
#pragma omp simd
    for (int64_t i = 0; i < kItems; ++i) {
      const A ss = clamp_min(s_src[i], eps), st = clamp_min(s_tgt[i], eps);
      const A as = A(1) - ss, at = A(1) - st;
      zeta[i] = (at / st) * (at / st) - (as / ss) * (as / ss);
      const A c_src = as / (ss * ss), c_tgt = at / (st * st);
      for (int c = 0; c < kC; ++c) nu[c][i] = c_tgt * x_tgt[c][i] - c_src * x_src[c][i];
      var[i] = fast_exp(A(2) * log_std[i]);
      inv_den[i] = A(1) / clamp_min(var[i] * zeta[i] + A(1), eps);
    }
    for (int64_t i = 0; i < count; ++i) {
      A a[kBlock], e[kBlock], nu_i[kC], acc_i[kC];
      for (int c = 0; c < kC; ++c) nu_i[c] = nu[c][i];
      const A half_zeta = A(0.5) * zeta[i], inv = inv_den[i];
      const T* mu = items.means[i];
      with_unit_stride(gm.logweights_sk, [&](auto sk) {
#pragma omp simd
        for (int64_t j = 0; j < K; ++j) {
          A q = A(0);
          for (int c = 0; c < kC; ++c) {
            const A m = load_acc(mu + j * kC + c);
            q += m * (nu_i[c] - half_zeta * m);
          }
          a[j] = load_acc(items.logweights[i] + j * sk) + q * inv;
        }
      });
      sum[i] = block_softmax_weights(a, K, e);
      sum_parts_channels<kC, A>(K, [&](int64_t j, int c) { return e[j] * load_acc(mu + j * kC + c); }, acc_i);
      for (int c = 0; c < kC; ++c) acc[c][i] = acc_i[c];
    }
#pragma omp simd
    for (int64_t i = 0; i < kItems; ++i)
      for (int c = 0; c < kC; ++c) acc[c][i] = (var[i] * nu[c][i] + acc[c][i] / sum[i]) * inv_den[i];
    for (int64_t i = 0; i < count; ++i)
      for (int c = 0; c < kC; ++c) store_acc(prm.mean + (i0 + i) * kC + c, acc[c][i]);
  }
}

#if GMFLOW_HAVE_VECF
// A lane tile with one std per lane, fp32 arithmetic and C = kC in register blocks (gm_vec.h): the
// arithmetic of posterior_component and the shared-std branch of posterior_range, per block of
// kVecLanes lanes with the max, the sum and the per-channel sums in registers. rows: K (kC + 1)
// pointers; row_copies and block_gm: K (kC + 1) rows of kLanes each (copies of rows that are not
// read in place; the rows packed block by block); logits: K rows of kVecLanes; out: [kC][kLanes].
template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void posterior_tile_blocks(const GmPosteriorMeanParams<T>& prm, const LaneTile<7>& L,
                                                const PosteriorTile<float>& pt, const float** rows,
                                                float* row_copies, float* block_gm, float* logits, float* out) {
  constexpr int64_t W = kVecLanes;
  constexpr int64_t kRows = kC + 1;  // per component: the means and the logweight
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K;
  const float eps = float(prm.eps);
  float var_row[kLanes], inv_row[kLanes];
  gather(gm.logstds, L, 1, gm.logstds_sp, 0, var_row);
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) {
    var_row[v] = fast_exp(2.0f * var_row[v]);
    inv_row[v] = 1.0f / clamp_min(var_row[v] * pt.zeta[v] + 1.0f, eps);
  }
  for (int64_t k = 0; k < K; ++k) {
    for (int c = 0; c < kC; ++c) {
      const int64_t r = k * kRows + c;
      rows[r] = gather_view(gm.means, L, 0, 1, k * gm.means_sk + c * gm.means_sc, row_copies + r * kLanes);
    }
    const int64_t r = k * kRows + kC;
    rows[r] = gather_view(gm.logweights, L, 2, 1, k * gm.logweights_sk, row_copies + r * kLanes);
  }
  // Packed block by block, each row read whole (in-place rows are P values apart, often a power of
  // two: one block's loads straight from them would share a few L1 sets and defeat the prefetcher).
  const int64_t block_size = K * kRows * W;
  for (int64_t r = 0; r < K * kRows; ++r)
    for (int64_t vb = 0; vb < kLanes; vb += W) store_vec(block_gm + vb / W * block_size + r * W, load_vec(rows[r] + vb));
  for (int64_t vb = 0; vb < kLanes; vb += W) {
    const float* block = block_gm + vb / W * block_size;
    const VecF zeta = load_vec(pt.zeta + vb), half_zeta = 0.5f * zeta, inv = load_vec(inv_row + vb);
    VecF nu[kC];
    for (int c = 0; c < kC; ++c) nu[c] = load_vec(pt.nu + c * kLanes + vb);
    VecF max_value = splat(-INFINITY);
    for (int64_t k = 0; k < K; ++k) {
      const float* gk = block + k * kRows * W;
      VecF q = splat(0.0f);
      for (int c = 0; c < kC; ++c) {
        const VecF mu = load_vec(gk + c * W);
        q += mu * (nu[c] - half_zeta * mu);
      }
      const VecF logit = load_vec(gk + kC * W) + q * inv;
      store_vec(logits + k * W, logit);
      max_value = max_vec(logit, max_value);
    }
    VecF sum = splat(0.0f), acc[kC];
    for (int c = 0; c < kC; ++c) acc[c] = splat(0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float* gk = block + k * kRows * W;
      const VecF e = exp_nonpositive_vec(load_vec(logits + k * W) - max_value);  // a -inf logit gives 0
      sum += e;
      for (int c = 0; c < kC; ++c) acc[c] += e * load_vec(gk + c * W);
    }
    const VecF var = load_vec(var_row + vb);
    for (int c = 0; c < kC; ++c) store_vec(out + c * kLanes + vb, (var * nu[c] + acc[c] / sum) * inv);
  }
}
#endif  // GMFLOW_HAVE_VECF

template <typename T>
GMFLOW_FLATTEN void posterior_range(const GmPosteriorMeanParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  if (P == 1 && single_pixel_items(gm)) {
    return dispatch_packed_channels(C, true, [&]<int kC>() {
      if constexpr (kC > 0) posterior_items<kC>(prm, begin, end);
    });
  }
  Scratch<A> scratch((4 * C + K) * kLanes);
  A* nu = scratch.get();
  A* moved = nu + C * kLanes;
  A* acc = moved + C * kLanes;
  A* mu = acc + C * kLanes;
  A* logits = mu + C * kLanes;  // [K][kLanes], shared std
  std::vector<const A*> mu_rows(static_cast<size_t>(C)), moved_rows(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) moved_rows[c] = moved + c * kLanes;
  LaneTile<7> tile;
#if GMFLOW_HAVE_VECF
  constexpr bool kFp32 = std::is_same_v<A, float>;
  const bool register_blocks = kFp32 && gm.logstds_k == 1 && C <= 4;
#else
  const bool register_blocks = false;
#endif
  Scratch<A> blocks(register_blocks ? 2 * K * (C + 1) * kLanes + K * kLanes : 0);
  std::vector<const A*> block_rows(register_blocks ? static_cast<size_t>(K * (C + 1)) : 0);
  for_each_lane_tile(prm.layout, posterior_strides(prm), 1, P, begin, end, tile, [&](const LaneTile<7>& L) {
    PosteriorTile<A> pt;
    posterior_setup(prm, L, pt, nu);
#if GMFLOW_HAVE_VECF
    if constexpr (kFp32) {
      if (register_blocks) {
        A* row_copies = blocks.get();
        A* block_gm = row_copies + K * (C + 1) * kLanes;
        dispatch_packed_channels(C, true, [&]<int kC>() {
          if constexpr (kC > 0)
            posterior_tile_blocks<kC>(prm, L, pt, block_rows.data(), row_copies, block_gm,
                                      block_gm + K * (C + 1) * kLanes, acc);
        });
        for (int64_t c = 0; c < C; ++c) scatter(prm.mean, L, C * P, c * P, acc + c * kLanes);
        return;
      }
    }
#endif
    A var[kLanes], den[kLanes], dden[kLanes], inv_den[kLanes], q[kLanes], logit[kLanes], max_value[kLanes];
    A sum[kLanes];
    for (int64_t v = 0; v < kLanes; ++v) {
      max_value[v] = neg_infinity<A>();
      sum[v] = A(0);
    }
    for (int64_t i = 0; i < C * kLanes; ++i) acc[i] = A(0);
    // A shared std: average the raw means, move the average once (see posterior_items). Two
    // passes (the logits and their maximum, then one exp and one FMA per channel per component)
    // instead of the online softmax's rescaling of every accumulator.
    const bool shared = gm.logstds_k == 1;
    if (shared) {
      for (int64_t k = 0; k < K; ++k) {
        A* lk = logits + k * kLanes;
        posterior_component(prm, L, pt, k, var, den, dden, inv_den, q, lk, static_cast<A*>(nullptr), mu,
                            mu_rows.data());
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) max_value[v] = lk[v] > max_value[v] ? lk[v] : max_value[v];
      }
      for (int64_t k = 0; k < K; ++k) {
        const A* lk = logits + k * kLanes;
        A e[kLanes];
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          e[v] = lk[v] == neg_infinity<A>() ? A(0) : fast_exp(lk[v] - max_value[v]);
          sum[v] += e[v];
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* GMFLOW_RESTRICT x =
              gather_view(gm.means, L, 0, 1, k * gm.means_sk + c * gm.means_sc, mu + c * kLanes);
          A* GMFLOW_RESTRICT a = acc + c * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) a[v] += e[v] * x[v];
        }
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        posterior_component(prm, L, pt, k, var, den, dden, inv_den, q, logit, moved, mu, mu_rows.data());
        online_softmax_push(C, logit, moved_rows.data(), max_value, sum, acc);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      A* a = acc + c * kLanes;
      const A* nu_c = nu + c * kLanes;
      if (shared) {
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) a[v] = (var[v] * nu_c[v] + a[v] / sum[v]) * inv_den[v];
      } else {
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) a[v] /= sum[v];
      }
      scatter(prm.mean, L, C * P, c * P, a);
    }
  });
}

template <typename T>
GMFLOW_FLATTEN void posterior_backward_range(const GmPosteriorMeanBackwardParams<T>& prm, int64_t begin,
                                             int64_t end) {
  using A = acc_t<T>;
  const GmPosteriorMeanParams<T>& fwd = prm.fwd;
  const GmOperands<T>& gm = fwd.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, Kl = gm.logstds_k;
  const bool per_component = Kl != 1;
  Scratch<A> scratch(5 * C * kLanes);
  A* nu = scratch.get();
  A* moved = nu + C * kLanes;
  A* g = moved + C * kLanes;
  A* out = g + C * kLanes;
  A* mu = out + C * kLanes;
  std::vector<const A*> mu_rows(static_cast<size_t>(C));
  LaneTile<7> tile;
  for_each_lane_tile(fwd.layout, posterior_strides(fwd), 1, P, begin, end, tile, [&](const LaneTile<7>& L) {
    PosteriorTile<A> pt;
    posterior_setup(fwd, L, pt, nu);
    A var[kLanes], den[kLanes], dden[kLanes], inv_den[kLanes], q[kLanes], logit[kLanes], max_value[kLanes];
    A sum[kLanes];
    A lse[kLanes], pi[kLanes], d[kLanes], res[kLanes], g_var[kLanes], g_ls_shared[kLanes];
    for (int64_t v = 0; v < kLanes; ++v) {
      max_value[v] = neg_infinity<A>();
      sum[v] = A(0);
      g_ls_shared[v] = A(0);
    }
    for (int64_t k = 0; k < K; ++k) {  // pass 1: the log normaliser of the logits
      posterior_component(fwd, L, pt, k, var, den, dden, inv_den, q, logit, moved, mu, mu_rows.data());
      tile_lse_push<int(kLanes)>(kLanes, logit, max_value, sum);
    }
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) lse[v] = lse_result(max_value[v], sum[v]);
    for (int64_t c = 0; c < C; ++c) {
      gather_rows(prm.grad, L, C * P, c * P, g + c * kLanes);
      gather_rows(prm.mean, L, C * P, c * P, out + c * kLanes);
    }
    const A half_c = A(0.5) * A(C);
    for (int64_t k = 0; k < K; ++k) {  // pass 2: gradients of component k
      posterior_component(fwd, L, pt, k, var, den, dden, inv_den, q, logit, moved, mu, mu_rows.data());
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        pi[v] = responsibility(logit[v], lse[v]);
        d[v] = A(0);
        g_var[v] = A(0);
      }
      for (int64_t c = 0; c < C; ++c) {
        const A* gc = g + c * kLanes;
        const A* oc = out + c * kLanes;
        const A* mv = moved + c * kLanes;
        const A* nc = nu + c * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          d[v] += gc[v] * (mv[v] - oc[v]);
          g_var[v] += gc[v] * (nc[v] - mv[v] * dden[v]);
        }
      }
      if (prm.grad_logweights) {
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) res[v] = pi[v] * d[v];
        scatter(prm.grad_logweights, L, K * P, k * P, res);
      }
      if (prm.grad_means) {
        for (int64_t c = 0; c < C; ++c) {
          const A* gc = g + c * kLanes;
          const A* nc = nu + c * kLanes;
          const A* mc = mu_rows[c];
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v)
            res[v] = pi[v] * (gc[v] + d[v] * (nc[v] - pt.zeta[v] * mc[v])) / den[v];
          scatter(prm.grad_means, L, K * C * P, (k * C + c) * P, res);
        }
      }
      if (prm.grad_logstds) {
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          const A inv = A(1) / den[v];
          A dlogit = -q[v] * inv * dden[v] * inv;
          if (per_component)
            dlogit += A(0.5) * pt.sq[v] * inv - A(0.5) * var[v] * pt.sq[v] * dden[v] * inv * inv -
                      half_c * dden[v] * inv;
          res[v] = A(2) * var[v] * (pi[v] * g_var[v] * inv + pi[v] * d[v] * dlogit);
          g_ls_shared[v] += res[v];
        }
        if (per_component) scatter(prm.grad_logstds, L, Kl * P, k * P, res);
      }
    }
    if (prm.grad_logstds && !per_component) scatter(prm.grad_logstds, L, P, 0, g_ls_shared);
  });
}

// ------------------------------------------------------------------ gm_sample

template <typename T>
GMFLOW_FLATTEN void sample_range(const GmSampleParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, N = prm.N;
  const bool per_component = gm.logstds_k != 1;
  const A power = A(prm.power);
  const A std_scale = prm.cov_sharpen ? A(1) / A(std::sqrt(prm.power)) : A(1);
  LaneStrides<5> st;
  const int64_t inner[5] = {0, 0, 0, prm.uniforms_sn, prm.normals_sn};
  const int64_t pixel[5] = {1, gm.logstds_sp, 1, 1, 1};
  for (int t = 0; t < 5; ++t) {
    st.inner[t] = inner[t];
    st.pixel[t] = pixel[t];
  }
  Scratch<A> scratch(K * kLanes);
  A* e = scratch.get();  // [K][kLanes]
  LaneTile<5> tile;
  for_each_lane_tile(prm.layout, st, N, P, begin, end, tile, [&](const LaneTile<5>& L) {
    A max_value[kLanes], total[kLanes], target[kLanes], std_dev[kLanes], z[kLanes], out[kLanes];
    int64_t chosen[kLanes];
    CategoricalDraw<A> draw[kLanes];
    for (int64_t v = 0; v < kLanes; ++v) {
      max_value[v] = neg_infinity<A>();
      total[v] = A(0);
    }
    for (int64_t k = 0; k < K; ++k) {
      A* ek = e + k * kLanes;
      gather(gm.logweights, L, 2, 1, k * gm.logweights_sk, ek);
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        ek[v] *= power;
        max_value[v] = ek[v] > max_value[v] ? ek[v] : max_value[v];
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      A* ek = e + k * kLanes;
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        ek[v] = fast_exp(ek[v] - max_value[v]);
        total[v] += ek[v];
      }
    }
    gather(prm.uniforms, L, 3, 1, 0, target);
    for (int64_t v = 0; v < kLanes; ++v) draw[v].target = target[v] * total[v];
    for (int64_t k = 0; k < K; ++k) {
      const A* ek = e + k * kLanes;
      for (int64_t v = 0; v < kLanes; ++v) draw[v].push(k, ek[v]);
    }
    for (int64_t v = 0; v < kLanes; ++v) {
      chosen[v] = draw[v].result();
      const int64_t ks = per_component ? chosen[v] * gm.logstds_sk : 0;
      std_dev[v] = fast_exp(load_acc(gm.logstds + L.off[1][v] + ks)) * std_scale;
    }
    for (int64_t c = 0; c < C; ++c) {
      gather(prm.normals, L, 4, 1, c * prm.normals_sc, z);
      for (int64_t v = 0; v < kLanes; ++v)
        out[v] = load_acc(gm.means + L.off[0][v] + chosen[v] * gm.means_sk + c * gm.means_sc) + std_dev[v] * z[v];
      scatter(prm.out, L, C * P, c * P, out);
    }
  });
}

// ------------------------------------------------------------------ gm_ode_euler_substeps
//
// gm_ode_euler_substeps (docs/ops.md#gm_ode_euler_substeps): S sub-steps per item, the GM gathered once per tile;
// sub-step j: x0 = the posterior mean above at (x_tgt = x, sigma_tgt = sigmas[j]), then
// x <- x0 + sigmas[j + 1] / max(sigmas[j], eps) (x - x0).

// The GM of one lane tile in lane rows, read once for all S sub-steps: means [K][C],
// var [Kl], logweights [K] and |mu_k|^2 [K].
template <typename A>
struct OdeGm {
  int64_t K, C, Kl;
  bool per_component;
  A eps;
  A *mu, *var, *lw, *m2;
};

// Per-lane terms of one sub-step: the coefficients (gm_math.h ode_substep), nu = c_tgt x - c_src x_src,
// |nu|^2 and, per std, den = max(var zeta + 1, eps), 1 / den, d den / d var and the logit terms that
// depend on the std only (per-component stds; a shared std adds the same to every logit).
template <typename A>
struct OdeStep {
  A zeta[kLanes], c_src[kLanes], c_tgt[kLanes], ratio[kLanes], sq[kLanes];
  A *nu, *inv, *dden, *extra;  // [C][kLanes], [Kl][kLanes] x 3
};

template <typename T, typename A, int64_t kLanes>
GMFLOW_ALWAYS_INLINE void ode_load_gm(const GmOdeEulerSubstepsParams<T>& prm, const LaneTile<5, kLanes>& L,
                                      OdeGm<A>& g) {
  const GmOperands<T>& gm = prm.gm;
  for (int64_t k = 0; k < g.K; ++k) {
    A* m2 = g.m2 + k * kLanes;
    for (int64_t c = 0; c < g.C; ++c) {
      A* mu = g.mu + (k * g.C + c) * kLanes;
      gather(gm.means, L, 0, 1, k * gm.means_sk + c * gm.means_sc, mu);
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) m2[v] = (c == 0 ? A(0) : m2[v]) + mu[v] * mu[v];
    }
    gather(gm.logweights, L, 2, 1, k * gm.logweights_sk, g.lw + k * kLanes);
  }
  for (int64_t k = 0; k < g.Kl; ++k) {
    A* var = g.var + k * kLanes;
    gather(gm.logstds, L, 1, gm.logstds_sp, k * gm.logstds_sk, var);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) var[v] = fast_exp(A(2) * var[v]);
  }
}

// The terms of sub-step j (sigmas[j] -> sigmas[j + 1]) at the state x [C][kLanes].
template <typename A>
GMFLOW_ALWAYS_INLINE void ode_step_setup(const OdeGm<A>& g, const A* sigmas, int64_t j, const A* x, const A* x_src,
                                         OdeStep<A>& st) {
  const A* s0 = sigmas;
  const A* sj = sigmas + j * kLanes;
  const A* sn = sj + kLanes;
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) {
    const OdeSubstep<A> o = ode_substep(s0[v], sj[v], sn[v], g.eps);
    st.zeta[v] = o.zeta;
    st.c_src[v] = o.c_src;
    st.c_tgt[v] = o.c_tgt;
    st.ratio[v] = o.ratio;
    st.sq[v] = A(0);
  }
  for (int64_t c = 0; c < g.C; ++c) {
    A* nu = st.nu + c * kLanes;
    const A* xc = x + c * kLanes;
    const A* sc = x_src + c * kLanes;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      nu[v] = st.c_tgt[v] * xc[v] - st.c_src[v] * sc[v];
      st.sq[v] += nu[v] * nu[v];
    }
  }
  const A half_c = A(0.5) * A(g.C);
  for (int64_t k = 0; k < g.Kl; ++k) {
    const A* var = g.var + k * kLanes;
    A* inv = st.inv + k * kLanes;
    A* dden = st.dden + k * kLanes;
    A* extra = st.extra + k * kLanes;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      const A raw = var[v] * st.zeta[v] + A(1);
      const A den = clamp_min(raw, g.eps);
      inv[v] = A(1) / den;
      dden[v] = raw > g.eps ? st.zeta[v] : A(0);
      extra[v] = A(0);
    }
    if (g.per_component) {
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v)
        extra[v] = A(0.5) * var[v] * st.sq[v] * inv[v] + half_c * fast_log(inv[v]);
    }
  }
}

// Logit of component k for every lane: lambda_k + Q_k / den_k + extra, Q_k = mu_k . nu - zeta |mu_k|^2 / 2.
template <typename A>
GMFLOW_ALWAYS_INLINE void ode_logit(const OdeGm<A>& g, const OdeStep<A>& st, int64_t k, A* GMFLOW_RESTRICT q,
                                    A* GMFLOW_RESTRICT logit) {
  const int64_t kk = g.per_component ? k : 0;
  const A* m2 = g.m2 + k * kLanes;
  const A* lw = g.lw + k * kLanes;
  const A* inv = st.inv + kk * kLanes;
  const A* extra = st.extra + kk * kLanes;
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) q[v] = -A(0.5) * st.zeta[v] * m2[v];
  for (int64_t c = 0; c < g.C; ++c) {
    const A* mu = g.mu + (k * g.C + c) * kLanes;
    const A* nu = st.nu + c * kLanes;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) q[v] += mu[v] * nu[v];
  }
  if (g.per_component) {
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) logit[v] = lw[v] + q[v] * inv[v] + extra[v];
  } else {  // the shared std's terms are the same for every k: no effect on the softmax
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) logit[v] = lw[v] + q[v] * inv[v];
  }
}

// Posterior mean x0 [C][kLanes] = sum_k softmax(logit)_k (var_k nu + mu_k) / den_k, two passes over K
// through logits [K][kLanes]; its log normaliser into lse [kLanes] if not null.
template <typename A>
GMFLOW_ALWAYS_INLINE void ode_posterior_mean(const OdeGm<A>& g, const OdeStep<A>& st, A* logits, A* x0, A* lse) {
  A max_value[kLanes], sum[kLanes], q[kLanes], w_var[kLanes], w[kLanes];
#pragma omp simd
  for (int64_t v = 0; v < kLanes; ++v) {
    max_value[v] = neg_infinity<A>();
    sum[v] = A(0);
    w_var[v] = A(0);
  }
  for (int64_t k = 0; k < g.K; ++k) {
    A* logit = logits + k * kLanes;
    ode_logit(g, st, k, q, logit);
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) max_value[v] = logit[v] > max_value[v] ? logit[v] : max_value[v];
  }
  for (int64_t i = 0; i < g.C * kLanes; ++i) x0[i] = A(0);
  for (int64_t k = 0; k < g.K; ++k) {
    const A* logit = logits + k * kLanes;
    if (g.per_component) {
      const A* inv = st.inv + k * kLanes;
      const A* var = g.var + k * kLanes;
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        const A e = fast_exp(logit[v] - max_value[v]);
        sum[v] += e;
        w[v] = e * inv[v];
        w_var[v] += w[v] * var[v];
      }
    } else {  // a shared var / den is applied once, below
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) {
        w[v] = fast_exp(logit[v] - max_value[v]);
        sum[v] += w[v];
      }
    }
    for (int64_t c = 0; c < g.C; ++c) {
      const A* mu = g.mu + (k * g.C + c) * kLanes;
      A* a = x0 + c * kLanes;
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) a[v] += w[v] * mu[v];
    }
  }
  const A* inv0 = st.inv;
  if (!g.per_component) {
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) w_var[v] = g.var[v] * sum[v];
  }
  for (int64_t c = 0; c < g.C; ++c) {
    A* a = x0 + c * kLanes;
    const A* nu = st.nu + c * kLanes;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) {
      const A m = (a[v] + w_var[v] * nu[v]) / sum[v];
      a[v] = g.per_component ? m : m * inv0[v];
    }
  }
  if (lse) {
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) lse[v] = lse_result(max_value[v], sum[v]);
  }
}

// x <- x0 + ratio (x - x0): the Euler step of the flow ODE with x0 as the x0 estimate.
template <typename A>
GMFLOW_ALWAYS_INLINE void ode_euler(int64_t C, const OdeStep<A>& st, const A* x0, A* x) {
  for (int64_t c = 0; c < C; ++c) {
    A* xc = x + c * kLanes;
    const A* mc = x0 + c * kLanes;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) xc[v] = mc[v] + st.ratio[v] * (xc[v] - mc[v]);
  }
}

#if GMFLOW_HAVE_VECF
// All S sub-steps of a tile with one std per lane (the toy's and the latents' layout), fp32
// arithmetic, C = kC: each block of kVecLanes lanes runs its S sub-steps with the running max, the
// sum and the per-channel sums in registers over the k-loops (gm_vec.h), and the block's part of
// the tile's GM rows, packed, stays in L1 across the sub-steps. The arithmetic is that of
// ode_step_setup, ode_posterior_mean and ode_euler (the exp's polynomial in another order).
// x: [C][kLanes], in and out; logits: K rows of kVecLanes; block_gm: K (kC + 2) rows of kVecLanes.
template <int kC, int64_t kLanes>
GMFLOW_ALWAYS_INLINE void ode_tile_shared_std(const OdeGm<float>& g, const float* sigmas, const float* x_src,
                                              int64_t S, float* x, float* logits, float* block_gm) {
  constexpr int64_t W = kVecLanes;
  constexpr int64_t kRows = kC + 2;  // per component: the means, |mu|^2, the logweight
  for (int64_t vb = 0; vb < kLanes; vb += W) {
    // The block's lanes of the GM rows, packed per component: the tile's rows are kLanes apart, a
    // power-of-two stride that maps the block's loads onto few L1 sets (they evicted each other).
    for (int64_t k = 0; k < g.K; ++k) {
      float* dst = block_gm + k * kRows * W;
      for (int c = 0; c < kC; ++c) store_vec(dst + c * W, load_vec(g.mu + (k * kC + c) * kLanes + vb));
      store_vec(dst + kC * W, load_vec(g.m2 + k * kLanes + vb));
      store_vec(dst + (kC + 1) * W, load_vec(g.lw + k * kLanes + vb));
    }
    VecF xv[kC], xs[kC];
    for (int c = 0; c < kC; ++c) {
      xv[c] = load_vec(x + c * kLanes + vb);
      xs[c] = load_vec(x_src + c * kLanes + vb);
    }
    const VecF var = load_vec(g.var + vb);
    for (int64_t j = 0; j < S; ++j) {
      float zeta_s[W], c_src_s[W], c_tgt_s[W], ratio_s[W];
      const float* s0 = sigmas + vb;
      const float* sj = sigmas + j * kLanes + vb;
#pragma omp simd
      for (int64_t v = 0; v < W; ++v) {
        const OdeSubstep<float> o = ode_substep(s0[v], sj[v], sj[kLanes + v], g.eps);
        zeta_s[v] = o.zeta;
        c_src_s[v] = o.c_src;
        c_tgt_s[v] = o.c_tgt;
        ratio_s[v] = o.ratio;
      }
      const VecF zeta = load_vec(zeta_s), c_src = load_vec(c_src_s), c_tgt = load_vec(c_tgt_s);
      VecF nu[kC];
      for (int c = 0; c < kC; ++c) nu[c] = c_tgt * xv[c] - c_src * xs[c];
      const VecF raw = var * zeta + 1.0f;
      const VecF eps = splat(g.eps);
      const VecF inv = 1.0f / (raw < eps ? eps : raw);
      const VecF half_zeta = -0.5f * zeta;
      // Pass 1: logits (the shared std's own terms are the same for every k and left out) and their max.
      VecF max_value = splat(-INFINITY);
      for (int64_t k = 0; k < g.K; ++k) {
        const float* gk = block_gm + k * kRows * W;
        VecF q = half_zeta * load_vec(gk + kC * W);
        for (int c = 0; c < kC; ++c) q += load_vec(gk + c * W) * nu[c];
        const VecF logit = load_vec(gk + (kC + 1) * W) + q * inv;
        store_vec(logits + k * W, logit);
        max_value = max_vec(logit, max_value);
      }
      // Pass 2: one exp per component, the softmax sum and the weighted sums of the means.
      VecF sum = splat(0.0f), acc[kC];
      for (int c = 0; c < kC; ++c) acc[c] = splat(0.0f);
      for (int64_t k = 0; k < g.K; ++k) {
        const float* gk = block_gm + k * kRows * W;
        const VecF w = exp_nonpositive_vec(load_vec(logits + k * W) - max_value);
        sum += w;
        for (int c = 0; c < kC; ++c) acc[c] += w * load_vec(gk + c * W);
      }
      const VecF w_var = var * sum, ratio = load_vec(ratio_s);
      for (int c = 0; c < kC; ++c) {
        const VecF x0 = (acc[c] + w_var * nu[c]) / sum * inv;
        xv[c] = x0 + ratio * (xv[c] - x0);
      }
    }
    for (int c = 0; c < kC; ++c) store_vec(x + c * kLanes + vb, xv[c]);
  }
}
#endif  // GMFLOW_HAVE_VECF

template <typename T>
LaneStrides<5> ode_strides(const GmOdeEulerSubstepsParams<T>& prm) {
  LaneStrides<5> st;
  const int64_t pixel[5] = {1, prm.gm.logstds_sp, 1, 1, 0};
  for (int t = 0; t < 5; ++t) st.pixel[t] = pixel[t];
  return st;
}

// Lane-row scratch of the sub-step kernels, carved from one allocation.
template <typename A>
struct OdeScratch {
  Scratch<A> data;
  A* next;
  int64_t width;  // values per row: the tile's lanes
  explicit OdeScratch(int64_t rows, int64_t lanes = kLanes) : data(rows * lanes), next(data.get()), width(lanes) {}
  A* take(int64_t rows) {
    A* p = next;
    next += rows * width;
    return p;
  }
};

template <typename T, typename A>
GMFLOW_ALWAYS_INLINE void ode_init(const GmOdeEulerSubstepsParams<T>& prm, OdeScratch<A>& s, OdeGm<A>& g,
                                   OdeStep<A>& st) {
  const GmOperands<T>& gm = prm.gm;
  g.K = gm.K;
  g.C = gm.C;
  g.Kl = gm.logstds_k;
  g.per_component = gm.logstds_k != 1;
  g.eps = A(prm.eps);
  g.mu = s.take(g.K * g.C);
  g.var = s.take(g.Kl);
  g.lw = s.take(g.K);
  g.m2 = s.take(g.K);
  st.nu = s.take(g.C);
  st.inv = s.take(g.Kl);
  st.dden = s.take(g.Kl);
  st.extra = s.take(g.Kl);
}

// Rows of ode_init, plus `more`.
inline int64_t ode_rows(int64_t K, int64_t C, int64_t Kl, int64_t more) { return K * C + 3 * K + C + 4 * Kl + more; }

// Loads the tile's GM, x_src [C] and sigmas [S + 1] (lane rows).
template <typename T, typename A, int64_t kLanes>
GMFLOW_ALWAYS_INLINE void ode_load(const GmOdeEulerSubstepsParams<T>& prm, const LaneTile<5, kLanes>& L, OdeGm<A>& g,
                                   A* x_src, A* sigmas) {
  ode_load_gm(prm, L, g);
  for (int64_t c = 0; c < g.C; ++c) gather(prm.x_src, L, 3, 1, c * prm.x_src_sc, x_src + c * kLanes);
  for (int64_t j = 0; j <= prm.S; ++j) gather(prm.sigmas, L, 4, 0, j * prm.sigmas_sj, sigmas + j * kLanes);
}

#if GMFLOW_HAVE_VECF
// ode_range's register-block path (one std per lane, fp32, C <= 4) on tiles of kLanes lanes.
template <int64_t kLanes, typename T>
GMFLOW_SEPARATE_NEST void ode_tiles_shared_std(const GmOdeEulerSubstepsParams<T>& prm, int64_t begin, int64_t end) {
  const int64_t K = prm.gm.K, C = prm.gm.C, P = prm.gm.P, S = prm.S;
  OdeScratch<float> s(ode_rows(K, C, 1, K + K * (C + 2) + 3 * C + S + 1), kLanes);
  OdeGm<float> g;
  OdeStep<float> unused;
  ode_init(prm, s, g, unused);
  float* logits = s.take(K);
  float* block_gm = s.take(K * (C + 2));
  float* x_src = s.take(C);
  float* x = s.take(C);
  float* sigmas = s.take(S + 1);
  LaneTile<5, kLanes> tile;
  for_each_lane_tile(prm.layout, ode_strides(prm), 1, P, begin, end, tile, [&](const LaneTile<5, kLanes>& L) {
    ode_load(prm, L, g, x_src, sigmas);
    for (int64_t i = 0; i < C * kLanes; ++i) x[i] = x_src[i];
    dispatch_packed_channels(C, true, [&]<int kC>() {
      if constexpr (kC > 0) ode_tile_shared_std<kC, kLanes>(g, sigmas, x_src, S, x, logits, block_gm);
    });
    for (int64_t c = 0; c < C; ++c) scatter(prm.out, L, C * P, c * P, x + c * kLanes);
  });
}
#endif  // GMFLOW_HAVE_VECF

template <typename T>
GMFLOW_FLATTEN void ode_range(const GmOdeEulerSubstepsParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const int64_t K = prm.gm.K, C = prm.gm.C, P = prm.gm.P, S = prm.S;
#if GMFLOW_HAVE_VECF
  if constexpr (std::is_same_v<A, float>) {
    if (prm.gm.logstds_k == 1 && C <= 4)  // register blocks
      return wide_tiles(P) ? ode_tiles_shared_std<kWideLanes>(prm, begin, end)
                           : ode_tiles_shared_std<kLanes>(prm, begin, end);
  }
#endif
  OdeScratch<A> s(ode_rows(K, C, prm.gm.logstds_k, K + 3 * C + S + 1));
  OdeGm<A> g;
  OdeStep<A> st;
  ode_init(prm, s, g, st);
  A* logits = s.take(K);
  A* x_src = s.take(C);
  A* x = s.take(C);
  A* x0 = s.take(C);
  A* sigmas = s.take(S + 1);
  LaneTile<5> tile;
  for_each_lane_tile(prm.layout, ode_strides(prm), 1, P, begin, end, tile, [&](const LaneTile<5>& L) {
    ode_load(prm, L, g, x_src, sigmas);
    for (int64_t i = 0; i < C * kLanes; ++i) x[i] = x_src[i];
    for (int64_t j = 0; j < S; ++j) {
      ode_step_setup(g, sigmas, j, x, x_src, st);
      ode_posterior_mean(g, st, logits, x0, static_cast<A*>(nullptr));
      ode_euler(C, st, x0, x);
    }
    for (int64_t c = 0; c < C; ++c) scatter(prm.out, L, C * P, c * P, x + c * kLanes);
  });
}

// Backward by recompute: a forward pass keeps each sub-step's state, posterior mean and log normaliser
// in lane-row scratch (S (2 C + 1) rows per tile), then the sub-steps are reversed. Sub-step j maps
// x_j to x_{j+1} = (1 - r) x0_j + r x_j, so with g = dL/dx_{j+1} and h = (1 - r) g (the gradient of the
// posterior mean): the GM gradients of gm_posterior_mean at (x_tgt = x_j, grad = h) are added, and
// dL/dx_j = r g + c_tgt (sum_k pi_k var_k / den_k h + sum_k pi_k d_k (mu'_k - x0)), d_k = h . (mu'_k - x0)
// (d logit_k / d nu = mu'_k up to a term shared by all k).
template <typename T>
GMFLOW_FLATTEN void ode_backward_range(const GmOdeEulerSubstepsBackwardParams<T>& prm, int64_t begin,
                                       int64_t end) {
  using A = acc_t<T>;
  const GmOdeEulerSubstepsParams<T>& fwd = prm.fwd;
  const int64_t K = fwd.gm.K, C = fwd.gm.C, P = fwd.gm.P, S = fwd.S, Kl = fwd.gm.logstds_k;
  OdeScratch<A> s(ode_rows(K, C, Kl, 2 * K + K * C + Kl + 6 * C + S + 1 + S * (2 * C + 1)));
  OdeGm<A> g;
  OdeStep<A> st;
  ode_init(fwd, s, g, st);
  A* logits = s.take(K);
  A* x_src = s.take(C);
  A* x = s.take(C);
  A* grad = s.take(C);
  A* h = s.take(C);
  A* gx = s.take(C);
  A* moved = s.take(C);
  A* sigmas = s.take(S + 1);
  A* x_saved = s.take(S * C);
  A* x0_saved = s.take(S * C);
  A* lse_saved = s.take(S);
  A* g_mu = s.take(K * C);
  A* g_lw = s.take(K);
  A* g_ls = s.take(Kl);
  const bool per_component = g.per_component;
  const A half_c = A(0.5) * A(C);
  LaneTile<5> tile;
  for_each_lane_tile(fwd.layout, ode_strides(fwd), 1, P, begin, end, tile, [&](const LaneTile<5>& L) {
    ode_load(fwd, L, g, x_src, sigmas);
    for (int64_t i = 0; i < C * kLanes; ++i) x[i] = x_src[i];
    for (int64_t j = 0; j < S; ++j) {
      A* xj = x_saved + j * C * kLanes;
      A* x0 = x0_saved + j * C * kLanes;
      for (int64_t i = 0; i < C * kLanes; ++i) xj[i] = x[i];
      ode_step_setup(g, sigmas, j, x, x_src, st);
      ode_posterior_mean(g, st, logits, x0, lse_saved + j * kLanes);
      ode_euler(C, st, x0, x);
    }
    for (int64_t c = 0; c < C; ++c) gather_rows(prm.grad, L, C * P, c * P, grad + c * kLanes);
    for (int64_t i = 0; i < K * C * kLanes; ++i) g_mu[i] = A(0);
    for (int64_t i = 0; i < K * kLanes; ++i) g_lw[i] = A(0);
    for (int64_t i = 0; i < Kl * kLanes; ++i) g_ls[i] = A(0);
    for (int64_t j = S - 1; j >= 0; --j) {
      const A* xj = x_saved + j * C * kLanes;
      const A* x0 = x0_saved + j * C * kLanes;
      const A* lse = lse_saved + j * kLanes;
      ode_step_setup(g, sigmas, j, xj, x_src, st);
      A w_var[kLanes], q[kLanes], logit[kLanes], pi[kLanes], d[kLanes], g_var[kLanes];
#pragma omp simd
      for (int64_t v = 0; v < kLanes; ++v) w_var[v] = A(0);
      for (int64_t c = 0; c < C; ++c) {
        A* hc = h + c * kLanes;
        const A* gc = grad + c * kLanes;
        A* gxc = gx + c * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          hc[v] = (A(1) - st.ratio[v]) * gc[v];
          gxc[v] = A(0);
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const int64_t kk = per_component ? k : 0;
        const A* var = g.var + kk * kLanes;
        const A* inv = st.inv + kk * kLanes;
        const A* dden = st.dden + kk * kLanes;
        ode_logit(g, st, k, q, logit);
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          pi[v] = responsibility(logit[v], lse[v]);
          d[v] = A(0);
          g_var[v] = A(0);
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* mu = g.mu + (k * C + c) * kLanes;
          const A* nu = st.nu + c * kLanes;
          const A* hc = h + c * kLanes;
          const A* oc = x0 + c * kLanes;
          A* mv = moved ? moved + c * kLanes : nullptr;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) {
            mv[v] = (var[v] * nu[v] + mu[v]) * inv[v];
            d[v] += hc[v] * (mv[v] - oc[v]);
            g_var[v] += hc[v] * (nu[v] - mv[v] * dden[v]);
          }
        }
        A* glw = g_lw + k * kLanes;
        A* gls = g_ls + kk * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v) {
          glw[v] += pi[v] * d[v];
          w_var[v] += pi[v] * var[v] * inv[v];
          A dlogit = -q[v] * inv[v] * dden[v] * inv[v];
          if (per_component)
            dlogit += A(0.5) * st.sq[v] * inv[v] - A(0.5) * var[v] * st.sq[v] * dden[v] * inv[v] * inv[v] -
                      half_c * dden[v] * inv[v];
          gls[v] += A(2) * var[v] * pi[v] * (g_var[v] * inv[v] + d[v] * dlogit);
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* mu = g.mu + (k * C + c) * kLanes;
          const A* nu = st.nu + c * kLanes;
          const A* hc = h + c * kLanes;
          const A* oc = x0 + c * kLanes;
          const A* mv = moved + c * kLanes;
          A* gm = g_mu + (k * C + c) * kLanes;
          A* gxc = gx + c * kLanes;
#pragma omp simd
          for (int64_t v = 0; v < kLanes; ++v) {
            gm[v] += pi[v] * (hc[v] + d[v] * (nu[v] - st.zeta[v] * mu[v])) * inv[v];
            gxc[v] += pi[v] * d[v] * (mv[v] - oc[v]);
          }
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        A* gc = grad + c * kLanes;
        const A* hc = h + c * kLanes;
        const A* gxc = gx + c * kLanes;
#pragma omp simd
        for (int64_t v = 0; v < kLanes; ++v)
          gc[v] = st.ratio[v] * gc[v] + st.c_tgt[v] * (w_var[v] * hc[v] + gxc[v]);
      }
    }
    if (prm.grad_means)
      for (int64_t i = 0; i < K * C; ++i) scatter(prm.grad_means, L, K * C * P, i * P, g_mu + i * kLanes);
    if (prm.grad_logweights)
      for (int64_t k = 0; k < K; ++k) scatter(prm.grad_logweights, L, K * P, k * P, g_lw + k * kLanes);
    if (prm.grad_logstds)
      for (int64_t k = 0; k < Kl; ++k) scatter(prm.grad_logstds, L, Kl * P, k * P, g_ls + k * kLanes);
  });
}

}  // namespace

template <typename T>
void gm_mul_iso_gaussian(const GmMulIsoGaussianParams<T>& prm, const ParallelFor& pf) {
  run_items(prm, prm.gm.batch * prm.gm.P, prm.gm.K * (prm.gm.C + 4), pf,
            [](const auto& q, int64_t b, int64_t e) { mul_iso_range(q, b, e); }, tile_items(prm.gm.P));
}

template <typename T>
void gm_posterior_mean(const GmPosteriorMeanParams<T>& prm, const ParallelFor& pf) {
  run_items(prm, prm.gm.batch * prm.gm.P, prm.gm.K * (2 * prm.gm.C + 4), pf,
            [](const auto& q, int64_t b, int64_t e) { posterior_range(q, b, e); });
}

template <typename T>
void gm_posterior_mean_backward(const GmPosteriorMeanBackwardParams<T>& prm, const ParallelFor& pf) {
  const GmOperands<T>& gm = prm.fwd.gm;
  run_items(prm, gm.batch * gm.P, gm.K * (5 * gm.C + 8), pf,
            [](const auto& q, int64_t b, int64_t e) { posterior_backward_range(q, b, e); });
}

template <typename T>
void gm_sample(const GmSampleParams<T>& prm, const ParallelFor& pf) {
  run_items(prm, prm.gm.batch * prm.N * prm.gm.P, prm.gm.K * 3 + prm.gm.C, pf,
            [](const auto& q, int64_t b, int64_t e) { sample_range(q, b, e); });
}

template <typename T>
void gm_ode_euler_substeps(const GmOdeEulerSubstepsParams<T>& prm, const ParallelFor& pf) {
  run_items(prm, prm.gm.batch * prm.gm.P, prm.S * prm.gm.K * (2 * prm.gm.C + 4), pf,
            [](const auto& q, int64_t b, int64_t e) { ode_range(q, b, e); }, tile_items(prm.gm.P));
}

template <typename T>
void gm_ode_euler_substeps_backward(const GmOdeEulerSubstepsBackwardParams<T>& prm, const ParallelFor& pf) {
  const GmOperands<T>& gm = prm.fwd.gm;
  run_items(prm, gm.batch * gm.P, prm.fwd.S * gm.K * (7 * gm.C + 12), pf,
            [](const auto& q, int64_t b, int64_t e) { ode_backward_range(q, b, e); });
}

#define GMFLOW_INSTANTIATE_ALGEBRA(T)                                                                   \
  template void gm_mul_iso_gaussian<T>(const GmMulIsoGaussianParams<T>&, const ParallelFor&);           \
  template void gm_posterior_mean<T>(const GmPosteriorMeanParams<T>&, const ParallelFor&);              \
  template void gm_posterior_mean_backward<T>(const GmPosteriorMeanBackwardParams<T>&, const ParallelFor&); \
  template void gm_ode_euler_substeps<T>(const GmOdeEulerSubstepsParams<T>&, const ParallelFor&);                  \
  template void gm_ode_euler_substeps_backward<T>(const GmOdeEulerSubstepsBackwardParams<T>&, const ParallelFor&); \
  template void gm_sample<T>(const GmSampleParams<T>&, const ParallelFor&);

GMFLOW_INSTANTIATE_ALGEBRA(float)
GMFLOW_INSTANTIATE_ALGEBRA(double)
GMFLOW_INSTANTIATE_ALGEBRA(Half)
GMFLOW_INSTANTIATE_ALGEBRA(BFloat16)

}  // namespace GMFLOW_CPU_ISA
}  // namespace cpu
}  // namespace gmflow
