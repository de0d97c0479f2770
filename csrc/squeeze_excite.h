// fastops::squeeze_excite: argument checks and the shape of the computation, shared by the CPU
// and CUDA kernels; fastops/_checks.py applies the same rules in Python.
//
//   p[n, c] = mean_{h,w} x[n, c]                       (float32; float64 for float64 x)
//   h = act(p @ w1^T + b1)        [N, S]     w1: [S, C] or [S, C, 1, 1] (a 1x1 conv's weight)
//   s = gate(h @ w2^T + b2)       [N, C]     w2: [C, S] or [C, S, 1, 1]
//   y = x * s[:, :, None, None]
// backward (g = grad_out):
//   gs[n, c] = sum_{h,w} g * x;   gt = gate'(t) * gs  (t = h @ w2^T + b2);  grad_b2 = sum_n gt;
//   grad_w2 = gt^T @ h;  gh = gt @ w2;  gz = act'(z) * gh  (z = p @ w1^T + b1);  grad_b1 = sum_n gz;
//   grad_w1 = gz^T @ p;  gp = gz @ w1;  grad_x = g * s + gp / (H*W)
// Two passes over x each way: one read to pool (forward) or to sum g*x (backward), one
// read + write to scale. y / grad_x have the layout of output_channels_last(x).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "dwconv.h"     // check_param_vector, parse_act, output_channels_last
#include "pointwise.h"  // check_nchw, check_same_kind

namespace fastops {

struct SEShape {
  int64_t N, C, HW, S;  // S: squeeze channels
};

// A fully connected weight given as [rows, cols] or as a 1x1 conv's [rows, cols, 1, 1].
inline void check_fc_weight(const char* op, const char* arg, const at::Tensor& w, const at::Tensor& x,
                            int64_t rows, int64_t cols) {
  check_same_kind(op, arg, w, "x", x);
  const bool ok = (w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) &&
                  (rows < 0 || w.size(0) == rows) && w.size(1) == cols;
  TORCH_CHECK_VALUE(ok, "fastops.", op, ": argument '", arg, "' must have shape [",
                    rows < 0 ? std::string("S") : std::to_string(rows), ", ", cols, "] or [",
                    rows < 0 ? std::string("S") : std::to_string(rows), ", ", cols,
                    ", 1, 1], got ", w.sizes());
}

inline SEShape check_squeeze_excite(const char* op, const at::Tensor& x, const at::Tensor& w1,
                                    const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                    const c10::optional<at::Tensor>& b2) {
  check_nchw(op, "x", x);
  SEShape s{x.size(0), x.size(1), x.size(2) * x.size(3), 0};
  TORCH_CHECK_VALUE(s.C > 0, "fastops.", op, ": argument 'x' has no channels");
  TORCH_CHECK_VALUE(s.HW > 0, "fastops.", op, ": argument 'x' has an empty plane (shape ", x.sizes(),
                    "); the mean over H, W is undefined");
  check_fc_weight(op, "w1", w1, x, -1, s.C);
  s.S = w1.size(0);
  TORCH_CHECK_VALUE(s.S > 0, "fastops.", op, ": argument 'w1' has no squeeze channels");
  check_fc_weight(op, "w2", w2, x, s.C, s.S);
  check_param_vector(op, "b1", b1, x, s.S);
  check_param_vector(op, "b2", b2, x, s.C);
  return s;
}

}  // namespace fastops
