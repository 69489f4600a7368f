// Argument checks and shape helpers of the binding layer (stable ABI only).
// Every message names the op, the argument and the expected layout; the Python
// fallback (gmflow/_validation.py) raises the same messages.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "gmflow/layout.h"
#include "gmflow/platform.h"

namespace gmflow {
namespace binding {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
using Shape = std::vector<int64_t>;

inline Shape shape_of(const Tensor& t) {
  const auto s = t.sizes();
  return Shape(s.begin(), s.end());
}

inline std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

inline std::string dtype_str(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return "torch.float32";
    case ScalarType::Double:
      return "torch.float64";
    case ScalarType::Half:
      return "torch.float16";
    case ScalarType::BFloat16:
      return "torch.bfloat16";
    // The dtypes a user is likely to pass by mistake, named as Python prints them.
    case ScalarType::ComplexHalf:
      return "torch.complex32";
    case ScalarType::ComplexFloat:
      return "torch.complex64";
    case ScalarType::ComplexDouble:
      return "torch.complex128";
    case ScalarType::Long:
      return "torch.int64";
    case ScalarType::Int:
      return "torch.int32";
    case ScalarType::Short:
      return "torch.int16";
    case ScalarType::Char:
      return "torch.int8";
    case ScalarType::Byte:
      return "torch.uint8";
    case ScalarType::Bool:
      return "torch.bool";
    default:
      return std::string("torch.") + torch::headeronly::toString(t);
  }
}

inline std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  std::ostringstream o;
  o << (t.is_cuda() ? "cuda" : "device") << ":" << int(t.get_device_index());
  return o.str();
}

template <typename... Args>
[[noreturn]] inline void fail(const char* op, const Args&... args) {
  std::ostringstream o;
  o << op << "(): ";
  (o << ... << args);
  throw std::runtime_error(o.str());
}

inline bool is_supported_float(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// A None passed for a tensor arrives as an undefined tensor; the first check of every tensor
// argument (check_min_dim, check_like, check_acc_like, check_device) starts here.
inline void check_defined(const char* op, const char* name, const Tensor& t) {
  if (!t.defined()) fail(op, "'", name, "' must be a tensor; got None");
}

// Same device as `ref`; for tensors whose dtype is checked elsewhere (or not at all because the op
// ignores them): a tensor on another device must never route the call to another backend.
inline void check_device(const char* op, const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) {
  check_defined(op, name, t);
  if (!(t.device() == ref.device()))
    fail(op, "'", name, "' is on ", device_str(t), " but '", ref_name, "' is on ", device_str(ref),
         "; all tensors must be on one device");
}

// Same dtype (a supported float) and device as the reference tensor `ref`.
inline void check_like(const char* op, const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) {
  check_defined(op, name, t);
  if (!is_supported_float(t.scalar_type()))
    fail(op, "'", name, "' must be a floating tensor (float32, float64, float16 or bfloat16); got ",
         dtype_str(t.scalar_type()));
  if (t.scalar_type() != ref.scalar_type())
    fail(op, "'", name, "' has dtype ", dtype_str(t.scalar_type()), " but '", ref_name, "' has ",
         dtype_str(ref.scalar_type()), "; all tensors must share one dtype");
  check_device(op, name, t, ref_name, ref);
}

// Scalar arguments: what each kind accepts, worded as in the error message.
enum class ScalarKind { kFinite, kFiniteNonZero, kFinitePositive, kPositive };

inline const char* scalar_kind_str(ScalarKind kind) {
  switch (kind) {
    case ScalarKind::kFinite:
      return "a finite number";
    case ScalarKind::kFiniteNonZero:
      return "a finite non-zero number";
    case ScalarKind::kFinitePositive:
      return "a finite number > 0";
    default:
      return "a number > 0 (inf allowed)";
  }
}

inline void check_scalar(const char* op, const char* name, double value, ScalarKind kind) {
  const bool finite = std::isfinite(value);
  bool ok = false;
  switch (kind) {
    case ScalarKind::kFinite:
      ok = finite;
      break;
    case ScalarKind::kFiniteNonZero:
      ok = finite && value != 0;
      break;
    case ScalarKind::kFinitePositive:
      ok = finite && value > 0;
      break;
    case ScalarKind::kPositive:
      ok = value > 0;  // false for NaN
      break;
  }
  if (!ok) {
    std::ostringstream got;  // as Python's f"{value:g}" (glibc would print a negative NaN as -nan)
    if (std::isnan(value)) got << "nan"; else got << value;
    fail(op, "'", name, "' must be ", scalar_kind_str(kind), "; got ", got.str());
  }
}

// Bounds the work of one call: far above any useful Newton step count (the iterates stop moving
// after a few dozen steps), so a typo or an overflowed int cannot run for minutes.
constexpr int64_t kMaxNewtonSteps = 10000;

inline void check_steps(const char* op, int64_t n_steps) {
  if (n_steps < 0 || n_steps > kMaxNewtonSteps)
    fail(op, "'n_steps' must be an integer in [0, ", kMaxNewtonSteps, "]; got ", n_steps);
}

inline void check_min_dim(const char* op, const char* name, const Tensor& t, int64_t inner, const char* layout) {
  check_defined(op, name, t);
  if (t.dim() < inner)
    fail(op, "'", name, "' must have layout ", layout, " (at least ", inner, " dims); got shape ",
         shape_str(shape_of(t)));
}

inline Shape leading(const Shape& s, int64_t inner) { return Shape(s.begin(), s.end() - inner); }

inline Shape concat(Shape a, const Shape& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

inline int64_t product(const Shape& s) {
  int64_t p = 1;
  for (int64_t v : s) p *= v;
  return p;
}

// A tensor operand: its name, its tensor and how many trailing dims are not batch dims.
struct Operand {
  const char* name;
  Tensor tensor;
  int64_t inner;
};

// Broadcast of the operands' batch dims (all dims but the trailing `inner`).
inline Shape broadcast_batch(const char* op, const std::vector<Operand>& operands) {
  Shape out;
  for (const Operand& o : operands) {
    const Shape b = leading(shape_of(o.tensor), o.inner);
    if (b.size() > out.size()) out.insert(out.begin(), b.size() - out.size(), 1);
    const size_t shift = out.size() - b.size();
    for (size_t i = 0; i < b.size(); ++i) {
      int64_t& d = out[shift + i];
      if (b[i] == d || b[i] == 1) continue;
      if (d != 1) {
        std::ostringstream names;
        for (const Operand& q : operands) names << " '" << q.name << "' " << shape_str(shape_of(q.tensor));
        fail(op, "the batch dims of '", o.name, "' (all dims before the last ", o.inner,
             ") do not broadcast with the other operands:", names.str());
      }
      d = b[i];
    }
  }
  return out;
}

// Fills `layout` with the broadcast batch dims of `operands` (coalesced) and the
// per-operand strides (0 where broadcast).
template <int kOperands>
inline void make_batch_layout(const char* op, const Shape& batch, const Operand* operands,
                              BatchLayout<kOperands>& layout) {
  // Per-dim sizes and strides, skipping size-1 dims.
  std::vector<int64_t> sizes;
  std::vector<std::vector<int64_t>> strides(kOperands);
  const int64_t nb = int64_t(batch.size());
  for (int64_t d = 0; d < nb; ++d) {
    if (batch[d] == 1) continue;
    sizes.push_back(batch[d]);
    for (int t = 0; t < kOperands; ++t) {
      const Tensor& x = operands[t].tensor;
      const int64_t xb = x.dim() - operands[t].inner;  // operand's batch rank
      const int64_t xd = d - (nb - xb);
      const bool present = xd >= 0 && x.size(xd) != 1;
      strides[t].push_back(present ? x.stride(xd) : 0);
    }
  }
  // Merge dim i into dim i+1 where every operand is row-major across the pair.
  std::vector<int64_t> msizes;
  std::vector<std::vector<int64_t>> mstrides(kOperands);
  for (size_t i = 0; i < sizes.size(); ++i) {
    bool mergeable = !msizes.empty();
    for (int t = 0; t < kOperands && mergeable; ++t)
      mergeable = mstrides[t].back() == strides[t][i] * sizes[i];
    if (mergeable) {
      msizes.back() *= sizes[i];
      for (int t = 0; t < kOperands; ++t) mstrides[t].back() = strides[t][i];
    } else {
      msizes.push_back(sizes[i]);
      for (int t = 0; t < kOperands; ++t) mstrides[t].push_back(strides[t][i]);
    }
  }
  if (msizes.size() > size_t(kMaxBatchDims))
    fail(op, "at most ", kMaxBatchDims, " non-mergeable batch dims are supported; got batch shape ", shape_str(batch));
  layout.ndim = int32_t(msizes.size());
  for (size_t i = 0; i < msizes.size(); ++i) {
    layout.sizes[i] = msizes[i];
    for (int t = 0; t < kOperands; ++t) layout.strides[t][i] = mstrides[t][i];
  }
}

// The pixels (H, W) of `t` (its dims -2, -1) flatten to a unit stride?
inline bool unit_pixel_stride(const Tensor& t) {
  const int64_t H = t.size(-2), W = t.size(-1);
  return (W == 1 || t.stride(-1) == 1) && (H == 1 || t.stride(-2) == W);
}

// Returns t, copied to a contiguous layout if its pixels cannot be addressed as p = h * W + w.
inline Tensor with_unit_pixel_stride(const Tensor& t) {
  return unit_pixel_stride(t) ? t : torch::stable::contiguous(t);
}

// Sums `full` (shape batch + inner) down to `target` (broadcastable to it) and reshapes.
inline Tensor sum_to_shape(const Tensor& full, const Shape& target) {
  const Shape fs = shape_of(full);
  if (fs == target) return full;
  std::vector<int64_t> dims;
  const int64_t lead = int64_t(fs.size()) - int64_t(target.size());
  for (int64_t d = 0; d < int64_t(fs.size()); ++d) {
    if (d < lead || (target[d - lead] == 1 && fs[d] != 1)) dims.push_back(d);
  }
  Tensor reduced = dims.empty() ? full : torch::stable::sum(full, torch::headeronly::IntHeaderOnlyArrayRef(dims), true);
  return torch::stable::reshape(reduced, torch::headeronly::IntHeaderOnlyArrayRef(target));
}

inline Tensor new_empty(const Tensor& like, const Shape& shape) {
  return torch::stable::new_empty(like, torch::headeronly::IntHeaderOnlyArrayRef(shape));
}

inline Tensor new_zeros(const Tensor& like, const Shape& shape) {
  return torch::stable::new_zeros(like, torch::headeronly::IntHeaderOnlyArrayRef(shape));
}

// Float16 and bfloat16 gradients that sum over broadcast dims are computed in float32 and rounded
// once: the per-element partials of a broadcast sum can overflow float16 where the sum does not.
// `full` are the unreduced gradient shapes, `inputs` the shapes they reduce to.
template <size_t N>
bool needs_float32_reduction(const Tensor& means, const std::vector<bool>& mask, const std::array<Shape, N>& full,
                             const std::array<Shape, N>& inputs) {
  const ScalarType t = means.scalar_type();
  if (t != ScalarType::Half && t != ScalarType::BFloat16) return false;
  for (size_t i = 0; i < N; ++i)
    if (mask[i] && product(full[i]) != product(inputs[i])) return true;
  return false;
}

inline Tensor to_float32(const Tensor& t) { return torch::stable::to(t, ScalarType::Float); }

// Every tensor of a tuple converted to `dtype`.
template <class Tuple>
inline Tuple to_dtype(Tuple tensors, ScalarType dtype) {
  std::apply([&](auto&... t) { ((t = torch::stable::to(t, dtype)), ...); }, tensors);
  return tensors;
}

// Calls f(TypeTag<T>{}) with T the kernel element type of `t`.
template <typename T>
struct TypeTag {
  using type = T;
};

template <class F>
inline void dispatch_float(const Tensor& t, F&& f) {
  switch (t.scalar_type()) {
    case ScalarType::Float:
      f(TypeTag<float>{});
      break;
    case ScalarType::Double:
      f(TypeTag<double>{});
      break;
    case ScalarType::Half:
      f(TypeTag<gmflow::Half>{});
      break;
    case ScalarType::BFloat16:
      f(TypeTag<gmflow::BFloat16>{});
      break;
    default:
      throw std::runtime_error("gmflow: unsupported dtype " + dtype_str(t.scalar_type()));
  }
}

template <typename T>
inline const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}
template <typename T>
inline T* mptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

}  // namespace binding
}  // namespace gmflow
