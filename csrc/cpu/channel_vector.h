// A per-channel vector argument (a scale or shift, BatchNorm's weight, bias or statistics) as
// double values, read by the CPU kernels of dwconv_bn_act and bn_act_train.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fastops {
namespace cpu {

// t's C values (any stride), dflt each where t is not given. Read in place when t is a float or
// double CPU tensor (the usual case: a conversion through ATen is one more op a call, which
// costs more than the kernel on small maps), else converted first.
inline std::vector<double> channel_vector(const c10::optional<at::Tensor>& t, int64_t C, double dflt) {
  std::vector<double> v(C, dflt);
  if (!(t.has_value() && t->defined())) return v;
  const bool direct = t->device().is_cpu() && (t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble);
  const at::Tensor d = direct ? *t : t->to(at::kDouble);
  const int64_t step = d.stride(0);
  if (d.scalar_type() == at::kFloat) {
    const float* p = d.const_data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) v[c] = p[c * step];
  } else {
    const double* p = d.const_data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) v[c] = p[c * step];
  }
  return v;
}

}  // namespace cpu
}  // namespace fastops
