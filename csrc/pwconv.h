// fastops::pwconv_bn_act: argument checks and the shape of the computation, shared by the CPU and
// CUDA kernels; fastops/_checks.py applies the same rules in Python.
//
//   z[n, o] = sum_{c in group(o)} weight[o, c - g(o)*Cg, 0, 0] * x[n, c]   (1x1 conv, `groups`
//             groups: output o belongs to group o / OCg and reads its Cg = C / groups inputs)
//   u = z * scale[o] + shift[o] (+ residual[n, o]),   v = act(u)
//   y = v, or channel_shuffle(v, shuffle_groups) when shuffle_groups > 1: output channel q holds
//       v's channel shuffle_source(q, shuffle_groups, OC / shuffle_groups) (csrc/shuffle.h).
// backward (g = grad_out, unshuffled first): gu = act'(u) * g; grad_shift = sum gu;
// grad_scale = sum gu * z; grad_residual = gu; gz = gu * scale; grad_x = the 1x1 conv's input
// gradient of gz; grad_weight = its weight gradient. z is recomputed, not stored.
// y and the gradients of x / residual have the layout of output_channels_last(x).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <vector>

#include "dwconv.h"     // check_param_vector, output_channels_last, parse_act
#include "pointwise.h"  // check_nchw, check_same_kind
#include "shuffle.h"    // shuffle_source

namespace fastops {

struct PwShape {
  int64_t N, C, H, W, OC, groups, shuffle;
  int64_t Cg() const { return C / groups; }    // inputs per group
  int64_t OCg() const { return OC / groups; }  // outputs per group
};

inline PwShape check_pwconv(const char* op, const at::Tensor& x, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                            int64_t groups, const c10::optional<at::Tensor>& residual, int64_t shuffle_groups) {
  check_nchw(op, "x", x);
  check_same_kind(op, "weight", weight, "x", x);
  PwShape s{x.size(0), x.size(1), x.size(2), x.size(3), 0, groups, shuffle_groups};
  TORCH_CHECK_VALUE(groups >= 1, "fastops.", op, ": argument 'groups' must be >= 1, got ", groups);
  TORCH_CHECK_VALUE(s.C > 0 && s.C % groups == 0, "fastops.", op, ": argument 'groups' (", groups,
                    ") does not divide the ", s.C, " channels of 'x'");
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1 &&
                        weight.size(1) == s.C / groups && weight.size(0) > 0,
                    "fastops.", op, ": argument 'weight' must have shape [OC, ", s.C / groups,
                    ", 1, 1] (a 1x1 conv over ", s.C, " channels in ", groups, " groups), got ",
                    weight.sizes());
  s.OC = weight.size(0);
  TORCH_CHECK_VALUE(s.OC % groups == 0, "fastops.", op, ": argument 'groups' (", groups,
                    ") does not divide the ", s.OC, " output channels of 'weight'");
  check_param_vector(op, "scale", scale, x, s.OC);
  check_param_vector(op, "shift", shift, x, s.OC);
  if (residual.has_value() && residual->defined()) {
    check_same_kind(op, "residual", *residual, "x", x);
    TORCH_CHECK_VALUE(residual->dim() == 4 && residual->size(0) == s.N && residual->size(1) == s.OC &&
                          residual->size(2) == s.H && residual->size(3) == s.W,
                      "fastops.", op, ": argument 'residual' must have shape [", s.N, ", ", s.OC, ", ",
                      s.H, ", ", s.W, "] (the output's), got ", residual->sizes());
  }
  TORCH_CHECK_VALUE(shuffle_groups >= 1, "fastops.", op, ": argument 'shuffle_groups' must be >= 1, got ",
                    shuffle_groups);
  TORCH_CHECK_VALUE(s.OC % shuffle_groups == 0, "fastops.", op, ": argument 'shuffle_groups' (",
                    shuffle_groups, ") does not divide the ", s.OC, " output channels");
  return s;
}

// pwconv_bn_act_backward's grad_residual where the op has no residual: empty (the schema's Tensor
// return cannot be None), so that no backend writes an output-sized tensor nobody reads.
inline at::Tensor no_grad_residual(const at::Tensor& x) { return at::empty({0}, x.options()); }

// grad_out of a backward of the op that check_pwconv described: defined, the output's shape, x's
// kind.
inline void check_pwconv_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                  const PwShape& s) {
  TORCH_CHECK_VALUE(grad_out.defined(), "fastops.", op, ": argument 'grad_out' is an undefined tensor");
  const std::vector<int64_t> out_shape{s.N, s.OC, s.H, s.W};
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(out_shape), "fastops.", op,
                    ": argument 'grad_out' must have shape ", at::IntArrayRef(out_shape), ", got ",
                    grad_out.sizes());
  check_same_kind(op, "grad_out", grad_out, "x", x);
}

}  // namespace fastops
