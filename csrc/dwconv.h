// fastops::dwconv_bn_act: argument checks, shape arithmetic and layout rule, shared by the CPU and
// CUDA kernels (host code only). fastops/ops.py's fake impl applies the same rules in Python.
//
//   z[n, oc, oh, ow] = sum_{kh, kw} x[n, oc / m, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * w[oc, 0, kh, kw]
//   y = act(z * scale[oc] + shift[oc])          (scale = 1, shift = 0 where not given)
//
// x: [N, C, H, W]; weight: [C*m, 1, KH, KW] (channel multiplier m >= 1); scale, shift: [C*m];
// zero padding. The output keeps x's memory format (output_channels_last below).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <string_view>

#include "activation.h"

namespace fastops {

struct DwConvShape {
  int64_t N, C, H, W;     // input
  int64_t OC, mult;       // output channels = C * mult
  int64_t KH, KW;         // kernel
  int64_t SH, SW, PH, PW, DH, DW;
  int64_t OH, OW;         // output
};

inline Act parse_act(const char* op, std::string_view act, const char* arg = "act") {
  if (act == "none") return Act::None;
  if (act == "relu") return Act::ReLU;
  if (act == "relu6") return Act::ReLU6;
  if (act == "hardswish") return Act::Hardswish;
  if (act == "hardsigmoid") return Act::Hardsigmoid;
  if (act == "sigmoid") return Act::Sigmoid;
  if (act == "silu") return Act::SiLU;
  TORCH_CHECK_VALUE(false, "fastops.", op, ": argument '", arg, "' must be one of none, relu, relu6, hardswish, ",
                    "hardsigmoid, sigmoid, silu; got '", act, "'");
}

// The output (and grad_input) layout: channels_last when x is, else contiguous NCHW. A
// non-contiguous x counts as channels_last when its channel stride is smaller than the stride of
// its innermost spatial dimension with more than one element (the width; the height when the
// width is 1, whose stride is arbitrary then; the width again for a 1x1 map).
inline bool output_channels_last(const at::Tensor& x) {
  if (x.is_contiguous()) return false;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return true;
  const int64_t inner = x.size(3) == 1 && x.size(2) != 1 ? 2 : 3;
  return x.stride(1) < x.stride(inner);
}

inline void check_param_vector(const char* op, const char* arg, const c10::optional<at::Tensor>& t,
                               const at::Tensor& x, int64_t OC) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), "fastops.", op, ": argument '", arg,
                   "' must be a floating-point tensor, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == OC, "fastops.", op, ": argument '", arg,
                    "' must have shape [", OC, "] (one value per output channel), got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == x.device(), "fastops.", op, ": argument '", arg, "' is on ",
                    t->device(), " but 'x' is on ", x.device());
}

inline DwConvShape check_dwconv(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& scale,
                                const c10::optional<at::Tensor>& shift, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                const char* weight_arg = "weight") {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastops.", op,
                   ": argument 'x' must be a floating-point tensor (float32, float64, float16 or "
                   "bfloat16), got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4, "fastops.", op, ": argument 'x' must be 4-D [N, C, H, W], got ",
                    x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1, "fastops.", op,
                    ": argument '", weight_arg, "' must have shape [C*m, 1, kh, kw], got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "fastops.", op,
                   ": argument '", weight_arg, "' has dtype ", weight.scalar_type(), " but 'x' has dtype ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), "fastops.", op, ": argument '", weight_arg, "' is on ",
                    weight.device(), " but 'x' is on ", x.device());
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "fastops.",
                    op, ": 'stride', 'padding' and 'dilation' must each have 2 values");
  DwConvShape s;
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  s.OC = weight.size(0), s.KH = weight.size(2), s.KW = weight.size(3);
  TORCH_CHECK_VALUE(s.C > 0 && s.OC % s.C == 0, "fastops.", op, ": argument '", weight_arg, "' has ", s.OC,
                    " output channels, which is not a multiple of the ", s.C, " channels of 'x'");
  s.mult = s.OC / s.C;
  TORCH_CHECK_VALUE(s.KH > 0 && s.KW > 0, "fastops.", op, ": argument '", weight_arg, "' has an empty kernel ",
                    weight.sizes());
  s.SH = stride[0], s.SW = stride[1], s.PH = padding[0], s.PW = padding[1];
  s.DH = dilation[0], s.DW = dilation[1];
  TORCH_CHECK_VALUE(s.SH >= 1 && s.SW >= 1, "fastops.", op, ": argument 'stride' must be >= 1, got ",
                    stride);
  TORCH_CHECK_VALUE(s.PH >= 0 && s.PW >= 0, "fastops.", op,
                    ": argument 'padding' must be >= 0, got ", padding);
  TORCH_CHECK_VALUE(s.DH >= 1 && s.DW >= 1, "fastops.", op,
                    ": argument 'dilation' must be >= 1, got ", dilation);
  const int64_t eff_h = s.DH * (s.KH - 1) + 1, eff_w = s.DW * (s.KW - 1) + 1;
  TORCH_CHECK_VALUE(s.H + 2 * s.PH >= eff_h && s.W + 2 * s.PW >= eff_w, "fastops.", op,
                    ": the kernel (", s.KH, "x", s.KW, ", dilation ", dilation,
                    ") is larger than the padded input (", s.H + 2 * s.PH, "x", s.W + 2 * s.PW, ")");
  s.OH = (s.H + 2 * s.PH - eff_h) / s.SH + 1;
  s.OW = (s.W + 2 * s.PW - eff_w) / s.SW + 1;
  check_param_vector(op, "scale", scale, x, s.OC);
  check_param_vector(op, "shift", shift, x, s.OC);
  return s;
}

}  // namespace fastops
