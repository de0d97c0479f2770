// CUDA kernels that other CUDA ops reuse (declared here, defined in their family's file).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "../pwconv.h"

namespace fastops {
namespace cuda {

// pwconv_bn_act's forward / backward with the output layout given (cl), `s` the shape
// check_pwconv returned (csrc/cuda/pwconv.cu); the backward skips grad_residual unless asked.
at::Tensor pwconv_forward(const char* op, const PwShape& s, const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, Act act,
                          const c10::optional<at::Tensor>& residual, bool cl);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pwconv_backward(
    const char* op, const PwShape& s, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, Act act,
    const c10::optional<at::Tensor>& residual, bool cl, bool want_grad_residual);

}  // namespace cuda
}  // namespace fastops
