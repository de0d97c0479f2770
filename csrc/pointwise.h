// Host-side plumbing for pointwise ops, shared by the CPU and CUDA kernels: argument checks and
// the layout rule.
//
// Layout rule: the output is `at::empty_like(x)` (the same rule the Python fake impls use), so a
// contiguous, channels_last or otherwise dense input gives an output with the input's strides.
// Kernels then only ever see *flat* operands: dense tensors with identical strides, where
// element i of one buffer corresponds to element i of the other. An operand that is not already
// in that layout (a slice, an expanded or transposed view, a gradient in another memory format)
// is first copied into it. That copy is the only price of an exotic layout; the common layouts
// run straight from the caller's memory.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

namespace fastops {

// Wrong dtypes raise TypeError in Python, wrong shapes or devices ValueError; each message names the
// op and the argument. fastops/_checks.py raises the same errors with the same words.
inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), "fastops.", op, ": argument '", arg, "' is an undefined tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fastops.", op, ": argument '", arg,
              "' must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              t.scalar_type());
}

// A 4-D floating-point tensor [N, C, H, W].
inline void check_nchw(const char* op, const char* arg, const at::Tensor& t) {
  check_floating(op, arg, t);
  TORCH_CHECK_VALUE(t.dim() == 4, "fastops.", op, ": argument '", arg,
                    "' must be 4-D [N, C, H, W], got ", t.dim(), "-D shape ", t.sizes());
}

// `a` must have `b`'s dtype and device (shapes are the caller's to check).
inline void check_same_kind(const char* op, const char* arg, const at::Tensor& a, const char* barg,
                            const at::Tensor& b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastops.", op, ": argument '", arg,
                   "' has dtype ", a.scalar_type(), " but '", barg, "' has dtype ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), "fastops.", op, ": argument '", arg, "' is on ",
                    a.device(), " but '", barg, "' is on ", b.device());
}

// `a` must match `b` (the primary argument) in shape, dtype and device.
inline void check_like(const char* op, const char* arg, const at::Tensor& a, const char* barg,
                       const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), "fastops.", op, ": argument '", arg, "' has shape ",
              a.sizes(), " but '", barg, "' has shape ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastops.", op, ": argument '", arg,
              "' has dtype ", a.scalar_type(), " but '", barg, "' has dtype ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), "fastops.", op, ": argument '", arg, "' is on ",
              a.device(), " but '", barg, "' is on ", b.device());
}

// True when `t` is dense and laid out exactly like `like`.
inline bool has_flat_layout_of(const at::Tensor& t, const at::Tensor& like) {
  return t.is_non_overlapping_and_dense() && t.sizes() == like.sizes() &&
         t.strides() == like.strides();
}

// `t` itself if it already has `like`'s (dense) layout, else a copy of it in that layout.
inline at::Tensor as_flat_layout_of(const at::Tensor& t, const at::Tensor& like) {
  if (has_flat_layout_of(t, like)) return t;
  at::Tensor copy = at::empty_like(like);
  copy.copy_(t);
  return copy;
}

// out = f(x), elementwise. `flat(in, out)` receives dense tensors of one layout.
template <typename Flat>
at::Tensor unary_pointwise(const at::Tensor& x, Flat&& flat) {
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  flat(as_flat_layout_of(x, out), out);
  return out;
}

// out = f(a, x), elementwise; `out` takes x's layout (it is x's gradient).
template <typename Flat>
at::Tensor binary_pointwise(const at::Tensor& a, const at::Tensor& x, Flat&& flat) {
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  flat(as_flat_layout_of(a, out), as_flat_layout_of(x, out), out);
  return out;
}

// x = f(x) in place, whatever x's strides (internal overlap is refused, as PyTorch does).
template <typename Flat>
void unary_pointwise_(const char* op, at::Tensor& x, Flat&& flat) {
  TORCH_CHECK(at::has_internal_overlap(x) != at::MemOverlap::Yes,
              "fastops.", op, ": argument 'x' has elements that share memory (an expanded view); "
              "in-place is not possible, clone it first");
  if (x.numel() == 0) return;
  if (x.is_non_overlapping_and_dense()) {
    flat(x, x);
    return;
  }
  at::Tensor tmp = x.contiguous();
  flat(tmp, tmp);
  x.copy_(tmp);
}

}  // namespace fastops
