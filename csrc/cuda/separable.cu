// CUDA implementation of fastops::separable_conv_bn_act and
// fastops::separable_conv_bn_act_backward: float32, float16, bfloat16 (float math) and float64,
// NCHW and channels_last. Argument checks are csrc/separable.h.
//
//   d = dwconv(x, dw_weight, stride, padding, dilation)    [N, C*m, OH, OW]
//   y = act(pw(d) * scale + shift)
//
// On CUDA the depthwise result d IS materialised: it is written to a temporary in y's layout by the
// CUDA depthwise kernel (fastops::dwconv_bn_act with no affine and act "none", called through the
// dispatcher), then the pointwise path of csrc/cuda/pwconv.cu (a cuBLAS GEMM and one fused
// epilogue kernel) reads it. The in-cache fusion that never writes d out is the CPU kernel's
// (csrc/cpu/separable.cpp); a GPU version of it would fuse the depthwise tile into the GEMM's
// operand load.
// Backward: d is recomputed the same way; pwconv's backward (gu, the per-channel sums,
// grad_pw_weight and the gradient of d, without the unneeded grad_residual) then
// fastops::dwconv_bn_act_backward on that gradient (grad_x, grad_dw_weight).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string_view>
#include <tuple>

#include "../activation.h"
#include "../dwconv.h"  // parse_act, output_channels_last
#include "../pwconv.h"  // PwShape
#include "../separable.h"
#include "kernels.h"  // pwconv_forward, pwconv_backward

namespace fastops {
namespace cuda {

namespace {

// The C++ signatures of the depthwise ops (those of their kernels, csrc/cuda/dwconv.cu).
using DwFwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            const c10::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, std::string_view);
using DwBwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
    std::string_view);

const c10::TypedOperatorHandle<DwFwdSig>& dwconv_op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("fastops::dwconv_bn_act", "")
                                 .typed<DwFwdSig>();
  return handle;
}

const c10::TypedOperatorHandle<DwBwdSig>& dwconv_backward_op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("fastops::dwconv_bn_act_backward", "")
                                 .typed<DwBwdSig>();
  return handle;
}

// The pointwise stage's shape: a 1x1 conv over the depthwise output, one group, no shuffle.
PwShape pointwise_shape(const SeparableShape& s) {
  return PwShape{s.dw.N, s.dw.OC, s.dw.OH, s.dw.OW, s.OC, /*groups=*/1, /*shuffle=*/1};
}

at::Tensor separable_conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& dw_weight,
                                      const at::Tensor& pw_weight,
                                      const c10::optional<at::Tensor>& scale,
                                      const c10::optional<at::Tensor>& shift,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, std::string_view act_name) {
  constexpr const char* op = "separable_conv_bn_act";
  const SeparableShape s =
      check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation);
  const Act act = parse_act(op, act_name);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor d =
      dwconv_op().call(x, dw_weight, c10::nullopt, c10::nullopt, stride, padding, dilation, "none");
  return pwconv_forward(op, pointwise_shape(s), d, pw_weight, scale, shift, act, c10::nullopt,
                        output_channels_last(x));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
separable_conv_bn_act_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                    const at::Tensor& dw_weight, const at::Tensor& pw_weight,
                                    const c10::optional<at::Tensor>& scale,
                                    const c10::optional<at::Tensor>& shift, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    std::string_view act_name) {
  constexpr const char* op = "separable_conv_bn_act_backward";
  const SeparableShape s =
      check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation);
  const Act act = parse_act(op, act_name);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor d =  // recomputed
      dwconv_op().call(x, dw_weight, c10::nullopt, c10::nullopt, stride, padding, dilation, "none");
  // pwconv_backward checks grad_out against the output's shape, dtype and device.
  auto [grad_d, grad_pw, grad_scale, grad_shift, unused] =
      pwconv_backward(op, pointwise_shape(s), grad_out, d, pw_weight, scale, shift, act,
                      c10::nullopt, output_channels_last(x), /*want_grad_residual=*/false);
  auto dw_grads = dwconv_backward_op().call(grad_d, x, dw_weight, c10::nullopt, c10::nullopt,
                                            stride, padding, dilation, "none");
  return std::make_tuple(std::get<0>(dw_grads), std::get<1>(dw_grads), grad_pw, grad_scale,
                         grad_shift);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("separable_conv_bn_act", &separable_conv_bn_act_cuda);
  m.impl("separable_conv_bn_act_backward", &separable_conv_bn_act_backward_cuda);
}

}  // namespace cuda
}  // namespace fastops
