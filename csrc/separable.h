// fastops::separable_conv_bn_act: argument checks, shared by the CPU and CUDA kernels;
// fastops/_checks.py applies the same rules in Python.
//
//   d = dwconv(x, dw_weight, stride, padding, dilation)     [N, C*m, OH, OW]  (csrc/dwconv.h)
//   y = act(pw(d) * scale[o] + shift[o])                    pw_weight: [OC, C*m, 1, 1]
// The depthwise result d is computed a tile at a time and consumed while it is in cache; it is
// never written out whole. Backward recomputes it. y has the layout of output_channels_last(x).
#pragma once

#include "dwconv.h"
#include "pointwise.h"

namespace fastops {

struct SeparableShape {
  DwConvShape dw;
  int64_t OC;  // pointwise outputs
};

inline SeparableShape check_separable(const char* op, const at::Tensor& x, const at::Tensor& dw_weight,
                                      const at::Tensor& pw_weight, const c10::optional<at::Tensor>& scale,
                                      const c10::optional<at::Tensor>& shift, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  SeparableShape s;
  s.dw = check_dwconv(op, x, dw_weight, c10::nullopt, c10::nullopt, stride, padding, dilation, "dw_weight");
  check_same_kind(op, "pw_weight", pw_weight, "x", x);
  TORCH_CHECK_VALUE(pw_weight.dim() == 4 && pw_weight.size(1) == s.dw.OC && pw_weight.size(2) == 1 &&
                        pw_weight.size(3) == 1 && pw_weight.size(0) > 0,
                    "fastops.", op, ": argument 'pw_weight' must have shape [OC, ", s.dw.OC,
                    ", 1, 1] (a 1x1 conv over the depthwise conv's ", s.dw.OC, " channels), got ",
                    pw_weight.sizes());
  s.OC = pw_weight.size(0);
  check_param_vector(op, "scale", scale, x, s.OC);
  check_param_vector(op, "shift", shift, x, s.OC);
  return s;
}

}  // namespace fastops
