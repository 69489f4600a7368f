// CPU building blocks (torch-free): evaluate the Gaussian mixture of many
// pixels at once so the inner loops vectorise with unit-stride loads.
//
// Two evaluation orders, chosen per call by the kernels:
//  * pixel tiles (P >= kMinTilePixels): a tile of up to kTile neighbouring pixels
//    is one SIMD "row"; loops over k and c are outer, loads are contiguous in p.
//  * packed components (tiny images, e.g. the 2-D toy's 1x1 "pixels"): the K
//    components of one pixel are the SIMD row; the channel count is a template
//    constant so the (k, c)-interleaved means load without gathers.
#pragma once

#include <algorithm>
#include <type_traits>

#include "gmflow/cpu_kernels.h"
#include "gmflow/gm_math.h"

namespace gmflow {
namespace cpu {
namespace GMFLOW_CPU_ISA {

constexpr int64_t kTile = 128;         // pixels per tile (long rows keep the prefetchers streaming)
constexpr int64_t kMinTilePixels = 4;  // below this, use the packed-component order
constexpr int64_t kBlock = 64;         // components per block in the packed order

// Operand pointers of one batch index b (element offsets from BatchLayout applied).
template <typename T>
struct BatchGm {
  const T* means;
  const T* logstds;
  const T* logweights;

  static GMFLOW_ALWAYS_INLINE BatchGm at(const GmOperands<T>& gm, const int64_t (&off)[4]) {
    return BatchGm{gm.means + off[kMeans], gm.logstds + off[kLogstds], gm.logweights + off[kLogweights]};
  }
};

// ---------------------------------------------------------------------------------------------
// Pixel tiles

// For component k and pixels p0 .. p0+count: a[v] = log w_k - C log s_k - C/2 log 2pi.
// inv_std[v] = 1/s_k and norm[v] = C log s_k + C/2 log 2pi are (re)computed only when
// the std changes with k (the shared-std case computes them once per tile, at k == 0).
template <int kWidth, typename T, typename A = acc_t<T>>
GMFLOW_ALWAYS_INLINE void tile_component_prior(const GmOperands<T>& gm, const BatchGm<T>& g, int64_t p0,
                                               int64_t count, int64_t k, A* GMFLOW_RESTRICT inv_std,
                                               A* GMFLOW_RESTRICT norm, A* GMFLOW_RESTRICT a) {
  const int64_t n = kWidth > 0 ? kWidth : count;
  if (k == 0 || gm.logstds_k != 1) {
    const A half_c_log2pi = A(0.5 * kLog2Pi) * A(gm.C);
    const T* ls = g.logstds + (gm.logstds_k == 1 ? 0 : k * gm.logstds_sk);
    if (gm.logstds_sp == 1) {
      ls += p0;
#pragma omp simd
      for (int64_t v = 0; v < n; ++v) {
        const A s = load_acc(ls + v);
        inv_std[v] = fast_exp(-s);
        norm[v] = A(gm.C) * s + half_c_log2pi;
      }
    } else {
      const A s = load_acc(ls);
      const A inv = fast_exp(-s), nrm = A(gm.C) * s + half_c_log2pi;
      for (int64_t v = 0; v < n; ++v) {
        inv_std[v] = inv;
        norm[v] = nrm;
      }
    }
  }
  const T* lw = g.logweights + k * gm.logweights_sk + p0;
#pragma omp simd
  for (int64_t v = 0; v < n; ++v) a[v] = load_acc(lw + v) - norm[v];
}

// a[v] -= |x - mu_k|^2 / (2 s_k^2) for the tile; x points at channel 0 of pixel p0.
template <int kWidth, typename T, typename A = acc_t<T>>
GMFLOW_ALWAYS_INLINE void tile_subtract_quadratic(const GmOperands<T>& gm, const BatchGm<T>& g, int64_t p0,
                                                  int64_t count, int64_t k, const T* x, int64_t x_sc,
                                                  const A* GMFLOW_RESTRICT inv_std, A* GMFLOW_RESTRICT a) {
  const int64_t n = kWidth > 0 ? kWidth : count;
  for (int64_t c = 0; c < gm.C; ++c) {
    const T* mu = g.means + k * gm.means_sk + c * gm.means_sc + p0;
    const T* xc = x + c * x_sc;
#pragma omp simd
    for (int64_t v = 0; v < n; ++v) {
      const A z = (load_acc(xc + v) - load_acc(mu + v)) * inv_std[v];
      a[v] -= A(0.5) * z * z;
    }
  }
}

// Online logsumexp over k, one lane per pixel, one exp per update (branch-free).
template <int kWidth, typename A>
GMFLOW_ALWAYS_INLINE void tile_lse_push(int64_t count, const A* GMFLOW_RESTRICT a, A* GMFLOW_RESTRICT max_value,
                                        A* GMFLOW_RESTRICT sum) {
  const int64_t n = kWidth > 0 ? kWidth : count;
#pragma omp simd
  for (int64_t v = 0; v < n; ++v) {
    const A d = a[v] - max_value[v];
    A e = fast_exp(-(d < A(0) ? -d : d));
    e = a[v] == neg_infinity<A>() ? A(0) : e;  // zero-weight component (also avoids -inf - -inf)
    const bool grow = !(d <= A(0)) && a[v] != neg_infinity<A>();  // NaN grows: it must propagate
    sum[v] = grow ? sum[v] * e + A(1) : sum[v] + e;
    max_value[v] = grow ? a[v] : max_value[v];
  }
}

// Runs f.template operator()<kWidth>(p0, count) over the pixels [p_begin, p_end)
// in tiles, with a compile-time width for full tiles.
template <class F>
GMFLOW_ALWAYS_INLINE void for_each_tile(int64_t p_begin, int64_t p_end, const F& f) {
  int64_t p0 = p_begin;
  for (; p0 + kTile <= p_end; p0 += kTile) f.template operator()<int(kTile)>(p0, kTile);
  if (p0 < p_end) f.template operator()<0>(p0, p_end - p0);
}

// ---------------------------------------------------------------------------------------------
// Packed components (small P)

// For components k0 .. k0+count of pixel p: log_std[j], inv_std[j] and the full
// component log density a[j] at x. kC > 0: C == kC and the pixel's means are a
// packed (k, c) block (means_sc == 1, means_sk == C); kC == 0: any strides.
template <int kC, typename T, typename A = acc_t<T>>
GMFLOW_ALWAYS_INLINE void packed_component_log_densities(const GmOperands<T>& gm, const BatchGm<T>& g, int64_t p,
                                                         const T* x, int64_t x_sc, int64_t k0, int64_t count,
                                                         A* GMFLOW_RESTRICT log_std, A* GMFLOW_RESTRICT inv_std,
                                                         A* GMFLOW_RESTRICT a) {
  const int64_t C = kC > 0 ? kC : gm.C;
  const A half_c_log2pi = A(0.5 * kLog2Pi) * A(C);
  const T* ls = g.logstds + p * gm.logstds_sp;
  if (gm.logstds_k == 1) {
    const A s = load_acc(ls);
    const A inv = fast_exp(-s);
    for (int64_t j = 0; j < count; ++j) {
      log_std[j] = s;
      inv_std[j] = inv;
    }
  } else {
    with_unit_stride(gm.logstds_sk, [&](auto sk) {
#pragma omp simd
      for (int64_t j = 0; j < count; ++j) {
        log_std[j] = load_acc(ls + (k0 + j) * sk);
        inv_std[j] = fast_exp(-log_std[j]);
      }
    });
  }
  const T* lw = g.logweights + p + k0 * gm.logweights_sk;
  with_unit_stride(gm.logweights_sk, [&](auto sk) {
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) a[j] = load_acc(lw + j * sk) - A(C) * log_std[j] - half_c_log2pi;
  });
  if constexpr (kC > 0) {
    A xs[kC];
    for (int64_t c = 0; c < kC; ++c) xs[c] = load_acc(x + c * x_sc);
    const T* mu = g.means + p + k0 * kC;
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) {
      A q = A(0);
      for (int64_t c = 0; c < kC; ++c) {
        const A z = (xs[c] - load_acc(mu + j * kC + c)) * inv_std[j];
        q += z * z;
      }
      a[j] -= A(0.5) * q;
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const A xc = load_acc(x + c * x_sc);
      const T* mu = g.means + p + c * gm.means_sc + k0 * gm.means_sk;
      for (int64_t j = 0; j < count; ++j) {
        const A z = (xc - load_acc(mu + j * gm.means_sk)) * inv_std[j];
        a[j] -= A(0.5) * z * z;
      }
    }
  }
}

// Reductions over a short run of components (a pixel's K in the packed order). GCC lowers
// `omp simd reduction` to a lane array in memory summed one lane at a time after the loop,
// which for K = 64 costs as much as the loop itself; these keep kParts partial results and
// combine them in log2(kParts) vector steps.
constexpr int kParts = 16;

// op-fold of f(j) for j < count, starting from init (op associative and commutative).
template <typename A, class Op, class F>
GMFLOW_ALWAYS_INLINE A reduce_parts(int64_t count, A init, const Op& op, const F& f) {
  A part[kParts];
  for (int v = 0; v < kParts; ++v) part[v] = init;
  int64_t j0 = 0;
  for (; j0 + kParts <= count; j0 += kParts) {
#pragma omp simd
    for (int v = 0; v < kParts; ++v) part[v] = op(part[v], f(j0 + v));
  }
  // The tail has its own accumulator: indexing part by a run-time j - j0 kept the partials in
  // memory, so every step of the loop above went through a store and a reload.
  A tail = init;
  for (int64_t j = j0; j < count; ++j) tail = op(tail, f(j));
  for (int w = kParts / 2; w >= 1; w /= 2) {
#pragma omp simd
    for (int v = 0; v < w; ++v) part[v] = op(part[v], part[v + w]);
  }
  return op(part[0], tail);
}

template <typename A, class F>
GMFLOW_ALWAYS_INLINE A sum_parts(int64_t count, const F& f) {
  return reduce_parts(count, A(0), [](A x, A y) { return x + y; }, f);
}

// The maximum of f(j); NaN terms are skipped (a sum over the same terms carries them).
template <typename A, class F>
GMFLOW_ALWAYS_INLINE A max_parts(int64_t count, const F& f) {
  return reduce_parts(count, neg_infinity<A>(), [](A x, A y) { return y > x ? y : x; }, f);
}

// out[c] = sum over j < count of f(j, c), for kC channels at once: kParts partial sums per channel,
// so a loop over interleaved (k, c) data vectorises over j with grouped loads.
template <int kC, typename A, class F>
GMFLOW_ALWAYS_INLINE void sum_parts_channels(int64_t count, const F& f, A (&out)[kC]) {
  A part[kC][kParts];
  for (int c = 0; c < kC; ++c)
    for (int v = 0; v < kParts; ++v) part[c][v] = A(0);
  int64_t j0 = 0;
  for (; j0 + kParts <= count; j0 += kParts) {
#pragma omp simd
    for (int v = 0; v < kParts; ++v)
      for (int c = 0; c < kC; ++c) part[c][v] += f(j0 + v, c);
  }
  for (int64_t j = j0; j < count; ++j)
    for (int c = 0; c < kC; ++c) part[c][j - j0] += f(j, c);
  for (int c = 0; c < kC; ++c) {
    for (int w = kParts / 2; w >= 1; w /= 2) {
#pragma omp simd
      for (int v = 0; v < w; ++v) part[c][v] += part[c][v + w];
    }
    out[c] = part[c][0];
  }
}

// Unnormalised softmax weights of a block: e[j] = exp(a[j] - max a) (0 for a[j] = -inf); returns
// their sum.
template <typename A>
GMFLOW_ALWAYS_INLINE A block_softmax_weights(const A* GMFLOW_RESTRICT a, int64_t count, A* GMFLOW_RESTRICT e) {
  const A m = max_parts<A>(count, [&](int64_t j) { return a[j]; });
  return sum_parts<A>(count, [&](int64_t j) {
    const A w = a[j] == neg_infinity<A>() ? A(0) : fast_exp(a[j] - m);
    e[j] = w;
    return w;
  });
}

// Maximum and sum of exp(a - max) of a block.
template <typename A>
GMFLOW_ALWAYS_INLINE void block_logsumexp(const A* GMFLOW_RESTRICT a, int64_t count, A& block_max, A& block_sum) {
  const A m = max_parts<A>(count, [&](int64_t j) { return a[j]; });
  block_max = m;
  block_sum = sum_parts<A>(count, [&](int64_t j) { return a[j] == neg_infinity<A>() ? A(0) : fast_exp(a[j] - m); });
}

// Returns f(stride), called with a compile-time 1 when stride == 1, so loops over it vectorise.
template <class F>
GMFLOW_ALWAYS_INLINE auto with_unit_stride(int64_t stride, const F& f) {
  if (stride == 1) return f(std::integral_constant<int64_t, 1>{});
  return f(stride);
}

// Calls f(kC) with the compile-time channel count of the packed order (0 = generic).
template <class F>
GMFLOW_ALWAYS_INLINE void dispatch_packed_channels(int64_t C, bool packed, const F& f) {
  if (packed && C == 1) return f.template operator()<1>();
  if (packed && C == 2) return f.template operator()<2>();
  if (packed && C == 3) return f.template operator()<3>();
  if (packed && C == 4) return f.template operator()<4>();
  f.template operator()<0>();
}

// Single-pixel images whose means are a packed (k, c) block per batch element?
template <typename T>
GMFLOW_ALWAYS_INLINE bool packed_means(const GmOperands<T>& gm) {
  return gm.P == 1 && gm.means_sc == 1 && gm.means_sk == gm.C;
}

// Single-pixel images (the toy) with one std per item and K <= kBlock: a pixel's components
// fill the vector lanes, and the per-item scalar work (1/s, divisions, the final log) runs
// vectorised over a chunk of kItems items; done one item at a time, its serial exp/log/division
// chains cost more than the item's 64 components.
constexpr int64_t kItems = 16;

template <typename T>
GMFLOW_ALWAYS_INLINE bool single_pixel_items(const GmOperands<T>& gm) {
  return packed_means(gm) && gm.logstds_k == 1 && gm.K <= kBlock && gm.C >= 1 && gm.C <= 4;
}

// ---------------------------------------------------------------------------------------------

// Calls f(b, i, p_begin, p_end, offsets) for each run of one (b, i) row inside the
// flattened (batch, inner, P) index range [begin, end).
template <int kOperands, class F>
GMFLOW_ALWAYS_INLINE void for_each_pixel_run(const BatchLayout<kOperands>& layout, int64_t inner, int64_t P,
                                             int64_t begin, int64_t end, const F& f) {
  int64_t item = begin;
  while (item < end) {
    const int64_t row = item / P;
    const int64_t p0 = item - row * P;
    const int64_t run_end = std::min(end, (row + 1) * P);
    const int64_t b = row / inner;
    const int64_t i = row - b * inner;
    int64_t off[kOperands];
    layout.offsets(b, off);
    f(b, i, p0, p0 + (run_end - item), off);
    item = run_end;
  }
}

}  // namespace GMFLOW_CPU_ISA
}  // namespace cpu
}  // namespace gmflow
