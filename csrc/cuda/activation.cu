// CUDA kernels of fastops::hardswish, hardsigmoid, their backward ops and in-place forms:
// float32, float16, bfloat16 (float math) and float64. The formulas are csrc/activation.h, the
// same the CPU kernels run; the launch plumbing is pointwise.cuh, the layout rule pointwise.h.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../activation.h"
#include "../pointwise.h"
#include "pointwise.cuh"

namespace fastops {
namespace cuda {
namespace {

struct Hardswish {
  static constexpr const char* name = "hardswish";
  static constexpr const char* backward_name = "hardswish_backward";
  struct Fwd {
    template <typename A> __device__ A operator()(A x) const { return hardswish_fwd(x); }
  };
  struct Bwd {
    template <typename A> __device__ A operator()(A g, A x) const { return hardswish_bwd(g, x); }
  };
};

struct Hardsigmoid {
  static constexpr const char* name = "hardsigmoid";
  static constexpr const char* backward_name = "hardsigmoid_backward";
  struct Fwd {
    template <typename A> __device__ A operator()(A x) const { return hardsigmoid_fwd(x); }
  };
  struct Bwd {
    template <typename A> __device__ A operator()(A g, A x) const { return hardsigmoid_bwd(g, x); }
  };
};

template <typename Act>
void forward_flat(const at::Tensor& x, const at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), Act::name, [&] {
    launch_unary<scalar_t>(x, y, typename Act::Fwd{});
  });
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
  return binary_pointwise(
      grad_out, x, [](const at::Tensor& g, const at::Tensor& in, const at::Tensor& out) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(),
                                        Act::backward_name, [&] {
                                          launch_binary<scalar_t>(g, in, out, typename Act::Bwd{});
                                        });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("hardswish", &forward<Hardswish>);
  m.impl("hardswish_backward", &backward<Hardswish>);
  m.impl("hardswish_", &forward_<Hardswish>);
  m.impl("hardsigmoid", &forward<Hardsigmoid>);
  m.impl("hardsigmoid_backward", &backward<Hardsigmoid>);
  m.impl("hardsigmoid_", &forward_<Hardsigmoid>);
}

}  // namespace cuda
}  // namespace fastops
