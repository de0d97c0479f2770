// fastops::channel_shuffle and fastops::concat_shuffle: argument checks and the channel map,
// shared by the CPU and CUDA kernels; fastops/_checks.py applies the same rules in Python.
//
//   channel_shuffle(x, G): x.view(N, G, K, H, W).transpose(1, 2).reshape(N, C, H, W), K = C / G:
//       output channel o reads input channel shuffle_source(o, G, K) = (o % G) * K + o / G.
//       Its gradient is channel_shuffle(grad, K) (the inverse permutation).
//   concat_shuffle(a, b) = channel_shuffle(cat([a, b], 1), 2): output channel o reads channel
//       shuffle_source(o, 2, C / 2) of the concatenation (of a when that is < Ca, else of b).
//       concat_shuffle_backward(grad, Ca) = split(channel_shuffle(grad, C / 2), [Ca, C - Ca]).
// Outputs have the layout of output_channels_last(x) (csrc/dwconv.h), x's dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "activation.h"  // FASTOPS_HD
#include "dwconv.h"      // output_channels_last
#include "pointwise.h"   // check_nchw, check_same_kind

namespace fastops {

// The input channel that output channel o of a shuffle with G groups of K channels reads.
FASTOPS_HD int64_t shuffle_source(int64_t o, int64_t G, int64_t K) { return (o % G) * K + o / G; }

inline void check_channel_shuffle(const char* op, const at::Tensor& x, int64_t groups) {
  check_nchw(op, "x", x);
  TORCH_CHECK_VALUE(groups >= 1, "fastops.", op, ": argument 'groups' must be >= 1, got ", groups);
  TORCH_CHECK_VALUE(x.size(1) % groups == 0, "fastops.", op, ": argument 'groups' (", groups,
                    ") does not divide the ", x.size(1), " channels of 'x'");
}

inline void check_concat_shuffle(const char* op, const at::Tensor& a, const at::Tensor& b) {
  check_nchw(op, "a", a);
  check_nchw(op, "b", b);
  check_same_kind(op, "b", b, "a", a);
  TORCH_CHECK_VALUE(a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(3) == b.size(3),
                    "fastops.", op, ": arguments 'a' and 'b' must agree in N, H and W, got shapes ",
                    a.sizes(), " and ", b.sizes());
  TORCH_CHECK_VALUE((a.size(1) + b.size(1)) % 2 == 0, "fastops.", op,
                    ": the channels of 'a' and 'b' together (", a.size(1), " + ", b.size(1),
                    ") must be even to shuffle in 2 groups");
}

inline void check_concat_shuffle_backward(const char* op, const at::Tensor& grad_out, int64_t split) {
  check_nchw(op, "grad_out", grad_out);
  TORCH_CHECK_VALUE(grad_out.size(1) % 2 == 0, "fastops.", op, ": argument 'grad_out' must have an even ",
                    "number of channels, got ", grad_out.size(1));
  TORCH_CHECK_VALUE(split >= 0 && split <= grad_out.size(1), "fastops.", op, ": argument 'split' must be in [0, ",
                    grad_out.size(1), "], got ", split);
}

}  // namespace fastops
