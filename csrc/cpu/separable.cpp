// CPU kernels of fastops::separable_conv_bn_act and its backward (csrc/separable.h).
//
// Forward, a few images at a time: the depthwise result of the step (fastops::dwconv_bn_act's
// CPU kernel, no affine, no activation; at most kStepBytes, at least one image) stays in the
// cache while the pointwise conv with its epilogue (pwconv_bn_act's tiled GEMM + affine +
// activation) reads it and writes the step's output. The whole depthwise result is never
// written to memory; each step runs on all cores.
// Backward: the depthwise result is recomputed, then pwconv_bn_act_backward and
// dwconv_bn_act_backward (their CPU kernels) chain the gradients.
#include <ATen/ops/empty.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../separable.h"
#include "kernels.h"

namespace fastops {
namespace cpu {
namespace {

using OptT = c10::optional<at::Tensor>;

// The depthwise result of one step of images: enough pixels for the pointwise GEMM's tiles to
// run at full speed, small enough to stay in the last-level cache until the GEMM reads it.
constexpr int64_t kStepBytes = 4 << 20;

at::Tensor dwconv(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::dwconv_bn_act", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&,
                                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view)>();
  return op.call(x, w, c10::nullopt, c10::nullopt, stride, padding, dilation, "none");
}

at::Tensor separable_conv_bn_act(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
                                 const OptT& scale, const OptT& shift, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view act) {
  const char* op = "separable_conv_bn_act";
  const SeparableShape s = check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation);
  const Act a = parse_act(op, act);
  const bool cl = output_channels_last(x);
  at::Tensor y = at::empty({s.dw.N, s.OC, s.dw.OH, s.dw.OW}, x.options(),
                           cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  // images per step: their depthwise result within kStepBytes (at least one image)
  const int64_t image_bytes = s.dw.OC * s.dw.OH * s.dw.OW * int64_t(x.element_size());
  const int64_t step = std::clamp<int64_t>(kStepBytes / std::max<int64_t>(image_bytes, 1), 1, s.dw.N);
  for (int64_t n = 0; n < s.dw.N; n += step) {
    const int64_t count = std::min(step, s.dw.N - n);
    const at::Tensor d = dwconv(x.narrow(0, n, count), dw_weight, stride, padding, dilation);
    at::Tensor yn = y.narrow(0, n, count);
    const PwShape pw{count, s.dw.OC, s.dw.OH, s.dw.OW, s.OC, 1, 1};
    pwconv_forward_into(d, pw_weight, scale, shift, pw, a, c10::nullopt, yn);
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> separable_conv_bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
    const OptT& scale, const OptT& shift, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view act) {
  const char* op = "separable_conv_bn_act_backward";
  const SeparableShape s = check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation);
  parse_act(op, act);
  check_same_kind(op, "grad_out", grad_out, "x", x);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == s.dw.N && grad_out.size(1) == s.OC &&
                        grad_out.size(2) == s.dw.OH && grad_out.size(3) == s.dw.OW,
                    "fastops.", op, ": argument 'grad_out' must have shape [", s.dw.N, ", ", s.OC, ", ", s.dw.OH,
                    ", ", s.dw.OW, "], got ", grad_out.sizes());
  static const auto pw_bwd =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastops::pwconv_bn_act_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, int64_t,
              c10::string_view, const OptT&, int64_t)>();
  static const auto dw_bwd =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastops::dwconv_bn_act_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, at::IntArrayRef,
              at::IntArrayRef, at::IntArrayRef, c10::string_view)>();
  const at::Tensor d = dwconv(x, dw_weight, stride, padding, dilation);
  const auto [gd, gpw, gs, gb, unused] = pw_bwd.call(grad_out, d, pw_weight, scale, shift, 1, act, c10::nullopt, 1);
  const auto [gx, gdw, unused_s, unused_b] =
      dw_bwd.call(gd, x, dw_weight, c10::nullopt, c10::nullopt, stride, padding, dilation, "none");
  return {gx, gdw, gpw, gs, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("separable_conv_bn_act", &separable_conv_bn_act);
  m.impl("separable_conv_bn_act_backward", &separable_conv_bn_act_backward);
}

}  // namespace cpu
}  // namespace fastops
