// CPU kernels of gm_logprob and its backward (torch-free).
//
// A logsumexp over the K components of each pixel (online, or in two passes over a pixel tile's
// K <= 16 rows of logits), so no (N, K, C, H, W) tensor ever exists. See gm_pixel.h for the two
// loop orders.
//
// Backward, per pixel, with r_nk = exp(a_nk - logprob_n) * grad_n and z = (x - mu) / s:
//   d/dlogweight_k = sum_n r_nk
//   d/dmean_kc     = sum_n r_nk z_nkc / s_k,      d/dsample_nc = -sum_k r_nk z_nkc / s_k
//   d/dlogstd_k    = sum_n r_nk (|z_nk|^2 - C)    (summed over k as well for a shared std)
#include <algorithm>
#include <type_traits>

#include "gm_pixel.h"

namespace gmflow {
namespace cpu {
namespace GMFLOW_CPU_ISA {
namespace {

// Stores v into dst, or adds it when `accumulate`.
template <typename T, typename A>
GMFLOW_ALWAYS_INLINE void put(T* dst, A v, bool accumulate) {
  store_acc(dst, accumulate ? load_acc(dst) + v : v);
}

// dst[v] = src[v] (first contribution) or dst[v] += src[v]; the branch is outside the
// vector loop so plain stores never read the destination.
template <typename T, typename A>
GMFLOW_ALWAYS_INLINE void put_row(T* GMFLOW_RESTRICT dst, const A* GMFLOW_RESTRICT src, int64_t n, bool accumulate,
                                  A sign = A(1)) {
  if (accumulate) {
#pragma omp simd
    for (int64_t v = 0; v < n; ++v) store_acc(dst + v, load_acc(dst + v) + sign * src[v]);
  } else {
#pragma omp simd
    for (int64_t v = 0; v < n; ++v) store_acc(dst + v, sign * src[v]);
  }
}

// ------------------------------------------------------------------ forward

constexpr int64_t kTileLogitRows = 16;  // K up to this: the pixel tiles' two-pass logsumexp
// The single-pixel items' one-pass sum of exps: below this its terms may have lost precision.
template <typename A>
constexpr A kMinOnePassSum = A(1e-25);

// A chunk of up to kItems single-pixel items (b, n) of gm_logprob: each item's operands, and 1/s and
// the normaliser C log s + C/2 log 2pi computed vectorised over the chunk.
template <int kC, typename T>
struct LogprobItemChunk {
  using A = acc_t<T>;
  BatchGm<T> gm[kItems];
  const T* x[kItems];
  A inv_std[kItems], norm[kItems];

  GMFLOW_ALWAYS_INLINE LogprobItemChunk(const GmLogprobParams<T>& prm, int64_t i0, int64_t count) {
    A log_std[kItems] = {};
    for (int64_t i = 0; i < count; ++i) {
      const int64_t b = (i0 + i) / prm.N, n = (i0 + i) - b * prm.N;
      int64_t off[4];
      prm.layout.offsets(b, off);
      gm[i] = BatchGm<T>::at(prm.gm, off);
      log_std[i] = load_acc(gm[i].logstds);
      x[i] = prm.samples + off[kSamples] + n * prm.samples_sn;
    }
    const A half_c_log2pi = A(0.5 * kLog2Pi) * A(kC);
#pragma omp simd
    for (int64_t i = 0; i < kItems; ++i) {
      inv_std[i] = fast_exp(-log_std[i]);
      norm[i] = A(kC) * log_std[i] + half_c_log2pi;
    }
  }
};

// |x - mu|^2 / s^2 for one component of packed (k, c) means (mu: its kC values).
template <int kC, typename T, typename A>
GMFLOW_ALWAYS_INLINE A packed_sq_distance(const A (&xs)[kC], const T* mu, A inv_std) {
  A q = A(0);
#pragma GCC unroll 4
  for (int c = 0; c < kC; ++c) {
    const A z = (xs[c] - load_acc(mu + c)) * inv_std;
    q += z * z;
  }
  return q;
}

template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void logprob_items(const GmLogprobParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  for (int64_t i0 = begin; i0 < end; i0 += kItems) {
    const int64_t count = std::min(kItems, end - i0);
    const LogprobItemChunk<kC, T> chunk(prm, i0, count);
    A block_max[kItems], block_sum[kItems], out[kItems];
    for (int64_t i = 0; i < count; ++i) {
      A xs[kC], a[kBlock];
      for (int64_t c = 0; c < kC; ++c) xs[c] = load_acc(chunk.x[i] + c * prm.samples_sc);
      const A norm = chunk.norm[i], inv = chunk.inv_std[i];
      const T* mu = chunk.gm[i].means;
      const T* logweights = chunk.gm[i].logweights;
      const bool done = with_unit_stride(gm.logweights_sk, [&](auto sk) {
        // One pass: the largest log weight bounds every logit + norm (|z|^2 >= 0), so each term
        // exp(logweight - shift - |z|^2 / 2) is at most 1 and the logits need not be stored. A sum
        // too small for full precision (or NaN) takes the two passes below.
        const A shift = max_parts<A>(gm.K, [&](int64_t j) { return load_acc(logweights + j * sk); });
        const A sum = sum_parts<A>(gm.K, [&](int64_t j) {
          const A q = packed_sq_distance<kC>(xs, mu + j * kC, inv);
          return fast_exp(load_acc(logweights + j * sk) - shift - A(0.5) * q);
        });
        block_max[i] = shift - norm;
        block_sum[i] = sum;
        return sum >= kMinOnePassSum<A>;
      });
      if (done) continue;
      with_unit_stride(gm.logweights_sk, [&](auto sk) {
#pragma omp simd
        for (int64_t j = 0; j < gm.K; ++j)
          a[j] = load_acc(logweights + j * sk) - norm - A(0.5) * packed_sq_distance<kC>(xs, mu + j * kC, inv);
      });
      block_logsumexp(a, gm.K, block_max[i], block_sum[i]);
    }
    for (int64_t i = count; i < kItems; ++i) block_max[i] = block_sum[i] = A(0);  // unused lanes, defined
#pragma omp simd
    for (int64_t i = 0; i < kItems; ++i) out[i] = lse_result(block_max[i], block_sum[i]);
    for (int64_t i = 0; i < count; ++i) store_acc(prm.logprob + i0 + i, out[i]);
  }
}

template <typename T>
GMFLOW_FLATTEN void logprob_range(const GmLogprobParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t P = gm.P;
  if (P == 1 && single_pixel_items(gm)) {
    return dispatch_packed_channels(gm.C, true, [&]<int kC>() {
      if constexpr (kC > 0) logprob_items<kC>(prm, begin, end);
    });
  }
  for_each_pixel_run(prm.layout, prm.N, P, begin, end, [&](int64_t b, int64_t n, int64_t p_begin, int64_t p_end,
                                                           const int64_t(&off)[4]) {
    const BatchGm<T> g = BatchGm<T>::at(gm, off);
    const T* x_row = prm.samples + off[kSamples] + n * prm.samples_sn;
    T* out = prm.logprob + (b * prm.N + n) * P;
    if (P >= kMinTilePixels) {
      for_each_tile(p_begin, p_end, [&]<int kWidth>(int64_t p0, int64_t count) {
        A inv_std[kTile], norm[kTile], a[kTile], max_value[kTile], sum[kTile];
        for (int64_t v = 0; v < kTile; ++v) {
          max_value[v] = neg_infinity<A>();
          sum[v] = A(0);
        }
        const int64_t n_v = kWidth > 0 ? kWidth : count;
        if (gm.K <= kTileLogitRows) {
          // Two passes: the logits and their max, then one exp each (no per-update selects).
          A logits[kTileLogitRows * kTile];
          for (int64_t k = 0; k < gm.K; ++k) {
            A* row = logits + k * kTile;
            tile_component_prior<kWidth>(gm, g, p0, count, k, inv_std, norm, row);
            tile_subtract_quadratic<kWidth>(gm, g, p0, count, k, x_row + p0, prm.samples_sc, inv_std, row);
#pragma omp simd
            for (int64_t v = 0; v < n_v; ++v)
              max_value[v] = row[v] > max_value[v] || row[v] != row[v] ? row[v] : max_value[v];  // NaN stays
          }
          for (int64_t k = 0; k < gm.K; ++k) {
            const A* row = logits + k * kTile;
#pragma omp simd
            for (int64_t v = 0; v < n_v; ++v) sum[v] += exp_clamped(row[v] - max_value[v]);  // -inf rows: ~1e-38
          }
#pragma omp simd
          for (int64_t v = 0; v < n_v; ++v) {
            const A result = max_value[v] + fast_log(sum[v]);
            store_acc(out + p0 + v, max_value[v] == neg_infinity<A>() ? max_value[v] : result);
          }
          return;
        }
        for (int64_t k = 0; k < gm.K; ++k) {
          tile_component_prior<kWidth>(gm, g, p0, count, k, inv_std, norm, a);
          tile_subtract_quadratic<kWidth>(gm, g, p0, count, k, x_row + p0, prm.samples_sc, inv_std, a);
          tile_lse_push<kWidth>(count, a, max_value, sum);
        }
#pragma omp simd
        for (int64_t v = 0; v < count; ++v) store_acc(out + p0 + v, lse_result(max_value[v], sum[v]));
      });
    } else {
      dispatch_packed_channels(gm.C, packed_means(gm), [&]<int kC>() {
        A log_std[kBlock], inv_std[kBlock], a[kBlock];
        for (int64_t p = p_begin; p < p_end; ++p) {
          OnlineLogSumExp<A> lse;
          for (int64_t k0 = 0; k0 < gm.K; k0 += kBlock) {
            const int64_t count = std::min(kBlock, gm.K - k0);
            packed_component_log_densities<kC>(gm, g, p, x_row + p, prm.samples_sc, k0, count, log_std, inv_std, a);
            A block_max, block_sum;
            block_logsumexp(a, count, block_max, block_sum);
            lse.merge(block_max, block_sum);
          }
          store_acc(out + p, lse.result());
        }
      });
    }
  });
}

// ------------------------------------------------------------------ backward

// Where the gradients of one batch index go (null: not requested).
template <typename T>
struct GradRows {
  T* means;     // + (k * C + c) * P + p
  T* logstds;   // + k * P + p (per-component) or p (shared)
  T* weights;   // + k * P + p
  T* samples;   // + (n * C + c) * P + p
};

template <typename T>
GMFLOW_ALWAYS_INLINE GradRows<T> grad_rows(const GmLogprobBackwardParams<T>& prm, int64_t b) {
  const GmOperands<T>& gm = prm.fwd.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P, N = prm.fwd.N;
  return GradRows<T>{prm.grad_means ? prm.grad_means + b * K * C * P : nullptr,
                     prm.grad_logstds ? prm.grad_logstds + b * gm.logstds_k * P : nullptr,
                     prm.grad_logweights ? prm.grad_logweights + b * K * P : nullptr,
                     prm.grad_samples ? prm.grad_samples + b * N * C * P : nullptr};
}

// Zero gradients of the GM parameters of pixels [p0, p0+count) (N == 0: nothing to sum).
template <typename T>
void zero_gm_grads(const GradRows<T>& out, const GmOperands<T>& gm, int64_t p0, int64_t count) {
  using A = acc_t<T>;
  for (int64_t v = p0; v < p0 + count; ++v) {
    for (int64_t k = 0; k < gm.K; ++k) {
      if (out.weights) store_acc(out.weights + k * gm.P + v, A(0));
      for (int64_t c = 0; c < gm.C && out.means; ++c) store_acc(out.means + (k * gm.C + c) * gm.P + v, A(0));
    }
    for (int64_t k = 0; k < gm.logstds_k && out.logstds; ++k) store_acc(out.logstds + k * gm.P + v, A(0));
  }
}

template <int kWidth, typename T>
GMFLOW_ALWAYS_INLINE void logprob_backward_tile(const GmLogprobBackwardParams<T>& prm, const BatchGm<T>& g,
                                                const GradRows<T>& out, const int64_t (&off)[4], int64_t b, int64_t p0,
                                                int64_t count) {
  using A = acc_t<T>;
  const GmLogprobParams<T>& fwd = prm.fwd;
  const GmOperands<T>& gm = fwd.gm;
  const int64_t N = fwd.N, C = gm.C, P = gm.P;
  const int64_t n_v = kWidth > 0 ? kWidth : count;
  const bool shared_std = gm.logstds_k == 1;
  A inv_std[kTile], norm[kTile], a[kTile], r[kTile], zsq[kTile], lse[kTile], grad[kTile], w[kTile];
  A g_ls_shared[kTile];
  for (int64_t v = 0; v < kTile; ++v) g_ls_shared[v] = A(0);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = fwd.samples + off[kSamples] + n * fwd.samples_sn + p0;
    const int64_t row = (b * N + n) * P + p0;
    for (int64_t v = 0; v < n_v; ++v) {
      lse[v] = load_acc(prm.logprob + row + v);
      grad[v] = load_acc(prm.grad + row + v);
    }
    for (int64_t k = 0; k < gm.K; ++k) {
      tile_component_prior<kWidth>(gm, g, p0, count, k, inv_std, norm, a);
      tile_subtract_quadratic<kWidth>(gm, g, p0, count, k, x, fwd.samples_sc, inv_std, a);
#pragma omp simd
      for (int64_t v = 0; v < n_v; ++v) {
        r[v] = responsibility(a[v], lse[v]) * grad[v];
        zsq[v] = A(0);
      }
      if (out.weights) put_row(out.weights + k * P + p0, r, n_v, n > 0);
      for (int64_t c = 0; c < C; ++c) {
        const T* mu = g.means + k * gm.means_sk + c * gm.means_sc + p0;
        const T* xc = x + c * fwd.samples_sc;
#pragma omp simd
        for (int64_t v = 0; v < n_v; ++v) {
          const A z = (load_acc(xc + v) - load_acc(mu + v)) * inv_std[v];
          zsq[v] += z * z;
          w[v] = r[v] * z * inv_std[v];
        }
        if (out.means) put_row(out.means + (k * C + c) * P + p0, w, n_v, n > 0);
        if (out.samples) put_row(out.samples + (n * C + c) * P + p0, w, n_v, k > 0, A(-1));
      }
      if (out.logstds) {
        if (shared_std) {
#pragma omp simd
          for (int64_t v = 0; v < n_v; ++v) g_ls_shared[v] += r[v] * (zsq[v] - A(C));
        } else {
#pragma omp simd
          for (int64_t v = 0; v < n_v; ++v) zsq[v] = r[v] * (zsq[v] - A(C));
          put_row(out.logstds + k * P + p0, zsq, n_v, n > 0);
        }
      }
    }
  }
  if (out.logstds && shared_std && N > 0) {
    for (int64_t v = 0; v < n_v; ++v) store_acc(out.logstds + p0 + v, g_ls_shared[v]);
  }
  if (N == 0) zero_gm_grads(out, gm, p0, n_v);
}

// A full tile with one std per pixel, one sample per pixel (N == 1) and C = kC <= 4: one pass over
// the lanes per component. Each lane's z, |z|^2 and responsibility stay in registers (the general
// tile stores them in rows and reads x and mu twice); the samples' and the shared std's gradients
// are summed over k in tile rows (the samples' only when requested: training never asks). The GM's
// gradients not requested go to a scratch row, keeping the loop free of branches.
template <int kC, int kWidth, bool kSamplesGrad, typename T>
GMFLOW_SEPARATE_NEST void logprob_backward_tile_channels(const GmLogprobBackwardParams<T>& prm, const BatchGm<T>& g,
                                                         const GradRows<T>& out, const int64_t (&off)[4], int64_t b,
                                                         int64_t p0) {
  using A = acc_t<T>;
  const GmLogprobParams<T>& fwd = prm.fwd;
  const GmOperands<T>& gm = fwd.gm;
  const int64_t P = gm.P;
  A inv_std[kWidth], norm[kWidth], lse[kWidth], grad[kWidth], g_logstd[kWidth], g_x[kC * kWidth];
  T unused[(kC + 1) * kWidth];
  tile_component_prior<kWidth>(gm, g, p0, kWidth, 0, inv_std, norm, lse);  // the std's factors (lse: scratch)
  const int64_t row = b * P + p0;
#pragma omp simd
  for (int64_t v = 0; v < kWidth; ++v) {
    lse[v] = load_acc(prm.logprob + row + v);
    grad[v] = load_acc(prm.grad + row + v);
    g_logstd[v] = A(0);
  }
  if constexpr (kSamplesGrad)
    for (int64_t v = 0; v < kC * kWidth; ++v) g_x[v] = A(0);
  const T* GMFLOW_RESTRICT x = fwd.samples + off[kSamples] + p0;
  const int64_t x_sc = fwd.samples_sc, mu_sc = gm.means_sc;
  const int64_t g_mu_sc = out.means ? P : kWidth;
  for (int64_t k = 0; k < gm.K; ++k) {
    const T* GMFLOW_RESTRICT mu = g.means + k * gm.means_sk + p0;
    const T* GMFLOW_RESTRICT lw = g.logweights + k * gm.logweights_sk + p0;
    T* GMFLOW_RESTRICT g_w = out.weights ? out.weights + k * P + p0 : unused;
    T* GMFLOW_RESTRICT g_mu = out.means ? out.means + k * kC * P + p0 : unused + kWidth;
#pragma omp simd
    for (int64_t v = 0; v < kWidth; ++v) {
      A z[kC], q = A(0);
#pragma GCC unroll 4
      for (int c = 0; c < kC; ++c) {
        z[c] = (load_acc(x + c * x_sc + v) - load_acc(mu + c * mu_sc + v)) * inv_std[v];
        q += z[c] * z[c];
      }
      const A r = responsibility(load_acc(lw + v) - norm[v] - A(0.5) * q, lse[v]) * grad[v];
      store_acc(g_w + v, r);
      const A r_inv = r * inv_std[v];
#pragma GCC unroll 4
      for (int c = 0; c < kC; ++c) {
        const A w = r_inv * z[c];
        store_acc(g_mu + c * g_mu_sc + v, w);
        if constexpr (kSamplesGrad) g_x[c * kWidth + v] -= w;
      }
      g_logstd[v] += r * (q - A(kC));
    }
  }
  if constexpr (kSamplesGrad) {
    for (int c = 0; c < kC; ++c) {
#pragma omp simd
      for (int64_t v = 0; v < kWidth; ++v) store_acc(out.samples + c * P + p0 + v, g_x[c * kWidth + v]);
    }
  }
  if (out.logstds) {
#pragma omp simd
    for (int64_t v = 0; v < kWidth; ++v) store_acc(out.logstds + p0 + v, g_logstd[v]);
  }
}

template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void logprob_backward_packed(const GmLogprobBackwardParams<T>& prm, const BatchGm<T>& g,
                                                  const GradRows<T>& out, const int64_t (&off)[4], int64_t b,
                                                  int64_t p) {
  using A = acc_t<T>;
  const GmLogprobParams<T>& fwd = prm.fwd;
  const GmOperands<T>& gm = fwd.gm;
  const int64_t N = fwd.N, K = gm.K, C = gm.C, P = gm.P;
  const bool shared_std = gm.logstds_k == 1;
  A log_std[kBlock], inv_std[kBlock], a[kBlock], r[kBlock], zsq[kBlock];
  A g_ls_shared = A(0);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = fwd.samples + off[kSamples] + n * fwd.samples_sn + p;
    const int64_t index = (b * N + n) * P + p;
    const A lse = load_acc(prm.logprob + index);
    const A grad = load_acc(prm.grad + index);
    for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
      const int64_t count = std::min(kBlock, K - k0);
      packed_component_log_densities<kC>(gm, g, p, x, fwd.samples_sc, k0, count, log_std, inv_std, a);
#pragma omp simd
      for (int64_t j = 0; j < count; ++j) {
        r[j] = responsibility(a[j], lse) * grad;
        zsq[j] = A(0);
      }
      if (out.weights && P == 1) {
        put_row(out.weights + k0, r, count, n > 0);
      } else if (out.weights) {
        for (int64_t j = 0; j < count; ++j) put(out.weights + (k0 + j) * P + p, r[j], n > 0);
      }
      if constexpr (kC > 0) {
        // Packed (k, c) means and P == 1: the gradient rows are contiguous too, so the
        // whole block vectorises over j with compile-time channel strides.
        A xs[kC], scratch[kBlock * kC];
        for (int64_t c = 0; c < kC; ++c) xs[c] = load_acc(x + c * fwd.samples_sc);
        const T* mu = g.means + k0 * kC;
        // First contribution to a full-precision gradient: write it in place (no copy).
        const bool in_place = std::is_same_v<T, A> && out.means && n == 0;
        A* w = in_place ? reinterpret_cast<A*>(out.means + k0 * kC) : scratch;
#pragma omp simd
        for (int64_t j = 0; j < count; ++j) {
          A q = A(0);
          for (int64_t c = 0; c < kC; ++c) {
            const A z = (xs[c] - load_acc(mu + j * kC + c)) * inv_std[j];
            q += z * z;
            w[j * kC + c] = r[j] * z * inv_std[j];
          }
          zsq[j] = q;
        }
        if (out.means && !in_place) put_row(out.means + k0 * kC, w, count * kC, n > 0);
        if (out.samples) {
          for (int64_t c = 0; c < kC; ++c)
            put(out.samples + n * kC + c, -sum_parts<A>(count, [&](int64_t j) { return w[j * kC + c]; }), k0 > 0);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const A xc = load_acc(x + c * fwd.samples_sc);
          const T* mu = g.means + p + c * gm.means_sc + k0 * gm.means_sk;
          A g_x = A(0);
          for (int64_t j = 0; j < count; ++j) {
            const A z = (xc - load_acc(mu + j * gm.means_sk)) * inv_std[j];
            zsq[j] += z * z;
            const A w = r[j] * z * inv_std[j];
            g_x -= w;
            if (out.means) put(out.means + ((k0 + j) * C + c) * P + p, w, n > 0);
          }
          if (out.samples) put(out.samples + (n * C + c) * P + p, g_x, k0 > 0);
        }
      }
      if (out.logstds) {
        if (shared_std) {
          g_ls_shared += sum_parts<A>(count, [&](int64_t j) { return r[j] * (zsq[j] - A(C)); });
        } else {
          for (int64_t j = 0; j < count; ++j) put(out.logstds + (k0 + j) * P + p, r[j] * (zsq[j] - A(C)), n > 0);
        }
      }
    }
  }
  if (out.logstds && shared_std && N > 0) store_acc(out.logstds + p, g_ls_shared);
  if (N == 0) zero_gm_grads(out, gm, p, 1);
}

// Single-pixel images with one sample per item (the toy), in chunks of kItems items as the forward:
// 1/s and the normaliser vectorised over the chunk, one pass over an item's components that writes their
// gradients, the std's and samples' gradients summed with log-depth partial sums.
template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void logprob_backward_items(const GmLogprobBackwardParams<T>& prm, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const GmLogprobParams<T>& fwd = prm.fwd;
  const int64_t K = fwd.gm.K;
  // The means' gradient is computed in place for a full-precision output, else in w_scratch.
  constexpr bool kInPlace = std::is_same_v<T, A>;
  A w_scratch[kBlock * kC], std_term[kBlock];
  T unused[kBlock];
  for (int64_t i0 = begin; i0 < end; i0 += kItems) {
    const int64_t count = std::min(kItems, end - i0);
    const LogprobItemChunk<kC, T> chunk(fwd, i0, count);  // N == 1: item i0 + i is batch index b
    for (int64_t i = 0; i < count; ++i) {
      const int64_t b = i0 + i;
      const BatchGm<T>& g = chunk.gm[i];
      const GradRows<T> out = grad_rows(prm, b);
      A xs[kC];
      for (int c = 0; c < kC; ++c) xs[c] = load_acc(chunk.x[i] + c * fwd.samples_sc);
      const A lse = load_acc(prm.logprob + b), grad = load_acc(prm.grad + b);
      const A inv = chunk.inv_std[i], nrm = chunk.norm[i];
      A* GMFLOW_RESTRICT w = kInPlace && out.means ? reinterpret_cast<A*>(out.means) : w_scratch;
      T* GMFLOW_RESTRICT g_w = out.weights ? out.weights : unused;
      const T* GMFLOW_RESTRICT mu = g.means;
      // An all-zero-weight item (lse = -inf) gets exp(a - inf) * 0 = 0 for every component. Done here,
      // not by responsibility() in the loop, whose select on an invariant kept GCC from vectorising it.
      const bool empty = lse == neg_infinity<A>();
      const A shift = empty ? -neg_infinity<A>() : lse, scale = empty ? A(0) : grad;
      with_unit_stride(fwd.gm.logweights_sk, [&](auto sk) {
#pragma omp simd
        for (int64_t j = 0; j < K; ++j) {
          const A q = packed_sq_distance<kC>(xs, mu + j * kC, inv);
          const A r = fast_exp(load_acc(g.logweights + j * sk) - nrm - A(0.5) * q - shift) * scale;
          store_acc(g_w + j, r);
          std_term[j] = r * (q - A(kC));
          const A r_inv2 = r * inv * inv;
#pragma GCC unroll 4
          for (int64_t c = 0; c < kC; ++c) w[j * kC + c] = r_inv2 * (xs[c] - load_acc(mu + j * kC + c));
        }
      });
      if (!kInPlace && out.means) put_row(out.means, w_scratch, K * kC, false);
      if (out.samples) {
        A g_x[kC];
        sum_parts_channels<kC>(K, [&](int64_t j, int c) { return w[j * kC + c]; }, g_x);
        for (int c = 0; c < kC; ++c) store_acc(out.samples + c, -g_x[c]);
      }
      if (out.logstds) store_acc(out.logstds, sum_parts<A>(K, [&](int64_t j) { return std_term[j]; }));
    }
  }
}

template <typename T>
GMFLOW_FLATTEN void logprob_backward_range(const GmLogprobBackwardParams<T>& prm, int64_t begin, int64_t end) {
  const GmOperands<T>& gm = prm.fwd.gm;
  if (prm.fwd.N == 1 && single_pixel_items(gm)) {
    return dispatch_packed_channels(gm.C, true, [&]<int kC>() {
      if constexpr (kC > 0) logprob_backward_items<kC>(prm, begin, end);
    });
  }
  for_each_pixel_run(prm.fwd.layout, 1, gm.P, begin, end,
                     [&](int64_t b, int64_t, int64_t p_begin, int64_t p_end, const int64_t(&off)[4]) {
                       const BatchGm<T> g = BatchGm<T>::at(gm, off);
                       const GradRows<T> out = grad_rows(prm, b);
                       if (gm.P >= kMinTilePixels) {
                         const bool fused_channels =
                             prm.fwd.N == 1 && gm.logstds_k == 1 && gm.C >= 1 && gm.C <= 4;
                         for_each_tile(p_begin, p_end, [&]<int kWidth>(int64_t p0, int64_t count) {
                           if constexpr (kWidth > 0) {
                             if (fused_channels) {
                               return dispatch_packed_channels(gm.C, true, [&]<int kC>() {
                                 if constexpr (kC > 0) {
                                   if (out.samples)
                                     return logprob_backward_tile_channels<kC, kWidth, true>(prm, g, out, off, b, p0);
                                   logprob_backward_tile_channels<kC, kWidth, false>(prm, g, out, off, b, p0);
                                 }
                               });
                             }
                           }
                           logprob_backward_tile<kWidth>(prm, g, out, off, b, p0, count);
                         });
                       } else {
                         // The packed order only vectorises the log densities; the
                         // gradient scatter is scalar (it is a small share of the work).
                         for (int64_t p = p_begin; p < p_end; ++p) {
                           dispatch_packed_channels(gm.C, packed_means(gm), [&]<int kC>() {
                             logprob_backward_packed<kC>(prm, g, out, off, b, p);
                           });
                         }
                       }
                     });
}

}  // namespace

template <typename T>
void gm_logprob(const GmLogprobParams<T>& prm, const ParallelFor& parallel_for) {
  const int64_t items = prm.gm.batch * prm.N * prm.gm.P;
  parallel_for(0, items, grain_for(prm.gm.K * (prm.gm.C + 4)),
               [&](int64_t b, int64_t e) { logprob_range(prm, b, e); });
}

template <typename T>
void gm_logprob_backward(const GmLogprobBackwardParams<T>& prm, const ParallelFor& parallel_for) {
  const GmOperands<T>& gm = prm.fwd.gm;
  const int64_t items = gm.batch * gm.P;
  parallel_for(0, items, grain_for(std::max<int64_t>(prm.fwd.N, 1) * gm.K * (2 * gm.C + 6)),
               [&](int64_t b, int64_t e) { logprob_backward_range(prm, b, e); });
}

#define GMFLOW_INSTANTIATE_DENSITY(T)                                                      \
  template void gm_logprob<T>(const GmLogprobParams<T>&, const ParallelFor&);             \
  template void gm_logprob_backward<T>(const GmLogprobBackwardParams<T>&, const ParallelFor&);

GMFLOW_INSTANTIATE_DENSITY(float)
GMFLOW_INSTANTIATE_DENSITY(double)
GMFLOW_INSTANTIATE_DENSITY(Half)
GMFLOW_INSTANTIATE_DENSITY(BFloat16)

}  // namespace GMFLOW_CPU_ISA
}  // namespace cpu
}  // namespace gmflow
