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
#elif defined(__GNUC__)
#define FASTOPS_HD inline __attribute__((always_inline))  // so SIMD callers inline them (cpu/simd.h)
#else
#define FASTOPS_HD inline
#endif

namespace fastops {

// The scalar type of T's lanes: T itself for float/double; the CPU kernels specialise it for
// their SIMD vector types (csrc/cpu/simd.h), so the formulas below run on 16 lanes at once.
// Constants are written in the lane type and broadcast.
template <typename T>
struct lane {
  using type = T;
};

// clamp(x + 3, 0, 6), NaN-propagating.
template <typename T>
FASTOPS_HD T relu6_shift3(T x) {
  using S = typename lane<T>::type;
  T t = x + S(3);
  t = t < S(0) ? S(0) : t;
  t = t > S(6) ? S(6) : t;
  return t;
}

template <typename T>
FASTOPS_HD T hardsigmoid_fwd(T x) {
  using S = typename lane<T>::type;
  return relu6_shift3(x) / S(6);
}

template <typename T>
FASTOPS_HD T hardswish_fwd(T x) {
  using S = typename lane<T>::type;
  return x * relu6_shift3(x) / S(6);
}

template <typename T>
FASTOPS_HD T hardswish_bwd(T grad, T x) {
  using S = typename lane<T>::type;
  return x <= S(-3) ? S(0) : (x >= S(3) ? grad : grad * (x / S(3) + S(0.5)));
}

template <typename T>
FASTOPS_HD T hardsigmoid_bwd(T grad, T x) {
  using S = typename lane<T>::type;
  return (x > S(-3)) & (x < S(3)) ? grad * (S(1) / S(6)) : S(0);
}

}  // namespace fastops
