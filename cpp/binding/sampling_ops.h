// Op bodies of the sampling-path ops, shared by the CPU and CUDA registrations:
// gm_mul_iso_gaussian, gm_posterior_mean (+ backward), gm_ode_euler_substeps (+ backward),
// gm1d_inverse_cdf (+ backward), gm_kr_inverse, gm_kr_forward, gm_sample. Same pattern as gm_ops.h: validate (messages
// mirrored by gmflow/_validation.py), lay out the broadcast operands, allocate contiguous
// outputs, launch through Backend, reduce broadcast gradients.
//
// Backend additionally provides  static constexpr bool kKrWorkspace  (whether the KR kernels
// need a per-item scratch buffer, allocated here with torch's allocator).
#pragma once

#include <optional>

#include "gm_ops.h"

namespace gmflow {
namespace binding {

inline ScalarType acc_scalar_type(ScalarType t) { return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

// `t` must be in the accumulation dtype of `ref` (float64 for float64, else float32).
inline void check_acc_like(const char* op, const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) {
  check_defined(op, name, t);
  const ScalarType want = acc_scalar_type(ref.scalar_type());
  if (t.scalar_type() != want)
    fail(op, "'", name, "' must have dtype ", dtype_str(want), " (the accumulation dtype of '", ref_name, "' ",
         dtype_str(ref.scalar_type()), "); got ", dtype_str(t.scalar_type()));
  check_device(op, name, t, ref_name, ref);
}

// `t` ends with the dims `want` (layout `layout`; `dims` says which sizes come from 'means').
inline void check_tail(const char* op, const char* name, const Tensor& t, const Tensor& means, const char* layout,
                       const Shape& want, const std::string& dims) {
  check_min_dim(op, name, t, int64_t(want.size()), layout);
  const Shape s = shape_of(t);
  if (Shape(s.end() - int64_t(want.size()), s.end()) != want)
    fail(op, "'", name, "' must have layout ", layout, " with ", dims, " taken from 'means' ", shape_str(shape_of(means)),
         "; got ", shape_str(s));
}

inline std::string chw(const GmDims& d) {
  return "C=" + std::to_string(d.C) + ", H=" + std::to_string(d.H) + ", W=" + std::to_string(d.W);
}
inline std::string hw(int64_t H, int64_t W) { return "H=" + std::to_string(H) + ", W=" + std::to_string(W); }

// The scalars of the Newton solvers (gm1d_inverse_cdf, gm_kr_inverse).
inline void check_newton_scalars(const char* op, int64_t n_steps, double eps, double max_step_size) {
  check_steps(op, n_steps);
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  check_scalar(op, "max_step_size", max_step_size, ScalarKind::kPositive);
}

inline void check_mask(const char* op, const std::vector<bool>& mask, size_t n) {
  if (mask.size() != n) fail(op, "'output_mask' must have ", n, " entries; got ", mask.size());
}

inline void check_grad_pair(const char* op, const char* a_name, const Tensor& a, const char* b_name, const Tensor& b,
                            const Tensor& means, const Shape& shape) {
  check_like(op, a_name, a, "means", means);
  check_like(op, b_name, b, "means", means);
  if (shape_of(a) != shape || shape_of(b) != shape)
    fail(op, "'", a_name, "' and '", b_name, "' must have the output shape ", shape_str(shape), "; got ",
         shape_str(shape_of(a)), " and ", shape_str(shape_of(b)));
}

// Pixel stride of a tensor whose pixels are the dims (h_dim, w_dim), or -1 if they do not
// flatten to p = h * W + w with one stride.
inline int64_t flat_pixel_stride(const Tensor& t, int64_t h_dim, int64_t w_dim) {
  const int64_t H = t.size(h_dim), W = t.size(w_dim);
  if (H * W <= 1) return 0;
  if (W == 1) return t.stride(h_dim);
  if (H == 1 || t.stride(h_dim) == W * t.stride(w_dim)) return t.stride(w_dim);
  return -1;
}

// Kernel element type T and its accumulation type (the dtype of rotations and random numbers).
template <typename T>
inline const acc_t<T>* acc_ptr(const Tensor& t) {
  return static_cast<const acc_t<T>*>(t.data_ptr());
}

// ---------------------------------------------------------------------------------------------
// gm_mul_iso_gaussian

template <class Backend>
std::tuple<Tensor, Tensor, Tensor> gm_mul_iso_gaussian(Tensor means, Tensor logstds, Tensor logweights,
                                                       Tensor gaussian_mean, Tensor gaussian_var, double gm_power,
                                                       double gaussian_power, double eps) {
  constexpr const char* op = "gm_mul_iso_gaussian";
  const GmDims d = check_gm(op, means, &logstds, logweights);
  check_like(op, "gaussian_mean", gaussian_mean, "means", means);
  check_tail(op, "gaussian_mean", gaussian_mean, means, "(..., C, H, W)", {d.C, d.H, d.W}, chw(d));
  check_like(op, "gaussian_var", gaussian_var, "means", means);
  check_min_dim(op, "gaussian_var", gaussian_var, 3, "(..., 1, H, W) or (..., 1, 1, 1)");
  const bool var_pixels = gaussian_var.size(-2) != 1 || gaussian_var.size(-1) != 1;
  if (gaussian_var.size(-3) != 1 || (var_pixels && (gaussian_var.size(-2) != d.H || gaussian_var.size(-1) != d.W)))
    fail(op, "'gaussian_var' must have layout (..., 1, H, W) or (..., 1, 1, 1) with ", hw(d.H, d.W),
         " taken from 'means' ", shape_str(shape_of(means)), "; got ", shape_str(shape_of(gaussian_var)));
  const GmTensors gm(means, &logstds, logweights);
  const Tensor g_mean = with_unit_pixel_stride(gaussian_mean);
  const Tensor g_var = var_pixels ? with_unit_pixel_stride(gaussian_var) : gaussian_var;
  const std::vector<Operand> operands{{"means", gm.means, 4},        {"logstds", gm.logstds, 4},
                                      {"logweights", gm.logweights, 4}, {"gaussian_mean", g_mean, 3},
                                      {"gaussian_var", g_var, 3}};
  const Shape batch = broadcast_batch(op, operands);
  check_scalar(op, "gm_power", gm_power, ScalarKind::kFiniteNonZero);
  check_scalar(op, "gaussian_power", gaussian_power, ScalarKind::kFinite);
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  const int64_t Kl = logstds.size(-4);
  const bool per_pixel = logstds.size(-2) != 1 || logstds.size(-1) != 1 || var_pixels;
  Tensor out_means = new_empty(means, concat(batch, {d.K, d.C, d.H, d.W}));
  Tensor out_logstds = new_empty(means, concat(batch, {Kl, 1, per_pixel ? d.H : 1, per_pixel ? d.W : 1}));
  Tensor out_logweights = new_empty(means, concat(batch, {d.K, 1, d.H, d.W}));
  if (product(batch) * d.H * d.W == 0) {
    // The kernel writes every output from its pixel loop, and an empty grid has no pixel; but a
    // pixel-free logstds output is not empty. It depends on no pixel input: compute it on one
    // placeholder pixel.
    if (out_logstds.numel() > 0) {
      auto one_pixel = [](const Tensor& t) { return new_zeros(t, concat(leading(shape_of(t), 2), {1, 1})); };
      out_logstds = std::get<1>(gm_mul_iso_gaussian<Backend>(one_pixel(means), logstds, one_pixel(logweights),
                                                             one_pixel(gaussian_mean), gaussian_var, gm_power,
                                                             gaussian_power, eps));
    }
    return {out_means, out_logstds, out_logweights};
  }
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmMulIsoGaussianParams<T> p;
    p.gm = gm_operands<T>(d, product(batch), gm.means, gm.logstds_ptr(), gm.logweights);
    make_batch_layout(op, batch, operands.data(), p.layout);
    p.gaussian_mean = cptr<T>(g_mean);
    p.gaussian_mean_sc = g_mean.stride(-3);
    p.gaussian_var = cptr<T>(g_var);
    p.gaussian_var_sp = var_pixels && d.H * d.W > 1 ? 1 : 0;
    p.ratio = gaussian_power / gm_power;
    p.eps = eps;
    p.out_means = mptr<T>(out_means);
    p.out_logstds = mptr<T>(out_logstds);
    p.out_logstds_p = per_pixel ? d.H * d.W : 1;
    p.out_logweights = mptr<T>(out_logweights);
    Backend::launch(p, scope);
  });
  return {out_means, out_logstds, out_logweights};
}

// ---------------------------------------------------------------------------------------------
// gm_posterior_mean

// A sigma is batch-only (...), or (..., 1, 1, 1) broadcasting against x (..., C, H, W) as upstream
// GMFlow passes it: the trailing (1, 1, 1) then are not batch dims.
inline int64_t sigma_inner(const Tensor& sigma) {
  const int64_t n = sigma.dim();
  return n >= 3 && sigma.size(n - 1) == 1 && sigma.size(n - 2) == 1 && sigma.size(n - 3) == 1 ? 3 : 0;
}

struct PosteriorPlan {
  GmDims d;
  GmTensors gm;
  Tensor x_src, x_tgt, sigma_src, sigma_tgt;
  Shape batch;

  PosteriorPlan(const char* op, const Tensor& means, const Tensor& logstds, const Tensor& logweights,
                const Tensor& xs, const Tensor& xt, const Tensor& ss, const Tensor& st)
      : d(check_gm(op, means, &logstds, logweights)), gm(means, &logstds, logweights), sigma_src(ss), sigma_tgt(st) {
    check_like(op, "x_src", xs, "means", means);
    check_tail(op, "x_src", xs, means, "(..., C, H, W)", {d.C, d.H, d.W}, chw(d));
    check_like(op, "x_tgt", xt, "means", means);
    check_tail(op, "x_tgt", xt, means, "(..., C, H, W)", {d.C, d.H, d.W}, chw(d));
    check_acc_like(op, "sigma_src", ss, "means", means);
    check_acc_like(op, "sigma_tgt", st, "means", means);
    x_src = with_unit_pixel_stride(xs);
    x_tgt = with_unit_pixel_stride(xt);
    batch = broadcast_batch(op, operands());
  }

  std::vector<Operand> operands() const {
    return {{"means", gm.means, 4},  {"logstds", gm.logstds, 4}, {"logweights", gm.logweights, 4},
            {"x_src", x_src, 3},     {"x_tgt", x_tgt, 3},        {"sigma_src", sigma_src, sigma_inner(sigma_src)},
            {"sigma_tgt", sigma_tgt, sigma_inner(sigma_tgt)}};
  }

  template <typename T>
  GmPosteriorMeanParams<T> params(const char* op, double eps) const {
    GmPosteriorMeanParams<T> p;
    p.gm = gm_operands<T>(d, product(batch), gm.means, gm.logstds_ptr(), gm.logweights);
    const std::vector<Operand> ops = operands();
    make_batch_layout(op, batch, ops.data(), p.layout);
    p.x_src = cptr<T>(x_src);
    p.x_src_sc = x_src.stride(-3);
    p.x_tgt = cptr<T>(x_tgt);
    p.x_tgt_sc = x_tgt.stride(-3);
    p.sigma_src = acc_ptr<T>(sigma_src);
    p.sigma_tgt = acc_ptr<T>(sigma_tgt);
    p.eps = eps;
    return p;
  }

  Shape out_shape() const { return concat(batch, {d.C, d.H, d.W}); }
  bool empty() const { return product(batch) * d.H * d.W == 0; }
};

template <class Backend>
Tensor gm_posterior_mean(Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, Tensor x_tgt,
                         Tensor sigma_src, Tensor sigma_tgt, double eps) {
  constexpr const char* op = "gm_posterior_mean";
  const PosteriorPlan plan(op, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt);
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  Tensor out = new_empty(means, plan.out_shape());
  if (out.numel() == 0) return out;
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmPosteriorMeanParams<T> p = plan.template params<T>(op, eps);
    p.mean = mptr<T>(out);
    Backend::launch(p, scope);
  });
  return out;
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor> gm_posterior_mean_backward(Tensor grad, Tensor means, Tensor logstds,
                                                              Tensor logweights, Tensor x_src, Tensor x_tgt,
                                                              Tensor sigma_src, Tensor sigma_tgt, Tensor mean,
                                                              double eps, std::vector<bool> output_mask) {
  constexpr const char* op = "gm_posterior_mean_backward";
  const PosteriorPlan plan(op, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt);
  check_mask(op, output_mask, 3);
  check_grad_pair(op, "grad", grad, "mean", mean, means, plan.out_shape());
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  const GmDims& d = plan.d;
  const int64_t Kl = logstds.size(-4);
  const std::array<Shape, 3> grad_shapes{concat(plan.batch, {d.K, d.C, d.H, d.W}),
                                         concat(plan.batch, {Kl, 1, d.H, d.W}), concat(plan.batch, {d.K, 1, d.H, d.W})};
  const std::array<Shape, 3> input_shapes{shape_of(means), shape_of(logstds), shape_of(logweights)};
  if (needs_float32_reduction(means, output_mask, grad_shapes, input_shapes))
    return to_dtype(gm_posterior_mean_backward<Backend>(to_float32(grad), to_float32(means), to_float32(logstds),
                                                        to_float32(logweights), to_float32(x_src),
                                                        to_float32(x_tgt), sigma_src, sigma_tgt, to_float32(mean),
                                                        eps, output_mask),
                    means.scalar_type());
  const auto g = run_backward<Backend, 3>(
      means, output_mask, grad_shapes, input_shapes, plan.empty(), grad, mean,
      [&](auto tag, auto grad_p, auto mean_p, const auto& out) {
        using T = typename decltype(tag)::type;
        GmPosteriorMeanBackwardParams<T> p;
        p.fwd = plan.template params<T>(op, eps);
        p.grad = grad_p;
        p.mean = mean_p;
        p.grad_means = out[0];
        p.grad_logstds = out[1];
        p.grad_logweights = out[2];
        return p;
      });
  return {g[0], g[1], g[2]};
}

// ---------------------------------------------------------------------------------------------
// gm_ode_euler_substeps

constexpr const char* kOdeSigmasLayout = "(S+1, ...)";

struct OdePlan {
  GmDims d;
  GmTensors gm;
  Tensor x_src, sigmas, sigmas_batch;  // sigmas_batch = sigmas[0]: the batch dims of the sigmas
  Shape batch;
  int64_t S;

  OdePlan(const char* op, const Tensor& means, const Tensor& logstds, const Tensor& logweights, const Tensor& xs,
          const Tensor& sig)
      : d(check_gm(op, means, &logstds, logweights)), gm(means, &logstds, logweights), sigmas(sig) {
    check_like(op, "x_src", xs, "means", means);
    check_tail(op, "x_src", xs, means, "(..., C, H, W)", {d.C, d.H, d.W}, chw(d));
    check_acc_like(op, "sigmas", sig, "means", means);
    check_min_dim(op, "sigmas", sig, 1, kOdeSigmasLayout);
    if (sig.size(0) < 2)
      fail(op, "'sigmas' must have layout ", kOdeSigmasLayout,
           " with S >= 1 sub-steps (at least 2 sigmas along dim 0); got shape ", shape_str(shape_of(sig)));
    S = sig.size(0) - 1;
    x_src = with_unit_pixel_stride(xs);
    sigmas_batch = torch::stable::select(sig, 0, 0);
    batch = broadcast_batch(op, operands());
  }

  std::vector<Operand> operands() const {
    return {{"means", gm.means, 4},
            {"logstds", gm.logstds, 4},
            {"logweights", gm.logweights, 4},
            {"x_src", x_src, 3},
            {"sigmas", sigmas_batch, 0}};
  }

  template <typename T>
  GmOdeEulerSubstepsParams<T> params(const char* op, double eps) const {
    GmOdeEulerSubstepsParams<T> p;
    p.gm = gm_operands<T>(d, product(batch), gm.means, gm.logstds_ptr(), gm.logweights);
    const std::vector<Operand> ops = operands();
    make_batch_layout(op, batch, ops.data(), p.layout);
    p.x_src = cptr<T>(x_src);
    p.x_src_sc = x_src.stride(-3);
    p.sigmas = acc_ptr<T>(sigmas);
    p.sigmas_sj = sigmas.stride(0);
    p.S = S;
    p.eps = eps;
    return p;
  }

  Shape out_shape() const { return concat(batch, {d.C, d.H, d.W}); }
  bool empty() const { return product(batch) * d.H * d.W == 0; }
};

template <class Backend>
Tensor gm_ode_euler_substeps(Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, Tensor sigmas,
                             double eps) {
  constexpr const char* op = "gm_ode_euler_substeps";
  const OdePlan plan(op, means, logstds, logweights, x_src, sigmas);
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  Tensor out = new_empty(means, plan.out_shape());
  if (out.numel() == 0) return out;
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmOdeEulerSubstepsParams<T> p = plan.template params<T>(op, eps);
    p.out = mptr<T>(out);
    Backend::launch(p, scope);
  });
  return out;
}

// The backward recomputes the forward pass (no saved output).
template <class Backend>
std::tuple<Tensor, Tensor, Tensor> gm_ode_euler_substeps_backward(Tensor grad, Tensor means, Tensor logstds,
                                                                  Tensor logweights, Tensor x_src, Tensor sigmas,
                                                                  double eps, std::vector<bool> output_mask) {
  constexpr const char* op = "gm_ode_euler_substeps_backward";
  const OdePlan plan(op, means, logstds, logweights, x_src, sigmas);
  check_mask(op, output_mask, 3);
  check_like(op, "grad", grad, "means", means);
  if (shape_of(grad) != plan.out_shape())
    fail(op, "'grad' must have the output shape ", shape_str(plan.out_shape()), "; got ", shape_str(shape_of(grad)));
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  const GmDims& d = plan.d;
  const int64_t Kl = logstds.size(-4);
  const std::array<Shape, 3> grad_shapes{concat(plan.batch, {d.K, d.C, d.H, d.W}),
                                         concat(plan.batch, {Kl, 1, d.H, d.W}), concat(plan.batch, {d.K, 1, d.H, d.W})};
  const std::array<Shape, 3> input_shapes{shape_of(means), shape_of(logstds), shape_of(logweights)};
  // 16-bit data: computed in float32 and rounded once (the CUDA kernel sums the S sub-steps' terms in
  // its outputs, which must not be 16-bit).
  const bool half = means.scalar_type() == ScalarType::Half || means.scalar_type() == ScalarType::BFloat16;
  if (half)
    return to_dtype(gm_ode_euler_substeps_backward<Backend>(to_float32(grad), to_float32(means), to_float32(logstds),
                                                      to_float32(logweights), to_float32(x_src), sigmas, eps,
                                                      output_mask),
                    means.scalar_type());
  // run_backward's second tensor is a saved forward output; this op has none, so grad stands in (unused).
  const auto g = run_backward<Backend, 3>(
      means, output_mask, grad_shapes, input_shapes, plan.empty(), grad, grad,
      [&](auto tag, auto grad_p, auto, const auto& out) {
        using T = typename decltype(tag)::type;
        GmOdeEulerSubstepsBackwardParams<T> p;
        p.fwd = plan.template params<T>(op, eps);
        p.grad = grad_p;
        p.grad_means = out[0];
        p.grad_logstds = out[1];
        p.grad_logweights = out[2];
        return p;
      });
  return {g[0], g[1], g[2]};
}

// ---------------------------------------------------------------------------------------------
// gm1d_inverse_cdf

constexpr const char* kGm1dMeansLayout = "(..., K, H, W)";

struct Gm1dDims {
  int64_t K, H, W;
};

inline Gm1dDims check_gm1d(const char* op, const Tensor& means, const Tensor& logstds, const Tensor& logweights) {
  check_min_dim(op, "means", means, 3, kGm1dMeansLayout);
  check_like(op, "means", means, "means", means);
  check_like(op, "logweights", logweights, "means", means);
  check_like(op, "logstds", logstds, "means", means);
  const Gm1dDims d{means.size(-3), means.size(-2), means.size(-1)};
  if (d.K < 1)
    fail(op, "'means' ", kGm1dMeansLayout, " must have at least one component (K >= 1); got shape ",
         shape_str(shape_of(means)));
  check_min_dim(op, "logweights", logweights, 3, "(..., K, H, W)");
  if (logweights.size(-3) != d.K || logweights.size(-2) != d.H || logweights.size(-1) != d.W)
    fail(op, "'logweights' must have layout (..., K, H, W) with K=", d.K, ", ", hw(d.H, d.W), " taken from 'means' ",
         shape_str(shape_of(means)), "; got ", shape_str(shape_of(logweights)));
  check_min_dim(op, "logstds", logstds, 3, "(..., 1, 1, 1)");
  if (logstds.size(-3) != 1 || logstds.size(-2) != 1 || logstds.size(-1) != 1)
    fail(op, "'logstds' must have layout (..., 1, 1, 1) (one std per 1-D mixture); got ", shape_str(shape_of(logstds)));
  return d;
}

struct InverseCdfPlan {
  Gm1dDims d;
  Tensor means, logstds, logweights, cdfs;
  std::optional<Tensor> gaussian;
  Shape batch;
  int64_t N;

  InverseCdfPlan(const char* op, const Tensor& m, const Tensor& s, const Tensor& w, const Tensor& c,
                 const std::optional<Tensor>& g)
      : d(check_gm1d(op, m, s, w)), logstds(s) {
    check_like(op, "scaled_cdfs", c, "means", m);
    check_min_dim(op, "scaled_cdfs", c, 3, "(..., N, H, W)");
    N = c.size(-3);
    check_tail(op, "scaled_cdfs", c, m, "(..., N, H, W)", {N, d.H, d.W}, hw(d.H, d.W));
    if (g.has_value()) {
      check_like(op, "gaussian_samples", *g, "means", m);
      check_min_dim(op, "gaussian_samples", *g, 3, "(..., N, H, W)");
      if (g->size(-3) != N || g->size(-2) != d.H || g->size(-1) != d.W)
        fail(op, "'gaussian_samples' must have layout (..., N, H, W) with N=", N, " taken from 'scaled_cdfs' ",
             shape_str(shape_of(c)), " and ", hw(d.H, d.W), "; got ", shape_str(shape_of(*g)));
      gaussian = with_unit_pixel_stride(*g);
    }
    means = with_unit_pixel_stride(m);
    logweights = with_unit_pixel_stride(w);
    cdfs = with_unit_pixel_stride(c);
    std::vector<Operand> named{{"means", means, 3}, {"logstds", logstds, 3}, {"logweights", logweights, 3},
                               {"scaled_cdfs", cdfs, 3}};
    if (gaussian) named.push_back({"gaussian_samples", *gaussian, 3});
    batch = broadcast_batch(op, named);
  }

  template <typename T>
  Gm1dInverseCdfParams<T> params(const char* op) const {
    Gm1dInverseCdfParams<T> p;
    p.gm.batch = product(batch);
    p.gm.K = d.K;
    p.gm.P = d.H * d.W;
    p.gm.means = cptr<T>(means);
    p.gm.means_sk = means.stride(-3);
    p.gm.logstds = cptr<T>(logstds);
    p.gm.logweights = cptr<T>(logweights);
    p.gm.logweights_sk = logweights.stride(-3);
    const Tensor& g = gaussian ? *gaussian : cdfs;
    const std::vector<Operand> ops{{"means", means, 3},     {"logstds", logstds, 3},        {"logweights", logweights, 3},
                                   {"scaled_cdfs", cdfs, 3}, {"gaussian_samples", g, 3}};
    make_batch_layout(op, batch, ops.data(), p.layout);
    p.N = N;
    p.scaled_cdfs = cptr<T>(cdfs);
    p.scaled_cdfs_sn = cdfs.stride(-3);
    p.gaussian_samples = gaussian ? cptr<T>(*gaussian) : nullptr;
    p.gaussian_samples_sn = g.stride(-3);
    return p;
  }

  Shape out_shape() const { return concat(batch, {N, d.H, d.W}); }
};

template <class Backend>
Tensor gm1d_inverse_cdf(Tensor means, Tensor logstds, Tensor logweights, Tensor scaled_cdfs,
                        std::optional<Tensor> gaussian_samples, int64_t n_steps, double eps, double max_step_size) {
  constexpr const char* op = "gm1d_inverse_cdf";
  const InverseCdfPlan plan(op, means, logstds, logweights, scaled_cdfs, gaussian_samples);
  check_newton_scalars(op, n_steps, eps, max_step_size);
  Tensor out = new_empty(means, plan.out_shape());
  if (out.numel() == 0) return out;
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Gm1dInverseCdfParams<T> p = plan.template params<T>(op);
    p.n_steps = n_steps;
    p.eps = eps;
    p.max_step_size = max_step_size;
    p.samples = mptr<T>(out);
    Backend::launch(p, scope);
  });
  return out;
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor> gm1d_inverse_cdf_backward(Tensor grad, Tensor means, Tensor logstds,
                                                                     Tensor logweights, Tensor scaled_cdfs,
                                                                     Tensor samples, double eps,
                                                                     std::vector<bool> output_mask) {
  constexpr const char* op = "gm1d_inverse_cdf_backward";
  const InverseCdfPlan plan(op, means, logstds, logweights, scaled_cdfs, std::nullopt);
  check_mask(op, output_mask, 4);
  check_grad_pair(op, "grad", grad, "samples", samples, means, plan.out_shape());
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  const Gm1dDims& d = plan.d;
  const Shape& batch = plan.batch;
  const std::array<Shape, 4> grad_shapes{concat(batch, {d.K, d.H, d.W}), concat(batch, {1, d.H, d.W}),
                                         concat(batch, {d.K, d.H, d.W}), concat(batch, {plan.N, d.H, d.W})};
  const std::array<Shape, 4> input_shapes{shape_of(means), shape_of(logstds), shape_of(logweights),
                                          shape_of(scaled_cdfs)};
  if (needs_float32_reduction(means, output_mask, grad_shapes, input_shapes))
    return to_dtype(gm1d_inverse_cdf_backward<Backend>(to_float32(grad), to_float32(means), to_float32(logstds),
                                                       to_float32(logweights), to_float32(scaled_cdfs),
                                                       to_float32(samples), eps, output_mask),
                    means.scalar_type());
  const auto g = run_backward<Backend, 4>(
      means, output_mask, grad_shapes, input_shapes,
      product(batch) * d.H * d.W == 0, grad, samples, [&](auto tag, auto grad_p, auto samples_p, const auto& out) {
        using T = typename decltype(tag)::type;
        Gm1dInverseCdfBackwardParams<T> p;
        p.fwd = plan.template params<T>(op);
        p.fwd.eps = eps;
        p.grad = grad_p;
        p.samples = samples_p;
        p.grad_means = out[0];
        p.grad_logstds = out[1];
        p.grad_logweights = out[2];
        p.grad_scaled_cdfs = out[3];
        return p;
      });
  return {g[0], g[1], g[2], g[3]};
}

// ---------------------------------------------------------------------------------------------
// Knothe-Rosenblatt transport

struct KrPlan {
  GmDims d;
  GmTensors gm;
  Tensor samples, rotation;
  std::optional<Tensor> uniforms;
  Shape batch;
  int64_t N, axes, rotation_sp;

  KrPlan(const char* op, const Tensor& means, const Tensor& logstds, const Tensor& logweights, const Tensor& x,
         const char* x_name, const Tensor& rot, std::optional<int64_t> n_axes)
      : d(check_gm(op, means, &logstds, logweights)), gm(means, &logstds, logweights) {
    if (logstds.size(-4) != 1 || logstds.size(-3) != 1 || logstds.size(-2) != 1 || logstds.size(-1) != 1)
      fail(op, "'logstds' must have layout (..., 1, 1, 1, 1) (one std shared by all components and pixels) for this "
               "op; got ", shape_str(shape_of(logstds)));
    check_like(op, x_name, x, "means", means);
    check_min_dim(op, x_name, x, 4, "(..., N, C, H, W)");
    N = x.size(-4);
    check_tail(op, x_name, x, means, "(..., N, C, H, W)", {N, d.C, d.H, d.W}, chw(d));
    constexpr const char* rot_layout = "(..., 1|H, 1|W, C, C)";
    check_acc_like(op, "rotation", rot, "means", means);
    check_min_dim(op, "rotation", rot, 4, rot_layout);
    const bool rot_pixels_ok = (rot.size(-4) == 1 && rot.size(-3) == 1) || (rot.size(-4) == d.H && rot.size(-3) == d.W);
    if (rot.size(-2) != d.C || rot.size(-1) != d.C || !rot_pixels_ok)
      fail(op, "'rotation' must have layout ", rot_layout, " with ", chw(d), " taken from 'means' ",
           shape_str(shape_of(means)), " (one rotation per batch element or per pixel); got ", shape_str(shape_of(rot)));
    axes = n_axes.has_value() ? *n_axes : d.C;
    if (axes < 1 || axes > d.C) fail(op, "'n_axes' must be in [1, C=", d.C, "]; got ", axes);
    samples = with_unit_pixel_stride(x);
    rotation = flat_pixel_stride(rot, -4, -3) < 0 ? torch::stable::contiguous(rot) : rot;
    rotation_sp = flat_pixel_stride(rotation, -4, -3);
    batch = broadcast_batch(op, operands(x_name));
  }

  void add_uniforms(const char* op, const Tensor& means, const std::optional<Tensor>& u) {
    if (u.has_value()) {  // checked also when unused (n_axes == C)
      check_acc_like(op, "uniforms", *u, "means", means);
      check_min_dim(op, "uniforms", *u, 4, "(..., N, 1, H, W)");
      if (u->size(-4) != N || u->size(-3) != 1 || u->size(-2) != d.H || u->size(-1) != d.W)
        fail(op, "'uniforms' must have layout (..., N, 1, H, W) with N=", N, " taken from 'gaussian_samples' and ",
             hw(d.H, d.W), "; got ", shape_str(shape_of(*u)));
    }
    if (axes >= d.C) return;
    if (!u.has_value())
      fail(op, "'uniforms' (..., N, 1, H, W) are required when n_axes=", axes, " < C=", d.C,
           " (they choose the component of the remaining axes)");
    uniforms = with_unit_pixel_stride(*u);
    std::vector<Operand> ops = operands("gaussian_samples");
    ops.push_back({"uniforms", *uniforms, 4});
    batch = broadcast_batch(op, ops);
  }

  std::vector<Operand> operands(const char* x_name) const {
    return {{"means", gm.means, 4}, {"logstds", gm.logstds, 4}, {"logweights", gm.logweights, 4},
            {x_name, samples, 4},   {"rotation", rotation, 4}};
  }

  // Params is GmKrInverseParams or GmKrForwardParams: the type names the kernel.
  template <template <typename> class Params, typename T>
  Params<T> params(const char* op) const {
    Params<T> p;
    p.gm = gm_operands<T>(d, product(batch), gm.means, gm.logstds_ptr(), gm.logweights);
    std::vector<Operand> ops = operands("samples");
    ops.push_back({"uniforms", uniforms ? *uniforms : samples, 4});
    make_batch_layout(op, batch, ops.data(), p.layout);
    p.N = N;
    p.n_axes = axes;
    p.samples = cptr<T>(samples);
    p.samples_sn = samples.stride(-4);
    p.samples_sc = samples.stride(-3);
    p.rotation = acc_ptr<T>(rotation);
    p.rotation_sp = rotation_sp;
    p.rotation_sc = rotation.stride(-2);
    p.rotation_sa = rotation.stride(-1);
    if (uniforms) {
      p.uniforms = acc_ptr<T>(*uniforms);
      p.uniforms_sn = uniforms->stride(-4);
    }
    return p;
  }

  int64_t items() const { return product(batch) * N * d.H * d.W; }

  // Per-item scratch of the backends that need it (CUDA), in the accumulation dtype of 'rotation'.
  Tensor workspace(bool needed) const {
    return needed ? new_empty(rotation, Shape{items() * kr_workspace_slots(d.K, d.C)}) : empty_grad(rotation);
  }
};

template <class Backend>
Tensor gm_kr_inverse(Tensor means, Tensor logstds, Tensor logweights, Tensor gaussian_samples, Tensor rotation,
                     std::optional<Tensor> uniforms, std::optional<int64_t> n_axes, int64_t n_steps, double eps,
                     double max_step_size) {
  constexpr const char* op = "gm_kr_inverse";
  KrPlan plan(op, means, logstds, logweights, gaussian_samples, "gaussian_samples", rotation, n_axes);
  plan.add_uniforms(op, means, uniforms);
  check_newton_scalars(op, n_steps, eps, max_step_size);
  const GmDims& d = plan.d;
  Tensor out = new_empty(means, concat(plan.batch, {plan.N, d.C, d.H, d.W}));
  if (out.numel() == 0) return out;
  const Tensor workspace = plan.workspace(Backend::kKrWorkspace);
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmKrInverseParams<T> p = plan.template params<GmKrInverseParams, T>(op);
    p.n_steps = n_steps;
    p.eps = eps;
    p.max_step_size = max_step_size;
    p.out = mptr<T>(out);
    p.workspace = Backend::kKrWorkspace ? static_cast<acc_t<T>*>(workspace.data_ptr()) : nullptr;
    Backend::launch(p, scope);
  });
  return out;
}

template <class Backend>
Tensor gm_kr_forward(Tensor means, Tensor logstds, Tensor logweights, Tensor samples, Tensor rotation,
                     std::optional<int64_t> n_axes, double eps) {
  constexpr const char* op = "gm_kr_forward";
  const KrPlan plan(op, means, logstds, logweights, samples, "samples", rotation, n_axes);
  check_scalar(op, "eps", eps, ScalarKind::kFinitePositive);
  const GmDims& d = plan.d;
  Tensor out = new_empty(means, concat(plan.batch, {plan.N, plan.axes, d.H, d.W}));
  if (out.numel() == 0) return out;
  const Tensor workspace = plan.workspace(Backend::kKrWorkspace);
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmKrForwardParams<T> p = plan.template params<GmKrForwardParams, T>(op);
    p.eps = eps;
    p.out = mptr<T>(out);
    p.workspace = Backend::kKrWorkspace ? static_cast<acc_t<T>*>(workspace.data_ptr()) : nullptr;
    Backend::launch(p, scope);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// gm_sample

template <class Backend>
Tensor gm_sample(Tensor means, Tensor logstds, Tensor logweights, Tensor uniforms, Tensor normals, double gm_power,
                 bool cov_sharpen) {
  constexpr const char* op = "gm_sample";
  const GmDims d = check_gm(op, means, &logstds, logweights);
  check_acc_like(op, "uniforms", uniforms, "means", means);
  check_min_dim(op, "uniforms", uniforms, 4, "(..., N, 1, H, W)");
  const int64_t N = uniforms.size(-4);
  check_tail(op, "uniforms", uniforms, means, "(..., N, 1, H, W)", {N, 1, d.H, d.W}, hw(d.H, d.W));
  check_acc_like(op, "normals", normals, "means", means);
  check_min_dim(op, "normals", normals, 4, "(..., N, C, H, W)");
  if (normals.size(-4) != N || normals.size(-3) != d.C || normals.size(-2) != d.H || normals.size(-1) != d.W)
    fail(op, "'normals' must have layout (..., N, C, H, W) with N=", N, " taken from 'uniforms' and ", chw(d),
         " taken from 'means' ", shape_str(shape_of(means)), "; got ", shape_str(shape_of(normals)));
  const GmTensors gm(means, &logstds, logweights);
  const Tensor u = with_unit_pixel_stride(uniforms);
  const Tensor z = with_unit_pixel_stride(normals);
  const std::vector<Operand> operands{{"means", gm.means, 4},           {"logstds", gm.logstds, 4},
                                      {"logweights", gm.logweights, 4}, {"uniforms", u, 4},
                                      {"normals", z, 4}};
  const Shape batch = broadcast_batch(op, operands);
  check_scalar(op, "gm_power", gm_power, cov_sharpen ? ScalarKind::kFinitePositive : ScalarKind::kFinite);
  Tensor out = new_empty(means, concat(batch, {N, d.C, d.H, d.W}));
  if (out.numel() == 0) return out;
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmSampleParams<T> p;
    p.gm = gm_operands<T>(d, product(batch), gm.means, gm.logstds_ptr(), gm.logweights);
    make_batch_layout(op, batch, operands.data(), p.layout);
    p.N = N;
    p.uniforms = acc_ptr<T>(u);
    p.uniforms_sn = u.stride(-4);
    p.normals = acc_ptr<T>(z);
    p.normals_sn = z.stride(-4);
    p.normals_sc = z.stride(-3);
    p.power = gm_power;
    p.cov_sharpen = cov_sharpen;
    p.out = mptr<T>(out);
    Backend::launch(p, scope);
  });
  return out;
}

// Registers every op of this file for one dispatch key.
#define GMFLOW_REGISTER_SAMPLING_OPS(m, Backend)                                                              \
  m.impl("gm_mul_iso_gaussian", TORCH_BOX(&gmflow::binding::gm_mul_iso_gaussian<Backend>));                   \
  m.impl("gm_posterior_mean", TORCH_BOX(&gmflow::binding::gm_posterior_mean<Backend>));                       \
  m.impl("gm_posterior_mean_backward", TORCH_BOX(&gmflow::binding::gm_posterior_mean_backward<Backend>));     \
  m.impl("gm_ode_euler_substeps", TORCH_BOX(&gmflow::binding::gm_ode_euler_substeps<Backend>));               \
  m.impl("gm_ode_euler_substeps_backward",                                                                    \
         TORCH_BOX(&gmflow::binding::gm_ode_euler_substeps_backward<Backend>));                               \
  m.impl("gm1d_inverse_cdf", TORCH_BOX(&gmflow::binding::gm1d_inverse_cdf<Backend>));                         \
  m.impl("gm1d_inverse_cdf_backward", TORCH_BOX(&gmflow::binding::gm1d_inverse_cdf_backward<Backend>));       \
  m.impl("gm_kr_inverse", TORCH_BOX(&gmflow::binding::gm_kr_inverse<Backend>));                               \
  m.impl("gm_kr_forward", TORCH_BOX(&gmflow::binding::gm_kr_forward<Backend>));                               \
  m.impl("gm_sample", TORCH_BOX(&gmflow::binding::gm_sample<Backend>))

}  // namespace binding
}  // namespace gmflow
