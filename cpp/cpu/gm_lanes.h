// CPU building block of the sampling-path kernels (torch-free): lane tiles.
//
// A lane tile holds up to kLanes items of an op's flattened (batch, inner, pixel) index
// space, e.g. (b, n, p) for one sample of one pixel. The kernels gather every operand
// into structure-of-arrays rows of kLanes values (one per lane), compute with simd loops
// over the lanes, and scatter the results. The same code thus vectorises for 32x32
// latents (a tile is 64 neighbouring pixels: contiguous loads) and for the 2-D toy's
// 1x1 images (a tile is 64 batch elements: gathered loads), whatever the strides.
// A tile that is not full is padded with copies of its last lane, so the simd loops
// always run over all kLanes lanes; only the stores look at `count`.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "gm_pixel.h"
#include "gmflow/gm_special.h"

namespace gmflow {
namespace cpu {
namespace GMFLOW_CPU_ISA {

constexpr int64_t kLanes = 64;
// Tiles of contiguous pixels read each operand row in runs of kWideLanes values: longer runs than
// kLanes' 4 cache lines keep the hardware prefetcher ahead of the row passes. Gathered lanes (the
// toy's batch elements) stay at kLanes: their row copies would outgrow L1.
constexpr int64_t kWideLanes = 256;

template <int kOps, int64_t kWidth = kLanes>
struct LaneTile {
  static constexpr int64_t kLanes = kWidth;
  int64_t count = 0;
  bool contiguous = false;  // full tile of one (b, i) row with consecutive pixels
  int64_t row[kLanes];      // b * inner + i: the row of the op's contiguous outputs
  int64_t b[kLanes], p[kLanes];
  int64_t off[kOps][kLanes];  // element offset of the lane in each operand (k = c = 0)
};

// Where an operand's lane offset comes from: batch offset (BatchLayout) + i * inner + p * pixel.
template <int kOps>
struct LaneStrides {
  int64_t inner[kOps] = {};
  int64_t pixel[kOps] = {};  // 0 (broadcast over pixels), 1, or any stride
};

// Calls f(tile) for consecutive tiles covering the items [begin, end) of the flattened
// (batch, inner, P) index space.
template <int kOps, int64_t kLanes, class F>
GMFLOW_ALWAYS_INLINE void for_each_lane_tile(const BatchLayout<kOps>& layout, const LaneStrides<kOps>& strides,
                                             int64_t inner, int64_t P, int64_t begin, int64_t end,
                                             LaneTile<kOps, kLanes>& tile, const F& f) {
  tile.count = 0;
  int64_t runs = 0;
  int64_t item = begin;
  const auto flush = [&]() {
    const int64_t n = tile.count;
    tile.contiguous = n == kLanes && runs == 1;
    for (int64_t v = n; v < kLanes; ++v) {
      tile.row[v] = tile.row[n - 1];
      tile.b[v] = tile.b[n - 1];
      tile.p[v] = tile.p[n - 1];
      for (int t = 0; t < kOps; ++t) tile.off[t][v] = tile.off[t][n - 1];
    }
    f(tile);
    tile.count = 0;
    runs = 0;
  };
  while (item < end) {
    const int64_t row = item / P;
    const int64_t p_begin = item - row * P;
    const int64_t b = row / inner, i = row - b * inner;
    int64_t base[kOps];
    layout.offsets(b, base);
    for (int t = 0; t < kOps; ++t) base[t] += i * strides.inner[t];
    const int64_t p_end = std::min(P, p_begin + (end - item));
    int64_t p = p_begin;
    while (p < p_end) {
      const int64_t take = std::min(p_end - p, kLanes - tile.count);
      ++runs;
      // Local pointers: stores through tile.* could alias tile.count, which blocks vectorisation.
      const int64_t at = tile.count;
      int64_t* GMFLOW_RESTRICT rows = tile.row + at;
      int64_t* GMFLOW_RESTRICT bs = tile.b + at;
      int64_t* GMFLOW_RESTRICT ps = tile.p + at;
#pragma omp simd
      for (int64_t j = 0; j < take; ++j) {
        rows[j] = row;
        bs[j] = b;
        ps[j] = p + j;
      }
      for (int t = 0; t < kOps; ++t) {
        const int64_t s = strides.pixel[t], first = base[t] + p * s;
        int64_t* GMFLOW_RESTRICT off = tile.off[t] + at;
#pragma omp simd
        for (int64_t j = 0; j < take; ++j) off[j] = first + j * s;
      }
      tile.count += take;
      p += take;
      if (tile.count == kLanes) flush();
    }
    item += p_end - p_begin;
  }
  if (tile.count > 0) flush();
}

// out[v] = value of operand t of lane v at element `extra` (k * sk + c * sc ...), for all lanes.
template <typename T, typename A, int kOps, int64_t kLanes>
GMFLOW_ALWAYS_INLINE void gather(const T* base, const LaneTile<kOps, kLanes>& tile, int t, int64_t pixel_stride,
                                 int64_t extra, A* GMFLOW_RESTRICT out) {
  if (tile.contiguous && pixel_stride == 1) {
    const T* src = base + tile.off[t][0] + extra;
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) out[v] = A(load_acc(src + v));
    return;
  }
  if (tile.contiguous && pixel_stride == 0) {
    const A value = A(load_acc(base + tile.off[t][0] + extra));
    for (int64_t v = 0; v < kLanes; ++v) out[v] = value;
    return;
  }
  for (int64_t v = 0; v < kLanes; ++v) out[v] = A(load_acc(base + tile.off[t][v] + extra));
}

// Stores vals[v] of the first `count` lanes into a contiguous output of rows of `row_size`
// elements (the op's batch-major layout), at element row * row_size + extra + p.
template <typename T, typename A, int kOps, int64_t kLanes>
GMFLOW_ALWAYS_INLINE void scatter(T* base, const LaneTile<kOps, kLanes>& tile, int64_t row_size, int64_t extra,
                                  const A* GMFLOW_RESTRICT vals) {
  if (tile.contiguous) {
    T* dst = base + tile.row[0] * row_size + extra + tile.p[0];
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) store_acc(dst + v, vals[v]);
    return;
  }
  for (int64_t v = 0; v < tile.count; ++v) store_acc(base + tile.row[v] * row_size + extra + tile.p[v], vals[v]);
}

// The kLanes values gather() would copy: the operand itself when the tile is contiguous and
// the values need no conversion, else `scratch`, filled by gather().
template <typename T, typename A, int kOps, int64_t kLanes>
GMFLOW_ALWAYS_INLINE const A* gather_view(const T* base, const LaneTile<kOps, kLanes>& tile, int t,
                                          int64_t pixel_stride, int64_t extra, A* scratch) {
  if constexpr (std::is_same_v<T, A>) {
    if (tile.contiguous && pixel_stride == 1) return base + tile.off[t][0] + extra;
  }
  gather(base, tile, t, pixel_stride, extra, scratch);
  return scratch;
}

// Where to compute the kLanes values scatter() would store: the output itself when the tile
// is contiguous and the values need no conversion, else `scratch`; scatter_done() then stores
// `scratch` (and does nothing for the output itself).
template <typename T, typename A, int kOps, int64_t kLanes>
GMFLOW_ALWAYS_INLINE A* scatter_slot(T* base, const LaneTile<kOps, kLanes>& tile, int64_t row_size, int64_t extra,
                                     A* scratch) {
  if constexpr (std::is_same_v<T, A>) {
    if (tile.contiguous) return base + tile.row[0] * row_size + extra + tile.p[0];
  }
  return scratch;
}

template <typename T, typename A, int kOps, int64_t kLanes>
GMFLOW_ALWAYS_INLINE void scatter_done(T* base, const LaneTile<kOps, kLanes>& tile, int64_t row_size, int64_t extra,
                                       const A* vals) {
  if constexpr (std::is_same_v<T, A>) {
    if (tile.contiguous) return;
  }
  scatter(base, tile, row_size, extra, vals);
}

// Loads row * row_size + extra + p of a contiguous (op-layout) tensor for every lane.
template <typename T, typename A, int kOps, int64_t kLanes>
GMFLOW_ALWAYS_INLINE void gather_rows(const T* base, const LaneTile<kOps, kLanes>& tile, int64_t row_size,
                                      int64_t extra, A* GMFLOW_RESTRICT out) {
  if (tile.contiguous) {
    const T* src = base + tile.row[0] * row_size + extra + tile.p[0];
#pragma omp simd
    for (int64_t v = 0; v < kLanes; ++v) out[v] = load_acc(src + v);
    return;
  }
  for (int64_t v = 0; v < kLanes; ++v) out[v] = load_acc(base + tile.row[v] * row_size + extra + tile.p[v]);
}

// Per-range scratch of `n` values, reused across the tiles of the range.
template <typename A>
struct Scratch {
  std::vector<A> data;
  explicit Scratch(int64_t n) : data(size_t(std::max<int64_t>(n, 1))) {}
  A* get() { return data.data(); }
};

// Wide tiles for images whose rows of P pixels split into whole tiles of kWideLanes.
GMFLOW_ALWAYS_INLINE bool wide_tiles(int64_t P) { return P % kWideLanes == 0; }
GMFLOW_ALWAYS_INLINE int64_t tile_items(int64_t P) { return wide_tiles(P) ? kWideLanes : kLanes; }

// Runs range(prm, begin, end) over [0, items) on the thread pool, in chunks of whole tiles of
// `tile` items: a chunk boundary never splits a tile of contiguous pixels.
template <class Params, class Range>
void run_items(const Params& prm, int64_t items, int64_t work_per_item, const ParallelFor& parallel_for,
               const Range& range, int64_t tile = kLanes) {
  const int64_t tiles = (items + tile - 1) / tile;
  parallel_for(0, tiles, grain_for(work_per_item * tile),
               [&](int64_t b, int64_t e) { range(prm, b * tile, std::min(e * tile, items)); });
}

}  // namespace GMFLOW_CPU_ISA
}  // namespace cpu
}  // namespace gmflow
