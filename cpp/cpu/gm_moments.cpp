// CPU kernels of gm_to_mean (+ backward) and gm_to_iso_gaussian (torch-free).
//
//   gm_to_mean:          mean_c = sum_k pi_k mu_kc,  pi = softmax_k(power * logweights)
//     backward:          d/dmu_kc = g_c pi_k,  d/dlogweight_k = power pi_k sum_c g_c (mu_kc - mean_c)
//   gm_to_iso_gaussian:  m_c = sum_k w_k mu_kc,  var = mean_c sum_k w_k (mu_kc - m_c)^2 + within,
//                        w = exp(logweights) (inputs are normalised; no softmax, as upstream),
//                        within = s^2 (shared std) or sum_k w_k s_k^2 (per-component stds).
// Loop orders as in gm_density.cpp (see gm_pixel.h).
#include <algorithm>

#include "gm_pixel.h"

namespace gmflow {
namespace cpu {
namespace GMFLOW_CPU_ISA {
namespace {

constexpr int64_t kChannelGroup = 8;  // channels accumulated at once in registers/stack
constexpr int64_t kCachedComponents = 16;  // K up to this: a tile's weights are computed once

// ------------------------------------------------------------------ pixel tiles

// Softmax statistics of a tile: max_k(power * lw) and sum_k exp(power * lw - max).
template <int kWidth, typename T, typename A>
GMFLOW_ALWAYS_INLINE void tile_softmax_stats(const GmOperands<T>& gm, const BatchGm<T>& g, int64_t p0, int64_t count,
                                             A power, A* GMFLOW_RESTRICT max_value, A* GMFLOW_RESTRICT sum) {
  const int64_t n = kWidth > 0 ? kWidth : count;
  for (int64_t v = 0; v < n; ++v) {
    max_value[v] = neg_infinity<A>();
    sum[v] = A(0);
  }
  for (int64_t k = 0; k < gm.K; ++k) {
    const T* lw = g.logweights + k * gm.logweights_sk + p0;
#pragma omp simd
    for (int64_t v = 0; v < n; ++v) {
      const A t = power * load_acc(lw + v);
      max_value[v] = t > max_value[v] ? t : max_value[v];
    }
  }
  for (int64_t k = 0; k < gm.K; ++k) {
    const T* lw = g.logweights + k * gm.logweights_sk + p0;
#pragma omp simd
    for (int64_t v = 0; v < n; ++v) sum[v] += fast_exp(power * load_acc(lw + v) - max_value[v]);
  }
}

// weight[v] = exp(scale * lw_k - shift[v]) * factor[v] for component k of the tile.
template <int kWidth, typename T, typename A>
GMFLOW_ALWAYS_INLINE void tile_weights(const GmOperands<T>& gm, const BatchGm<T>& g, int64_t p0, int64_t count,
                                       int64_t k, A scale, const A* shift, const A* factor, A* GMFLOW_RESTRICT weight) {
  const int64_t n = kWidth > 0 ? kWidth : count;
  const T* lw = g.logweights + k * gm.logweights_sk + p0;
#pragma omp simd
  for (int64_t v = 0; v < n; ++v) weight[v] = fast_exp(scale * load_acc(lw + v) - shift[v]) * factor[v];
}

template <int kWidth, typename T>
GMFLOW_ALWAYS_INLINE void to_mean_tile(const GmToMeanParams<T>& prm, const BatchGm<T>& g, int64_t b, int64_t p0,
                                       int64_t count) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t n = kWidth > 0 ? kWidth : count;
  const A power = A(prm.power);
  A max_value[kTile], inv_sum[kTile], w[kTile], acc[kChannelGroup][kTile];
  tile_softmax_stats<kWidth>(gm, g, p0, count, power, max_value, inv_sum);
  for (int64_t v = 0; v < n; ++v) inv_sum[v] = A(1) / inv_sum[v];
  for (int64_t c0 = 0; c0 < gm.C; c0 += kChannelGroup) {
    const int64_t nc = std::min(kChannelGroup, gm.C - c0);
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t v = 0; v < n; ++v) acc[c][v] = A(0);
    for (int64_t k = 0; k < gm.K; ++k) {
      tile_weights<kWidth>(gm, g, p0, count, k, power, max_value, inv_sum, w);
      for (int64_t c = 0; c < nc; ++c) {
        const T* mu = g.means + k * gm.means_sk + (c0 + c) * gm.means_sc + p0;
#pragma omp simd
        for (int64_t v = 0; v < n; ++v) acc[c][v] += w[v] * load_acc(mu + v);
      }
    }
    for (int64_t c = 0; c < nc; ++c) {
      T* out = prm.mean + (b * gm.C + c0 + c) * gm.P + p0;
      for (int64_t v = 0; v < n; ++v) store_acc(out + v, acc[c][v]);
    }
  }
}

template <int kWidth, typename T>
GMFLOW_ALWAYS_INLINE void to_mean_backward_tile(const GmToMeanBackwardParams<T>& prm, const BatchGm<T>& g, int64_t b,
                                                int64_t p0, int64_t count) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.fwd.gm;
  const int64_t n = kWidth > 0 ? kWidth : count;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  const A power = A(prm.fwd.power);
  A max_value[kTile], inv_sum[kTile], w[kTile], dot[kTile];
  tile_softmax_stats<kWidth>(gm, g, p0, count, power, max_value, inv_sum);
  for (int64_t v = 0; v < n; ++v) inv_sum[v] = A(1) / inv_sum[v];
  for (int64_t k = 0; k < K; ++k) {
    tile_weights<kWidth>(gm, g, p0, count, k, power, max_value, inv_sum, w);
    for (int64_t v = 0; v < n; ++v) dot[v] = A(0);
    for (int64_t c = 0; c < C; ++c) {
      const T* mu = g.means + k * gm.means_sk + c * gm.means_sc + p0;
      const T* grad = prm.grad + (b * C + c) * P + p0;
      const T* mean = prm.mean + (b * C + c) * P + p0;
#pragma omp simd
      for (int64_t v = 0; v < n; ++v) dot[v] += load_acc(grad + v) * (load_acc(mu + v) - load_acc(mean + v));
      if (prm.grad_means) {
        T* dst = prm.grad_means + ((b * K + k) * C + c) * P + p0;
#pragma omp simd
        for (int64_t v = 0; v < n; ++v) store_acc(dst + v, load_acc(grad + v) * w[v]);
      }
    }
    if (prm.grad_logweights) {
      T* dst = prm.grad_logweights + (b * K + k) * P + p0;
#pragma omp simd
      for (int64_t v = 0; v < n; ++v) store_acc(dst + v, power * w[v] * dot[v]);
    }
  }
}

template <int kWidth, typename T>
GMFLOW_ALWAYS_INLINE void to_iso_gaussian_tile(const GmToIsoGaussianParams<T>& prm, const BatchGm<T>& g, int64_t b,
                                               int64_t p0, int64_t count) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t n = kWidth > 0 ? kWidth : count;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  // The weights of up to kCachedComponents components are computed once per tile (one exp per
  // component and pixel); both passes over the means, and the within term, reuse them.
  const bool cached = K <= kCachedComponents;
  A zero[kTile], one[kTile], w_scratch[kTile], between[kTile], within[kTile], m[kChannelGroup][kTile];
  A w_cache[kCachedComponents][kTile];
  for (int64_t v = 0; v < kTile; ++v) {
    zero[v] = A(0);
    one[v] = A(1);
    between[v] = A(0);
    within[v] = A(0);
  }
  if (cached) {
    for (int64_t k = 0; k < K; ++k) tile_weights<kWidth>(gm, g, p0, count, k, A(1), zero, one, w_cache[k]);
  }
  const auto weights = [&](int64_t k) -> const A* {
    if (cached) return w_cache[k];
    tile_weights<kWidth>(gm, g, p0, count, k, A(1), zero, one, w_scratch);
    return w_scratch;
  };
  for (int64_t c0 = 0; c0 < C; c0 += kChannelGroup) {
    const int64_t nc = std::min(kChannelGroup, C - c0);
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t v = 0; v < n; ++v) m[c][v] = A(0);
    for (int64_t k = 0; k < K; ++k) {
      const A* GMFLOW_RESTRICT w = weights(k);
      for (int64_t c = 0; c < nc; ++c) {
        const T* mu = g.means + k * gm.means_sk + (c0 + c) * gm.means_sc + p0;
        A* GMFLOW_RESTRICT mc = m[c];
#pragma omp simd
        for (int64_t v = 0; v < n; ++v) mc[v] += w[v] * load_acc(mu + v);
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      const A* GMFLOW_RESTRICT w = weights(k);
      for (int64_t c = 0; c < nc; ++c) {
        const T* mu = g.means + k * gm.means_sk + (c0 + c) * gm.means_sc + p0;
        const A* GMFLOW_RESTRICT mc = m[c];
#pragma omp simd
        for (int64_t v = 0; v < n; ++v) {
          const A d = load_acc(mu + v) - mc[v];
          between[v] += w[v] * d * d;
        }
      }
    }
    for (int64_t c = 0; c < nc; ++c) {
      T* out = prm.mean + (b * C + c0 + c) * P + p0;
#pragma omp simd
      for (int64_t v = 0; v < n; ++v) store_acc(out + v, m[c][v]);
    }
  }
  if (gm.logstds_k == 1) {
    const T* ls = g.logstds;
    if (gm.logstds_sp) {
#pragma omp simd
      for (int64_t v = 0; v < n; ++v) within[v] = fast_exp(A(2) * load_acc(ls + p0 + v));
    } else {
      const A shared = fast_exp(A(2) * load_acc(ls));
      for (int64_t v = 0; v < n; ++v) within[v] = shared;
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const A* GMFLOW_RESTRICT w = weights(k);
      const T* ls = g.logstds + k * gm.logstds_sk;
      for (int64_t v = 0; v < n; ++v) within[v] += w[v] * fast_exp(A(2) * load_acc(ls + (gm.logstds_sp ? p0 + v : 0)));
    }
  }
  const A inv_c = C > 0 ? A(1) / A(C) : A(0);
  T* var = prm.var + b * P + p0;
#pragma omp simd
  for (int64_t v = 0; v < n; ++v) store_acc(var + v, between[v] * inv_c + within[v]);
}

// ------------------------------------------------------------------ packed components (small P)

// Weights of one pixel: softmax_k(scale * lw) when normalised, else exp(scale * lw).
// Computed once when K fits a block; larger K recomputes each block on request.
template <typename T, typename A = acc_t<T>>
struct PackedWeights {
  const T* lw;
  int64_t sk, K;
  A scale, shift = A(0), factor = A(1);
  A cache[kBlock];

  GMFLOW_ALWAYS_INLINE PackedWeights(const GmOperands<T>& gm, const BatchGm<T>& g, int64_t p, A scale_, bool normalise)
      : lw(g.logweights + p), sk(gm.logweights_sk), K(gm.K), scale(scale_) {
    if (normalise) {
      A m = neg_infinity<A>();
      with_unit_stride(sk, [&](auto s) {
#pragma omp simd reduction(max : m)
        for (int64_t k = 0; k < K; ++k) {
          const A t = scale * load_acc(lw + k * s);
          m = t > m ? t : m;
        }
      });
      shift = m;
    }
    if (K <= kBlock) {
      const A total = fill(0, K, cache);
      if (normalise) {
        factor = A(1) / total;
        const A f = factor;
        for (int64_t k = 0; k < K; ++k) cache[k] *= f;
      }
    } else if (normalise) {
      A total = A(0);
      for (int64_t k0 = 0; k0 < K; k0 += kBlock) total += fill(k0, std::min(kBlock, K - k0), cache);
      factor = A(1) / total;
    }
  }

  // out[j] = exp(scale * lw_{k0+j} - shift) * factor; returns the sum of out.
  GMFLOW_ALWAYS_INLINE A fill(int64_t k0, int64_t count, A* GMFLOW_RESTRICT out) const {
    A total = A(0);
    const A sc = scale, sh = shift, f = factor;  // locals: `out` may point into *this
    with_unit_stride(sk, [&](auto s) {
      const T* base = lw + k0 * sk;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < count; ++j) {
        out[j] = fast_exp(sc * load_acc(base + j * s) - sh) * f;
        total += out[j];
      }
    });
    return total;
  }

  // Weights of components k0 .. k0+count (count <= kBlock).
  GMFLOW_ALWAYS_INLINE const A* block(int64_t k0, int64_t count, A* scratch) const {
    if (K <= kBlock) return cache + k0;
    fill(k0, count, scratch);
    return scratch;
  }
};

template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void to_mean_packed(const GmToMeanParams<T>& prm, const BatchGm<T>& g, int64_t b, int64_t p) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  if constexpr (kC > 0) {
    if (gm.K <= kBlock) {  // one block: log-depth reductions, the division once per channel
      const T* lw = g.logweights + p;
      const T* mu = g.means + p;
      const A power = A(prm.power);
      A a[kBlock], e[kBlock], acc[kC];
      with_unit_stride(gm.logweights_sk, [&](auto sk) {
#pragma omp simd
        for (int64_t j = 0; j < gm.K; ++j) a[j] = power * load_acc(lw + j * sk);
      });
      const A sum = block_softmax_weights(a, gm.K, e);
      sum_parts_channels<kC, A>(gm.K, [&](int64_t j, int c) { return e[j] * load_acc(mu + j * kC + c); }, acc);
      const A inv = A(1) / sum;
      for (int64_t c = 0; c < kC; ++c) store_acc(prm.mean + (b * kC + c) * gm.P + p, acc[c] * inv);
      return;
    }
  }
  const PackedWeights<T> pi(gm, g, p, A(prm.power), true);
  A scratch[kBlock];
  if constexpr (kC > 0) {
    A acc[kC] = {};
    for (int64_t k0 = 0; k0 < gm.K; k0 += kBlock) {
      const int64_t count = std::min(kBlock, gm.K - k0);
      const A* w = pi.block(k0, count, scratch);
      const T* mu = g.means + p + k0 * kC;
#pragma omp simd reduction(+ : acc[:kC])
      for (int64_t j = 0; j < count; ++j)
        for (int64_t c = 0; c < kC; ++c) acc[c] += w[j] * load_acc(mu + j * kC + c);
    }
    for (int64_t c = 0; c < kC; ++c) store_acc(prm.mean + (b * kC + c) * gm.P + p, acc[c]);
    return;
  }
  for (int64_t c = 0; c < gm.C; ++c) {
    A acc = A(0);
    for (int64_t k0 = 0; k0 < gm.K; k0 += kBlock) {
      const int64_t count = std::min(kBlock, gm.K - k0);
      const A* w = pi.block(k0, count, scratch);
      const T* mu = g.means + p + c * gm.means_sc + k0 * gm.means_sk;
      for (int64_t j = 0; j < count; ++j) acc += w[j] * load_acc(mu + j * gm.means_sk);
    }
    store_acc(prm.mean + (b * gm.C + c) * gm.P + p, acc);
  }
}

template <typename T>
GMFLOW_ALWAYS_INLINE void to_mean_backward_packed(const GmToMeanBackwardParams<T>& prm, const BatchGm<T>& g, int64_t b,
                                                  int64_t p) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.fwd.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  const A power = A(prm.fwd.power);
  const PackedWeights<T> pi(gm, g, p, power, true);
  A scratch[kBlock];
  for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
    const int64_t count = std::min(kBlock, K - k0);
    const A* w = pi.block(k0, count, scratch);
    for (int64_t j = 0; j < count; ++j) {
      const T* mu = g.means + p + (k0 + j) * gm.means_sk;
      A dot = A(0);
      for (int64_t c = 0; c < C; ++c) {
        const A gc = load_acc(prm.grad + (b * C + c) * P + p);
        dot += gc * (load_acc(mu + c * gm.means_sc) - load_acc(prm.mean + (b * C + c) * P + p));
        if (prm.grad_means) store_acc(prm.grad_means + ((b * K + k0 + j) * C + c) * P + p, gc * w[j]);
      }
      if (prm.grad_logweights) store_acc(prm.grad_logweights + (b * K + k0 + j) * P + p, power * w[j] * dot);
    }
  }
}

template <int kC, typename T>
GMFLOW_ALWAYS_INLINE void to_iso_gaussian_packed(const GmToIsoGaussianParams<T>& prm, const BatchGm<T>& g, int64_t b,
                                                 int64_t p) {
  using A = acc_t<T>;
  const GmOperands<T>& gm = prm.gm;
  const int64_t K = gm.K, C = gm.C, P = gm.P;
  A between = A(0), within = A(0);
  if constexpr (kC > 0) {
    if (K <= kBlock && gm.logstds_k == 1) {  // one block: log-depth reductions
      const T* lw = g.logweights + p;
      const T* mu = g.means + p;
      A w[kBlock], m[kC];
      with_unit_stride(gm.logweights_sk, [&](auto sk) {
#pragma omp simd
        for (int64_t j = 0; j < K; ++j) w[j] = fast_exp(load_acc(lw + j * sk));
      });
      sum_parts_channels<kC, A>(K, [&](int64_t j, int c) { return w[j] * load_acc(mu + j * kC + c); }, m);
      between = sum_parts<A>(K, [&](int64_t j) {
        A q = A(0);
        for (int c = 0; c < kC; ++c) {
          const A d = load_acc(mu + j * kC + c) - m[c];
          q += d * d;
        }
        return w[j] * q;
      });
      within = fast_exp(A(2) * load_acc(g.logstds + p * gm.logstds_sp));
      for (int64_t c = 0; c < kC; ++c) store_acc(prm.mean + (b * C + c) * P + p, m[c]);
      store_acc(prm.var + b * P + p, between / A(kC) + within);
      return;
    }
  }
  const PackedWeights<T> weights(gm, g, p, A(1), false);
  A scratch[kBlock];
  if constexpr (kC > 0) {
    // Packed (k, c) means: both passes vectorise over the components.
    A m[kC] = {};
    for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
      const int64_t count = std::min(kBlock, K - k0);
      const A* w = weights.block(k0, count, scratch);
      const T* mu = g.means + p + k0 * kC;
#pragma omp simd reduction(+ : m[:kC])
      for (int64_t j = 0; j < count; ++j)
        for (int64_t c = 0; c < kC; ++c) m[c] += w[j] * load_acc(mu + j * kC + c);
    }
    for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
      const int64_t count = std::min(kBlock, K - k0);
      const A* w = weights.block(k0, count, scratch);
      const T* mu = g.means + p + k0 * kC;
#pragma omp simd reduction(+ : between)
      for (int64_t j = 0; j < count; ++j) {
        A q = A(0);
        for (int64_t c = 0; c < kC; ++c) {
          const A d = load_acc(mu + j * kC + c) - m[c];
          q += d * d;
        }
        between += w[j] * q;
      }
    }
    for (int64_t c = 0; c < kC; ++c) store_acc(prm.mean + (b * C + c) * P + p, m[c]);
  } else {
    for (int64_t c = 0; c < C; ++c) {
      A m = A(0);
      for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
        const int64_t count = std::min(kBlock, K - k0);
        const A* w = weights.block(k0, count, scratch);
        const T* mu = g.means + p + c * gm.means_sc + k0 * gm.means_sk;
        for (int64_t j = 0; j < count; ++j) m += w[j] * load_acc(mu + j * gm.means_sk);
      }
      for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
        const int64_t count = std::min(kBlock, K - k0);
        const A* w = weights.block(k0, count, scratch);
        const T* mu = g.means + p + c * gm.means_sc + k0 * gm.means_sk;
        for (int64_t j = 0; j < count; ++j) {
          const A d = load_acc(mu + j * gm.means_sk) - m;
          between += w[j] * d * d;
        }
      }
      store_acc(prm.mean + (b * C + c) * P + p, m);
    }
  }
  const T* ls = g.logstds + p * gm.logstds_sp;
  if (gm.logstds_k == 1) {
    within = fast_exp(A(2) * load_acc(ls));
  } else {
    for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
      const int64_t count = std::min(kBlock, K - k0);
      const A* w = weights.block(k0, count, scratch);
      for (int64_t j = 0; j < count; ++j) within += w[j] * fast_exp(A(2) * load_acc(ls + (k0 + j) * gm.logstds_sk));
    }
  }
  store_acc(prm.var + b * P + p, (C > 0 ? between / A(C) : A(0)) + within);
}

// ------------------------------------------------------------------ dispatch

// Runs tile(b, p0, count) or packed(b, p) over the (batch, pixel) range.
template <typename T, class Params, class TileFn, class PackedFn>
GMFLOW_ALWAYS_INLINE void per_pixel_range(const Params& prm, const GmOperands<T>& gm, const BatchLayout<4>& layout,
                                          int64_t begin, int64_t end, const TileFn& tile, const PackedFn& packed) {
  for_each_pixel_run(layout, 1, gm.P, begin, end,
                     [&](int64_t b, int64_t, int64_t p_begin, int64_t p_end, const int64_t(&off)[4]) {
                       const BatchGm<T> g = BatchGm<T>::at(gm, off);
                       if (gm.P >= kMinTilePixels) {
                         for_each_tile(p_begin, p_end, [&]<int kWidth>(int64_t p0, int64_t count) {
                           tile.template operator()<kWidth>(prm, g, b, p0, count);
                         });
                       } else {
                         for (int64_t p = p_begin; p < p_end; ++p) packed(prm, g, b, p);
                       }
                     });
}

template <typename T>
GMFLOW_FLATTEN void dispatch_range(const GmToMeanParams<T>& prm, int64_t b, int64_t e) {
  per_pixel_range<T>(
      prm, prm.gm, prm.layout, b, e,
      []<int kW>(const auto& q, const auto& g, int64_t bi, int64_t p0, int64_t n) { to_mean_tile<kW>(q, g, bi, p0, n); },
      [](const auto& q, const auto& g, int64_t bi, int64_t p) {
        dispatch_packed_channels(q.gm.C, packed_means(q.gm), [&]<int kC>() { to_mean_packed<kC>(q, g, bi, p); });
      });
}

template <typename T>
GMFLOW_FLATTEN void dispatch_range(const GmToMeanBackwardParams<T>& prm, int64_t b, int64_t e) {
  per_pixel_range<T>(
      prm, prm.fwd.gm, prm.fwd.layout, b, e,
      []<int kW>(const auto& q, const auto& g, int64_t bi, int64_t p0, int64_t n) {
        to_mean_backward_tile<kW>(q, g, bi, p0, n);
      },
      [](const auto& q, const auto& g, int64_t bi, int64_t p) { to_mean_backward_packed(q, g, bi, p); });
}

template <typename T>
GMFLOW_FLATTEN void dispatch_range(const GmToIsoGaussianParams<T>& prm, int64_t b, int64_t e) {
  per_pixel_range<T>(
      prm, prm.gm, prm.layout, b, e,
      []<int kW>(const auto& q, const auto& g, int64_t bi, int64_t p0, int64_t n) {
        to_iso_gaussian_tile<kW>(q, g, bi, p0, n);
      },
      [](const auto& q, const auto& g, int64_t bi, int64_t p) {
        dispatch_packed_channels(q.gm.C, packed_means(q.gm),
                                 [&]<int kC>() { to_iso_gaussian_packed<kC>(q, g, bi, p); });
      });
}

template <class Params, class Operands>
void run_per_pixel(const Params& prm, const Operands& gm, const ParallelFor& parallel_for) {
  parallel_for(0, gm.batch * gm.P, grain_for(gm.K * (gm.C + 2)),
               [&](int64_t b, int64_t e) { dispatch_range(prm, b, e); });
}

}  // namespace

template <typename T>
void gm_to_mean(const GmToMeanParams<T>& prm, const ParallelFor& parallel_for) {
  run_per_pixel(prm, prm.gm, parallel_for);
}

template <typename T>
void gm_to_mean_backward(const GmToMeanBackwardParams<T>& prm, const ParallelFor& parallel_for) {
  run_per_pixel(prm, prm.fwd.gm, parallel_for);
}

template <typename T>
void gm_to_iso_gaussian(const GmToIsoGaussianParams<T>& prm, const ParallelFor& parallel_for) {
  run_per_pixel(prm, prm.gm, parallel_for);
}

#define GMFLOW_INSTANTIATE_MOMENTS(T)                                                            \
  template void gm_to_mean<T>(const GmToMeanParams<T>&, const ParallelFor&);                    \
  template void gm_to_mean_backward<T>(const GmToMeanBackwardParams<T>&, const ParallelFor&);   \
  template void gm_to_iso_gaussian<T>(const GmToIsoGaussianParams<T>&, const ParallelFor&);

GMFLOW_INSTANTIATE_MOMENTS(float)
GMFLOW_INSTANTIATE_MOMENTS(double)
GMFLOW_INSTANTIATE_MOMENTS(Half)
GMFLOW_INSTANTIATE_MOMENTS(BFloat16)

}  // namespace GMFLOW_CPU_ISA
}  // namespace cpu
}  // namespace gmflow
