// CPU kernels that other CPU ops reuse (declared here, defined in their family's file).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "../pwconv.h"

namespace fastops {
namespace cpu {

// pwconv_bn_act's forward into y ([N, OC, H, W], dense in the layout of output_channels_last(x)),
// the arguments already checked (csrc/cpu/pwconv.cpp).
void pwconv_forward_into(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, const PwShape& s, Act act,
                         const c10::optional<at::Tensor>& residual, at::Tensor& y);

}  // namespace cpu
}  // namespace fastops
