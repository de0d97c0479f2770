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

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTOPS_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTOPS_HD inline __attribute__((always_inline))  // so SIMD callers inline them (cpu/simd.h)
#else
#define FASTOPS_HD inline
#endif

namespace fastops {

// The scalar type of T's lanes, and exp: T itself and std::exp for float/double; the CPU kernels
// specialise it for their SIMD vector types (csrc/cpu/simd.h), so the formulas below run on 16
// lanes at once. Constants are written in the lane type and broadcast.
template <typename T>
struct lane {
  using type = T;
  static FASTOPS_HD T zero() { return T(0); }
  static FASTOPS_HD T exp(T x) {
#if defined(__CUDA_ARCH__)
    return ::exp(x);  // float and double overloads in device code
#else
    return std::exp(x);
#endif
  }
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
  // -3 < x < 3 written as one comparison, x * x < 9 (exact at the ends: the largest float
  // below 3 squares to below 9; NaN and inf compare false, giving 0 like PyTorch). GCC 12
  // scalarises `(a) & (b) ? :` and nested selects with constant arms on its vector types,
  // which made this backward 16x slower than eager.
  return x * x < S(9) ? grad * (S(1) / S(6)) : S(0);
}

// ---- the activations a fused op can end in (design.md §3) ----------------------------------
// Kernels take the activation as a compile-time template argument (dispatch_act below), so the
// choice costs nothing inside the loops.
enum class Act : int { None = 0, ReLU, ReLU6, Hardswish, Hardsigmoid, Sigmoid, SiLU };

template <typename T>
FASTOPS_HD T sigmoid_fwd(T x) {
  using S = typename lane<T>::type;
  return S(1) / (S(1) + lane<T>::exp(-x));
}

// y = act(u)
template <Act A, typename T>
FASTOPS_HD T act_fwd(T u) {
  using S = typename lane<T>::type;
  if constexpr (A == Act::None) {
    return u;
  } else if constexpr (A == Act::ReLU) {
    return u < S(0) ? S(0) : u;  // NaN stays NaN, as torch.relu
  } else if constexpr (A == Act::ReLU6) {
    T t = u < S(0) ? S(0) : u;
    return t > S(6) ? S(6) : t;
  } else if constexpr (A == Act::Hardswish) {
    // Times the rounded 1/6, not / 6 as hardswish_fwd (bit for bit PyTorch's op, which the
    // standalone activation ops keep): within an ulp of it, and a vector division was the
    // costliest instruction of a fused epilogue (~10 cycles, on an FMA port).
    return u * relu6_shift3(u) * S(1.0 / 6.0);
  } else if constexpr (A == Act::Hardsigmoid) {
    return relu6_shift3(u) * S(1.0 / 6.0);
  } else if constexpr (A == Act::Sigmoid) {
    return sigmoid_fwd(u);
  } else {
    return u * sigmoid_fwd(u);
  }
}

// g * act'(u), with PyTorch's conventions at the kinks (relu' = 0 at 0, relu6' = 0 at 0 and 6).
template <Act A, typename T>
FASTOPS_HD T act_bwd(T g, T u) {
  using S = typename lane<T>::type;
  if constexpr (A == Act::None) {
    return g;
  } else if constexpr (A == Act::ReLU) {
    return u > S(0) ? g : lane<T>::zero();  // vector zero: see hardsigmoid_bwd
  } else if constexpr (A == Act::ReLU6) {
    // One comparison, on the distance to the nearer kink (6 - u is exact for u >= 3, and for
    // u < 3 the minimum is u itself): GCC 12 scalarises nested, chained and masked selects on
    // its vector types (bn_act_train's backward ran 15x slower with them). NaN gives 0.
    const T rest = S(6) - u;
    const T nearer = u < rest ? u : rest;
    return nearer > S(0) ? g : lane<T>::zero();
  } else if constexpr (A == Act::Hardswish) {
    return hardswish_bwd(g, u);
  } else if constexpr (A == Act::Hardsigmoid) {
    return hardsigmoid_bwd(g, u);
  } else if constexpr (A == Act::Sigmoid) {
    const T s = sigmoid_fwd(u);
    return g * s * (S(1) - s);
  } else {
    const T s = sigmoid_fwd(u);
    return g * s * (S(1) + u * (S(1) - s));
  }
}

template <Act A>
struct ActTag {
  static constexpr Act value = A;
};

// Calls f(ActTag<A>{}) with the compile-time activation A equal to `act`. Host code only (kernel
// launchers, the CPU's generic loops): a __host__ __device__ version calling host lambdas draws
// nvcc warning #20014. Inside the CPU's multi-versioned kernels use FASTOPS_ACT_CASES
// (cpu/simd.h) instead: this function is compiled for the baseline instruction set.
template <typename F>
inline void dispatch_act(Act act, F&& f) {
  switch (act) {
    case Act::None: f(ActTag<Act::None>{}); break;
    case Act::ReLU: f(ActTag<Act::ReLU>{}); break;
    case Act::ReLU6: f(ActTag<Act::ReLU6>{}); break;
    case Act::Hardswish: f(ActTag<Act::Hardswish>{}); break;
    case Act::Hardsigmoid: f(ActTag<Act::Hardsigmoid>{}); break;
    case Act::Sigmoid: f(ActTag<Act::Sigmoid>{}); break;
    case Act::SiLU: f(ActTag<Act::SiLU>{}); break;
  }
}

}  // namespace fastops
