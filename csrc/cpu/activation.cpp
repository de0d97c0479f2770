// CPU kernels of fastops::hardswish, hardsigmoid, their backward ops and in-place forms.
//
// float32 and bfloat16 run through explicit 16-lane SIMD loops, multi-versioned for AVX-512 / AVX2
// / baseline (simd.h); float64 and float16 through a generic loop with the same formulas
// (csrc/activation.h). All of them split the tensor across threads with at::parallel_for. The
// layout rule (any strides in, the input's memory format out) lives in csrc/pointwise.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../activation.h"
#include "../pointwise.h"
#include "simd.h"

namespace fastops {
namespace cpu {

// One set of flat loops per activation, forward and backward, float32 and bfloat16 (raw bits);
// the formulas run on 16 lanes at a time (simd.h).
#define FASTOPS_ACTIVATION_LOOPS(NAME)                                                           \
  struct NAME##_fwd_fn {                                                                          \
    template <typename T> FASTOPS_CPU_INLINE T operator()(T x) const { return NAME##_fwd(x); }   \
  };                                                                                              \
  struct NAME##_bwd_fn {                                                                          \
    template <typename T> FASTOPS_CPU_INLINE T operator()(T g, T x) const {                      \
      return NAME##_bwd(g, x);                                                                    \
    }                                                                                             \
  };                                                                                              \
  FASTOPS_CPU_MULTIVERSION void NAME##_fwd_f32(const float* x, float* y, int64_t n) {            \
    map1(x, y, n, NAME##_fwd_fn{});                                                               \
  }                                                                                               \
  FASTOPS_CPU_MULTIVERSION void NAME##_fwd_bf16(const uint16_t* x, uint16_t* y, int64_t n) {      \
    map1(x, y, n, NAME##_fwd_fn{});                                                               \
  }                                                                                               \
  FASTOPS_CPU_MULTIVERSION void NAME##_bwd_f32(const float* g, const float* x, float* y,         \
                                               int64_t n) {                                       \
    map2(g, x, y, n, NAME##_bwd_fn{});                                                            \
  }                                                                                               \
  FASTOPS_CPU_MULTIVERSION void NAME##_bwd_bf16(const uint16_t* g, const uint16_t* x,            \
                                                uint16_t* y, int64_t n) {                         \
    map2(g, x, y, n, NAME##_bwd_fn{});                                                            \
  }

FASTOPS_ACTIVATION_LOOPS(hardswish)
FASTOPS_ACTIVATION_LOOPS(hardsigmoid)
#undef FASTOPS_ACTIVATION_LOOPS

namespace {

using UnaryF32 = void (*)(const float*, float*, int64_t);
using UnaryBF16 = void (*)(const uint16_t*, uint16_t*, int64_t);
using BinaryF32 = void (*)(const float*, const float*, float*, int64_t);
using BinaryBF16 = void (*)(const uint16_t*, const uint16_t*, uint16_t*, int64_t);

// What the generic template code needs to know about one activation.
struct Hardswish {
  static constexpr const char* name = "hardswish";
  static constexpr const char* backward_name = "hardswish_backward";
  static constexpr UnaryF32 fwd_f32 = hardswish_fwd_f32;
  static constexpr UnaryBF16 fwd_bf16 = hardswish_fwd_bf16;
  static constexpr BinaryF32 bwd_f32 = hardswish_bwd_f32;
  static constexpr BinaryBF16 bwd_bf16 = hardswish_bwd_bf16;
  template <typename T> static T fwd(T x) { return hardswish_fwd(x); }
  template <typename T> static T bwd(T g, T x) { return hardswish_bwd(g, x); }
};

struct Hardsigmoid {
  static constexpr const char* name = "hardsigmoid";
  static constexpr const char* backward_name = "hardsigmoid_backward";
  static constexpr UnaryF32 fwd_f32 = hardsigmoid_fwd_f32;
  static constexpr UnaryBF16 fwd_bf16 = hardsigmoid_fwd_bf16;
  static constexpr BinaryF32 bwd_f32 = hardsigmoid_bwd_f32;
  static constexpr BinaryBF16 bwd_bf16 = hardsigmoid_bwd_bf16;
  template <typename T> static T fwd(T x) { return hardsigmoid_fwd(x); }
  template <typename T> static T bwd(T g, T x) { return hardsigmoid_bwd(g, x); }
};

template <typename T, typename U>
U* bits(T* p) {
  return reinterpret_cast<U*>(p);
}

// y = Act(x) over flat operands (see pointwise.h); `y` may be `x`.
template <typename Act>
void forward_flat(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = y.numel();
  switch (x.scalar_type()) {
    case at::kFloat: {
      const float* xp = x.const_data_ptr<float>();
      float* yp = y.mutable_data_ptr<float>();
      at::parallel_for(0, n, kPointwiseGrain,
                       [&](int64_t b, int64_t e) { Act::fwd_f32(xp + b, yp + b, e - b); });
      return;
    }
    case at::kBFloat16: {
      const uint16_t* xp = bits<const at::BFloat16, const uint16_t>(x.const_data_ptr<at::BFloat16>());
      uint16_t* yp = bits<at::BFloat16, uint16_t>(y.mutable_data_ptr<at::BFloat16>());
      at::parallel_for(0, n, kPointwiseGrain,
                       [&](int64_t b, int64_t e) { Act::fwd_bf16(xp + b, yp + b, e - b); });
      return;
    }
    default:
      AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, x.scalar_type(), Act::name, [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, n, kPointwiseGrain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) yp[i] = scalar_t(Act::fwd(acc_t(xp[i])));
        });
      });
  }
}

// dx = Act'(x) * g over flat operands.
template <typename Act>
void backward_flat(const at::Tensor& g, const at::Tensor& x, const at::Tensor& dx) {
  const int64_t n = dx.numel();
  switch (x.scalar_type()) {
    case at::kFloat: {
      const float* gp = g.const_data_ptr<float>();
      const float* xp = x.const_data_ptr<float>();
      float* dp = dx.mutable_data_ptr<float>();
      at::parallel_for(0, n, kPointwiseGrain,
                       [&](int64_t b, int64_t e) { Act::bwd_f32(gp + b, xp + b, dp + b, e - b); });
      return;
    }
    case at::kBFloat16: {
      const uint16_t* gp = bits<const at::BFloat16, const uint16_t>(g.const_data_ptr<at::BFloat16>());
      const uint16_t* xp = bits<const at::BFloat16, const uint16_t>(x.const_data_ptr<at::BFloat16>());
      uint16_t* dp = bits<at::BFloat16, uint16_t>(dx.mutable_data_ptr<at::BFloat16>());
      at::parallel_for(0, n, kPointwiseGrain, [&](int64_t b, int64_t e) {
        Act::bwd_bf16(gp + b, xp + b, dp + b, e - b);
      });
      return;
    }
    default:
      AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, x.scalar_type(), Act::backward_name, [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* gp = g.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, n, kPointwiseGrain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) dp[i] = scalar_t(Act::bwd(acc_t(gp[i]), acc_t(xp[i])));
        });
      });
  }
}

template <typename Act>
at::Tensor forward(const at::Tensor& x) {
  check_floating(Act::name, "x", x);
  return unary_pointwise(x, [](const at::Tensor& in, const at::Tensor& out) {
    forward_flat<Act>(in, out);
  });
}

template <typename Act>
void forward_(at::Tensor& x) {
  check_floating(Act::name, "x", x);
  unary_pointwise_(Act::name, x, [](const at::Tensor& in, const at::Tensor& out) {
    forward_flat<Act>(in, out);
  });
}

template <typename Act>
at::Tensor backward(const at::Tensor& grad_out, const at::Tensor& x) {
  check_floating(Act::backward_name, "x", x);
  check_like(Act::backward_name, "grad_out", grad_out, "x", x);
  return binary_pointwise(grad_out, x,
                          [](const at::Tensor& g, const at::Tensor& in, const at::Tensor& out) {
                            backward_flat<Act>(g, in, out);
                          });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("hardswish", &forward<Hardswish>);
  m.impl("hardswish_backward", &backward<Hardswish>);
  m.impl("hardswish_", &forward_<Hardswish>);
  m.impl("hardsigmoid", &forward<Hardsigmoid>);
  m.impl("hardsigmoid_backward", &backward<Hardsigmoid>);
  m.impl("hardsigmoid_", &forward_<Hardsigmoid>);
}

}  // namespace cpu
}  // namespace fastops
