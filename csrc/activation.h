// Activation math shared by the CPU and CUDA kernels.
//
// Every function here is the single definition of a formula: the CPU kernels (compiled by the
// host compiler) and the CUDA kernels (compiled by nvcc) both include this header, so the CPU
// tests exercise exactly the arithmetic the GPU runs. `T` is the compute type (float for
// float/half/bfloat16 storage, double for double).
//
// The formulas follow PyTorch's own kernels bit for bit where that matters:
//   hardswish(x)          = x * clamp(x + 3, 0, 6) / 6
//   hardsigmoid(x)        = clamp(x + 3, 0, 6) / 6
//   d hardswish / dx      = 0 for x <= -3, 1 for x >= 3, x / 3 + 1/2 otherwise (so NaN -> NaN,
//                           as PyTorch's vectorised kernels give)
//   d hardsigmoid / dx    = 1/6 for -3 < x < 3, 0 otherwise (NaN -> 0); the gradient is
//                           multiplied by the rounded 1/6 as PyTorch does, the forward divides by 6
// NaN propagates through the forward functions (comparisons with NaN are false, so the clamps
// below pass it through).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTOPS_HD __host__ __device__ __forceinline__
#else
#define FASTOPS_HD inline
#endif

namespace fastops {

// clamp(x + 3, 0, 6), NaN-propagating.
template <typename T>
FASTOPS_HD T relu6_shift3(T x) {
  T t = x + T(3);
  t = t < T(0) ? T(0) : t;
  t = t > T(6) ? T(6) : t;
  return t;
}

template <typename T>
FASTOPS_HD T hardsigmoid_fwd(T x) {
  return relu6_shift3(x) / T(6);
}

template <typename T>
FASTOPS_HD T hardswish_fwd(T x) {
  return x * relu6_shift3(x) / T(6);
}

template <typename T>
FASTOPS_HD T hardswish_bwd(T grad, T x) {
  if (x <= T(-3)) return T(0);
  if (x >= T(3)) return grad;
  return grad * (x / T(3) + T(0.5));
}

template <typename T>
FASTOPS_HD T hardsigmoid_bwd(T grad, T x) {
  return (x > T(-3) && x < T(3)) ? grad * (T(1) / T(6)) : T(0);
}

}  // namespace fastops
