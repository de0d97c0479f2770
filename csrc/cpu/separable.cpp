// CPU kernels of fastops::separable_conv_bn_act and its backward (csrc/separable.h).
//
// Forward, channels_last float32 with an odd square kernel, padding k // 2, unit dilation and
// multiplier 1 (Xception's and MobileNet V1's convs): the inverted-residual engine
// (block_forward_f32, csrc/cpu/inverted_residual.cpp) without its expansion, each thread taking
// a band of output rows: the band's depthwise rows into an L2-sized buffer, then sgemm + the
// affine and activation into y. Against the step-wise path below (N=8, inputs from memory,
// interleaved): 128 -> 128 at 56x56 1.3x, the others within a few percent.
// Otherwise a few images at a time: the depthwise result of the step (fastops::dwconv_bn_act's
// CPU kernel, no affine, no activation; at most kStepBytes, at least one image) stays in the
// cache while the pointwise conv with its epilogue (pwconv_bn_act's tiled GEMM + affine +
// activation) reads it and writes the step's output. The whole depthwise result is never
// written to memory; each step runs on all cores.
// Backward: the depthwise result is recomputed, then pwconv_bn_act_backward and
// dwconv_bn_act_backward (their CPU kernels) chain the gradients.
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

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

// The shapes the inverted-residual engine takes (its depthwise step pads k // 2 on every side).
bool by_bands(const at::Tensor& x, const SeparableShape& s) {
  const DwConvShape& d = s.dw;
  return x.scalar_type() == at::kFloat && d.mult == 1 && d.KH == d.KW && d.KH % 2 == 1 && d.PH == d.KH / 2 &&
         d.PW == d.KW / 2 && d.DH == 1 && d.DW == 1 && d.SH == d.SW;
}

// float32 [n] of t, or of `fill` where t is not given.
at::Tensor vec_or(const OptT& t, int64_t n, float fill) {
  if (t.has_value() && t->defined()) return t->to(at::kFloat).contiguous();
  return at::full({n}, fill, at::TensorOptions().dtype(at::kFloat));
}

// y (channels_last, dense) = act(pointwise(depthwise(x)) * scale + shift) by the engine: the
// depthwise step with unit scale, zero shift and no activation; the projection's epilogue is
// the op's affine and activation.
void forward_by_bands(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight, const OptT& scale,
                      const OptT& shift, const SeparableShape& s, Act act, at::Tensor& y) {
  const DwConvShape& d = s.dw;
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const std::vector<float> wt = dwconv_weights_by_tap_f32(dw_weight);  // [K*K][C]
  const std::vector<float> ones(d.C, 1.f), zeros(d.C, 0.f);
  const at::Tensor w3 = pw_weight.to(at::kFloat).contiguous();
  const at::Tensor s3 = vec_or(scale, s.OC, 1.f), b3 = vec_or(shift, s.OC, 0.f);
  BlockArgs a{};
  a.x = xc.const_data_ptr<float>(), a.ldx = d.C, a.N = d.N, a.C = d.C, a.H = d.H, a.W = d.W, a.E = d.C;
  a.O = s.OC, a.K = d.KH, a.S = d.SH;
  a.w2t = wt.data(), a.s2 = ones.data(), a.b2 = zeros.data();
  a.w3 = w3.const_data_ptr<float>(), a.s3 = s3.const_data_ptr<float>(), a.b3 = b3.const_data_ptr<float>();
  a.act1 = Act::None, a.act2 = Act::None, a.act3 = act;
  a.out = BlockOut::Plain;
  a.y = y.mutable_data_ptr<float>();
  block_forward_f32(a);
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
  if (y.numel() == 0) return y;
  if (cl && by_bands(x, s)) {
    forward_by_bands(x, dw_weight, pw_weight, scale, shift, s, a, y);
    return y;
  }
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
