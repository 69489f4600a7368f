// Op bodies shared by the CPU and CUDA registrations: validate, lay out the
// operands, allocate, launch through `Backend`, reduce broadcast gradients.
//
// Backend provides:  struct Scope { explicit Scope(const Tensor&); };  and
// static template function  launch(const Params&, const Scope&)  for every kernel of the table (params.h).
#pragma once

#include <array>

#include "checks.h"
#include "gmflow/params.h"

namespace gmflow {
namespace binding {

constexpr const char* kMeansLayout = "(..., K, C, H, W)";

// Shapes of a GM operand set, read from `means` and checked on the others.
struct GmDims {
  int64_t K, C, H, W;
};

inline GmDims check_gm(const char* op, const Tensor& means, const Tensor* logstds, const Tensor& logweights) {
  check_min_dim(op, "means", means, 4, kMeansLayout);
  check_like(op, "means", means, "means", means);
  check_like(op, "logweights", logweights, "means", means);
  if (logstds) check_like(op, "logstds", *logstds, "means", means);
  const GmDims d{means.size(-4), means.size(-3), means.size(-2), means.size(-1)};
  if (d.K < 1) fail(op, "'means' ", kMeansLayout, " must have at least one component (K >= 1); got shape ",
                    shape_str(shape_of(means)));
  const std::string dims = "K=" + std::to_string(d.K) + ", C=" + std::to_string(d.C) + ", H=" +
                           std::to_string(d.H) + ", W=" + std::to_string(d.W);
  check_min_dim(op, "logweights", logweights, 4, "(..., K, 1, H, W)");
  if (logweights.size(-4) != d.K || logweights.size(-3) != 1 || logweights.size(-2) != d.H ||
      logweights.size(-1) != d.W)
    fail(op, "'logweights' must have layout (..., K, 1, H, W) with ", dims, " taken from 'means' ",
         shape_str(shape_of(means)), "; got ", shape_str(shape_of(logweights)));
  if (logstds) {
    const Tensor& s = *logstds;
    check_min_dim(op, "logstds", s, 4, "(..., 1, 1, 1, 1) or (..., K, 1, H, W)");
    const bool k_ok = s.size(-4) == 1 || s.size(-4) == d.K;
    const bool px_ok = (s.size(-2) == 1 && s.size(-1) == 1) || (s.size(-2) == d.H && s.size(-1) == d.W);
    if (!k_ok || s.size(-3) != 1 || !px_ok)
      fail(op, "'logstds' must have layout (..., 1, 1, 1, 1) or (..., K, 1, H, W) (K, H and W may each be 1) with ",
           dims, " taken from 'means' ", shape_str(shape_of(means)), "; got ", shape_str(shape_of(s)));
  }
  return d;
}

// Kernel view of (means, logstds, logweights); tensors must already have unit pixel strides.
template <typename T>
GmOperands<T> gm_operands(const GmDims& d, int64_t batch, const Tensor& means, const Tensor* logstds,
                          const Tensor& logweights) {
  GmOperands<T> g;
  g.batch = batch;
  g.K = d.K;
  g.C = d.C;
  g.P = d.H * d.W;
  g.means = cptr<T>(means);
  g.means_sk = means.stride(-4);
  g.means_sc = means.stride(-3);
  g.logweights = cptr<T>(logweights);
  g.logweights_sk = logweights.stride(-4);
  if (logstds) {
    g.logstds = cptr<T>(*logstds);
    g.logstds_k = logstds->size(-4);
    g.logstds_sk = g.logstds_k == 1 ? 0 : logstds->stride(-4);
    g.logstds_sp = (logstds->size(-2) * logstds->size(-1) == 1) ? 0 : 1;
  }
  return g;
}

// Tensors with pixel dims flattened to unit stride; logstds without pixel dims stay as they are.
struct GmTensors {
  Tensor means, logstds, logweights;
  bool has_logstds;
  GmTensors(const Tensor& m, const Tensor* s, const Tensor& w)
      : means(with_unit_pixel_stride(m)),
        logstds(s ? (s->size(-2) * s->size(-1) == 1 ? *s : with_unit_pixel_stride(*s)) : m),
        logweights(with_unit_pixel_stride(w)),
        has_logstds(s != nullptr) {}
  const Tensor* logstds_ptr() const { return has_logstds ? &logstds : nullptr; }
};

inline Tensor empty_grad(const Tensor& like) { return new_empty(like, Shape{0}); }

// The shared tail of the backward ops. Input gradient i (where mask[i]) is allocated at
// grad_shapes[i] (the broadcast batch), the kernel runs unless `empty`, with
// make_params(tag, grad, out, grad_ptrs) filling its params (grad_ptrs[i] null where !mask[i]),
// and each gradient is summed to input_shapes[i]; unmasked ones are empty tensors.
template <class Backend, size_t N, class MakeParams>
std::array<Tensor, N> run_backward(const Tensor& like, const std::vector<bool>& mask,
                                   const std::array<Shape, N>& grad_shapes, const std::array<Shape, N>& input_shapes,
                                   bool empty, const Tensor& grad, const Tensor& out, MakeParams make_params) {
  std::array<Tensor, N> grads;
  for (size_t i = 0; i < N; ++i) grads[i] = mask[i] ? new_empty(like, grad_shapes[i]) : empty_grad(like);
  if (!empty) {
    const Tensor grad_c = torch::stable::contiguous(grad);
    const Tensor out_c = torch::stable::contiguous(out);
    const typename Backend::Scope scope(like);
    dispatch_float(like, [&](auto tag) {
      using T = typename decltype(tag)::type;
      std::array<T*, N> grad_ptrs;
      for (size_t i = 0; i < N; ++i) grad_ptrs[i] = mask[i] ? mptr<T>(grads[i]) : nullptr;
      Backend::launch(make_params(tag, cptr<T>(grad_c), cptr<T>(out_c), grad_ptrs), scope);
    });
  }  // else: no element, and sum_to_shape of the empty gradients gives zeros
  for (size_t i = 0; i < N; ++i)
    if (mask[i]) grads[i] = sum_to_shape(grads[i], input_shapes[i]);
  return grads;
}

// ---------------------------------------------------------------------------------------------
// gm_logprob

struct GmLogprobPlan {
  const char* op;  // gm_logprob or gm_logprob_backward: the op the messages name
  GmDims d;
  GmTensors gm;
  Tensor samples;
  Shape batch;
  int64_t N;

  GmLogprobPlan(const char* op_name, const Tensor& means, const Tensor& logstds, const Tensor& logweights,
                const Tensor& samples_in)
      : op(op_name),
        d(check_gm(op, means, &logstds, logweights)), gm(means, &logstds, logweights), samples(samples_in) {
    check_like(op, "samples", samples, "means", means);
    check_min_dim(op, "samples", samples, 4, "(..., N, C, H, W)");
    if (samples.size(-3) != d.C || samples.size(-2) != d.H || samples.size(-1) != d.W)
      fail(op, "'samples' must have layout (..., N, C, H, W) with C=", d.C, ", H=", d.H, ", W=", d.W,
           " taken from 'means' ", shape_str(shape_of(means)), "; got ", shape_str(shape_of(samples)));
    samples = with_unit_pixel_stride(samples);
    batch = broadcast_batch(op, operands());
    N = samples.size(-4);
  }

  std::vector<Operand> operands() const {
    return {{"means", gm.means, 4}, {"logstds", gm.logstds, 4}, {"logweights", gm.logweights, 4},
            {"samples", samples, 4}};
  }

  template <typename T>
  GmLogprobParams<T> params() const {
    GmLogprobParams<T> p;
    p.gm = gm_operands<T>(d, product(batch), gm.means, gm.logstds_ptr(), gm.logweights);
    const std::vector<Operand> ops = operands();
    make_batch_layout(op, batch, ops.data(), p.layout);
    p.N = N;
    p.samples = cptr<T>(samples);
    p.samples_sn = samples.stride(-4);
    p.samples_sc = samples.stride(-3);
    return p;
  }

  Shape out_shape() const { return concat(batch, {N, d.H, d.W}); }
};

template <class Backend>
Tensor gm_logprob(Tensor means, Tensor logstds, Tensor logweights, Tensor samples) {
  const GmLogprobPlan plan("gm_logprob", means, logstds, logweights, samples);
  Tensor out = new_empty(means, plan.out_shape());
  if (out.numel() == 0) return out;
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmLogprobParams<T> p = plan.template params<T>();
    p.logprob = mptr<T>(out);
    Backend::launch(p, scope);
  });
  return out;
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor> gm_logprob_backward(Tensor grad, Tensor means, Tensor logstds,
                                                               Tensor logweights, Tensor samples, Tensor logprob,
                                                               std::vector<bool> output_mask) {
  constexpr const char* op = "gm_logprob_backward";
  const GmLogprobPlan plan(op, means, logstds, logweights, samples);
  if (output_mask.size() != 4) fail(op, "'output_mask' must have 4 entries; got ", output_mask.size());
  const Shape out_shape = plan.out_shape();
  check_like(op, "grad", grad, "means", means);
  check_like(op, "logprob", logprob, "means", means);
  if (shape_of(grad) != out_shape || shape_of(logprob) != out_shape)
    fail(op, "'grad' and 'logprob' must have the output shape ", shape_str(out_shape), "; got ",
         shape_str(shape_of(grad)), " and ", shape_str(shape_of(logprob)));
  const GmDims& d = plan.d;
  const Shape& batch = plan.batch;
  const int64_t Kl = plan.gm.logstds.size(-4);
  const std::array<Shape, 4> grad_shapes{concat(batch, {d.K, d.C, d.H, d.W}), concat(batch, {Kl, 1, d.H, d.W}),
                                         concat(batch, {d.K, 1, d.H, d.W}), concat(batch, {plan.N, d.C, d.H, d.W})};
  const std::array<Shape, 4> input_shapes{shape_of(means), shape_of(logstds), shape_of(logweights),
                                          shape_of(samples)};
  if (needs_float32_reduction(means, output_mask, grad_shapes, input_shapes))
    return to_dtype(gm_logprob_backward<Backend>(to_float32(grad), to_float32(means), to_float32(logstds),
                                                 to_float32(logweights), to_float32(samples), to_float32(logprob),
                                                 output_mask),
                    means.scalar_type());
  const auto g = run_backward<Backend, 4>(
      means, output_mask, grad_shapes, input_shapes, product(batch) * d.H * d.W == 0,
      grad, logprob, [&](auto tag, auto grad_p, auto logprob_p, const auto& out) {
        using T = typename decltype(tag)::type;
        GmLogprobBackwardParams<T> p;
        p.fwd = plan.template params<T>();
        p.grad = grad_p;
        p.logprob = logprob_p;
        p.grad_means = out[0];
        p.grad_logstds = out[1];
        p.grad_logweights = out[2];
        p.grad_samples = out[3];
        return p;
      });
  return {g[0], g[1], g[2], g[3]};
}

// ---------------------------------------------------------------------------------------------
// gm_to_mean and gm_to_iso_gaussian: one output pixel per (batch, pixel)

struct GmPixelPlan {
  GmDims d;
  GmTensors gm;
  Shape batch;

  GmPixelPlan(const char* op, const Tensor& means, const Tensor* logstds, const Tensor& logweights)
      : d(check_gm(op, means, logstds, logweights)), gm(means, logstds, logweights) {
    std::vector<Operand> named{{"means", gm.means, 4}};
    if (gm.has_logstds) named.push_back({"logstds", gm.logstds, 4});
    named.push_back({"logweights", gm.logweights, 4});
    batch = broadcast_batch(op, named);
  }

  // Layout slots (GmOperand); without logstds its slot repeats means, as does the samples slot.
  std::vector<Operand> operands() const {
    return {{"means", gm.means, 4}, {"logstds", gm.logstds, 4}, {"logweights", gm.logweights, 4},
            {"means", gm.means, 4}};
  }

  template <typename T, class Params>
  void fill(const char* op, Params& p) const {
    p.gm = gm_operands<T>(d, product(batch), gm.means, gm.logstds_ptr(), gm.logweights);
    const std::vector<Operand> ops = operands();
    make_batch_layout(op, batch, ops.data(), p.layout);
  }

  bool empty() const { return product(batch) * d.H * d.W == 0; }
};

template <class Backend>
Tensor gm_to_mean(Tensor means, Tensor logweights, double power) {
  constexpr const char* op = "gm_to_mean";
  const GmPixelPlan plan(op, means, nullptr, logweights);
  check_scalar(op, "power", power, ScalarKind::kFinite);
  const GmDims& d = plan.d;
  Tensor out = new_empty(means, concat(plan.batch, {d.C, d.H, d.W}));
  if (out.numel() == 0) return out;
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmToMeanParams<T> p;
    plan.fill<T>(op, p);
    p.power = power;
    p.mean = mptr<T>(out);
    Backend::launch(p, scope);
  });
  return out;
}

template <class Backend>
std::tuple<Tensor, Tensor> gm_to_mean_backward(Tensor grad, Tensor means, Tensor logweights, Tensor mean,
                                               double power, std::vector<bool> output_mask) {
  constexpr const char* op = "gm_to_mean_backward";
  const GmPixelPlan plan(op, means, nullptr, logweights);
  if (output_mask.size() != 2) fail(op, "'output_mask' must have 2 entries; got ", output_mask.size());
  check_scalar(op, "power", power, ScalarKind::kFinite);
  const GmDims& d = plan.d;
  const Shape out_shape = concat(plan.batch, {d.C, d.H, d.W});
  check_like(op, "grad", grad, "means", means);
  check_like(op, "mean", mean, "means", means);
  if (shape_of(grad) != out_shape || shape_of(mean) != out_shape)
    fail(op, "'grad' and 'mean' must have the output shape ", shape_str(out_shape), "; got ",
         shape_str(shape_of(grad)), " and ", shape_str(shape_of(mean)));
  const std::array<Shape, 2> grad_shapes{concat(plan.batch, {d.K, d.C, d.H, d.W}),
                                         concat(plan.batch, {d.K, 1, d.H, d.W})};
  const std::array<Shape, 2> input_shapes{shape_of(means), shape_of(logweights)};
  if (needs_float32_reduction(means, output_mask, grad_shapes, input_shapes))
    return to_dtype(gm_to_mean_backward<Backend>(to_float32(grad), to_float32(means), to_float32(logweights),
                                                 to_float32(mean), power, output_mask),
                    means.scalar_type());
  const auto g = run_backward<Backend, 2>(
      means, output_mask, grad_shapes, input_shapes, plan.empty(), grad, mean,
      [&](auto tag, auto grad_p, auto mean_p, const auto& out) {
        using T = typename decltype(tag)::type;
        GmToMeanBackwardParams<T> p;
        plan.fill<T>(op, p.fwd);
        p.fwd.power = power;
        p.grad = grad_p;
        p.mean = mean_p;
        p.grad_means = out[0];
        p.grad_logweights = out[1];
        return p;
      });
  return {g[0], g[1]};
}

template <class Backend>
std::tuple<Tensor, Tensor> gm_to_iso_gaussian(Tensor means, Tensor logstds, Tensor logweights) {
  constexpr const char* op = "gm_to_iso_gaussian";
  const GmPixelPlan plan(op, means, &logstds, logweights);
  const GmDims& d = plan.d;
  Tensor mean = new_empty(means, concat(plan.batch, {d.C, d.H, d.W}));
  Tensor var = new_empty(means, concat(plan.batch, {1, d.H, d.W}));
  if (plan.empty()) return {mean, var};
  const typename Backend::Scope scope(means);
  dispatch_float(means, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GmToIsoGaussianParams<T> p;
    plan.fill<T>(op, p);
    p.mean = mptr<T>(mean);
    p.var = mptr<T>(var);
    Backend::launch(p, scope);
  });
  return {mean, var};
}

// Registers every op of this file for one dispatch key.
#define GMFLOW_REGISTER_GM_OPS(m, Backend)                                                   \
  m.impl("gm_logprob", TORCH_BOX(&gmflow::binding::gm_logprob<Backend>));                    \
  m.impl("gm_logprob_backward", TORCH_BOX(&gmflow::binding::gm_logprob_backward<Backend>));  \
  m.impl("gm_to_mean", TORCH_BOX(&gmflow::binding::gm_to_mean<Backend>));                    \
  m.impl("gm_to_mean_backward", TORCH_BOX(&gmflow::binding::gm_to_mean_backward<Backend>));  \
  m.impl("gm_to_iso_gaussian", TORCH_BOX(&gmflow::binding::gm_to_iso_gaussian<Backend>))

}  // namespace binding
}  // namespace gmflow
