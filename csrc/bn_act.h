// fastops::bn_act_train: training-mode BatchNorm (batch statistics) + activation. Argument checks
// and the shape of the computation, shared by the CPU and CUDA kernels (host code only);
// fastops/_checks.py applies the same rules in Python.
//
//   mean[c] = sum_{n,h,w} x / M,  var[c] = sum_{n,h,w} (x - mean)^2 / M,   M = N*H*W
//   xhat = (x - mean) * rsqrt(var + eps),  u = xhat * weight[c] + bias[c],  y = act(u)
// backward, with gu = act'(u) * grad_out:
//   grad_bias = sum gu,  grad_weight = sum gu * xhat,
//   grad_x = weight * rsqrt(var + eps) * (gu - grad_bias / M - xhat * grad_weight / M)
// mean / var are float32 (float64 for a float64 x); y and grad_x have x's dtype, and the layout
// of output_channels_last(x).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "dwconv.h"

namespace fastops {

struct BnShape {
  int64_t N, C, HW;  // M = N * HW values per channel
  int64_t M() const { return N * HW; }
};

inline at::ScalarType bn_stat_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline BnShape check_bn_act(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastops.", op,
                   ": argument 'x' must be a floating-point tensor (float32, float64, float16 or "
                   "bfloat16), got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4, "fastops.", op, ": argument 'x' must be 4-D [N, C, H, W], got ",
                    x.dim(), "-D shape ", x.sizes());
  BnShape s{x.size(0), x.size(1), x.size(2) * x.size(3)};
  TORCH_CHECK_VALUE(s.C > 0, "fastops.", op, ": argument 'x' has no channels");
  TORCH_CHECK_VALUE(s.M() > 1, "fastops.", op, ": argument 'x' has ", s.M(),
                    " value per channel; batch statistics need more than 1 (shape ", x.sizes(), ")");
  TORCH_CHECK_VALUE(eps >= 0, "fastops.", op, ": argument 'eps' must be >= 0, got ", eps);
  check_param_vector(op, "weight", weight, x, s.C);
  check_param_vector(op, "bias", bias, x, s.C);
  return s;
}

inline void check_bn_act_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& mean, const at::Tensor& var, const BnShape& s) {
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "fastops.", op, ": argument 'grad_out' has shape ",
                    grad_out.sizes(), " but 'x' has shape ", x.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), "fastops.", op,
                   ": argument 'grad_out' has dtype ", grad_out.scalar_type(), " but 'x' has dtype ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), "fastops.", op, ": argument 'grad_out' is on ",
                    grad_out.device(), " but 'x' is on ", x.device());
  check_param_vector(op, "mean", mean, x, s.C);
  check_param_vector(op, "var", var, x, s.C);
}

}  // namespace fastops
