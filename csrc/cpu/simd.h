// Explicit SIMD for the CPU kernels, without intrinsics.
//
// `f32x16` is a GCC/Clang vector of 16 floats. The formulas of csrc/activation.h are templates,
// so the same source computes one lane (CUDA, loop tails) or 16 (here). A function marked
// FASTOPS_CPU_MULTIVERSION is compiled once per instruction set (AVX-512, AVX2, baseline SSE2)
// and the best is picked at load time (GCC function multi-versioning): one wheel runs on any
// x86-64, and the 16-lane vectors become one zmm, two ymm or four xmm registers accordingly.
// Everything these functions call is FASTOPS_CPU_INLINE, so it is compiled for the caller's ISA.
// With FASTOPS_NO_MULTIVERSION (setup.py's FASTOPS_CPU_NATIVE=1, with -march=native) there is
// one version, for the build machine's processor: it compiles several times faster.
//
// bfloat16 travels as raw uint16 bits: widening is a shift, narrowing rounds to nearest even
// and keeps NaN a NaN, as c10::BFloat16 does.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "../activation.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(FASTOPS_NO_MULTIVERSION)
#define FASTOPS_CPU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTOPS_CPU_MULTIVERSION
#endif
#define FASTOPS_CPU_INLINE inline __attribute__((always_inline))
#define FASTOPS_CPU_INLINE_LAMBDA __attribute__((always_inline))

// Runs CALL(A) for the run-time activation `act` with A a compile-time Act: a plain switch, for
// use inside multi-versioned kernels, where a dispatcher function (dispatch_act) would be
// compiled for the baseline instruction set rather than the caller's.
#define FASTOPS_ACT_CASES(CALL)                                                  \
  switch (act) {                                                                 \
    case ::fastops::Act::None: CALL(::fastops::Act::None); break;               \
    case ::fastops::Act::ReLU: CALL(::fastops::Act::ReLU); break;               \
    case ::fastops::Act::ReLU6: CALL(::fastops::Act::ReLU6); break;             \
    case ::fastops::Act::Hardswish: CALL(::fastops::Act::Hardswish); break;     \
    case ::fastops::Act::Hardsigmoid: CALL(::fastops::Act::Hardsigmoid); break; \
    case ::fastops::Act::Sigmoid: CALL(::fastops::Act::Sigmoid); break;         \
    case ::fastops::Act::SiLU: CALL(::fastops::Act::SiLU); break;               \
  }

namespace fastops {
namespace cpu {

constexpr int kLanes = 16;
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

// unroll<N>(f) calls f(std::integral_constant<int, i>{}) for i = 0 .. N-1: the loop written out,
// each index a constant in the source. Kernels index their small arrays of vectors
// (accumulators, weights) this way, so that keeping them in registers does not depend on the
// compiler unrolling a loop first.
template <int N, typename F>
FASTOPS_CPU_INLINE void unroll(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) FASTOPS_CPU_INLINE_LAMBDA {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// ---- one element ----
FASTOPS_CPU_INLINE float widen(float v) { return v; }
FASTOPS_CPU_INLINE float widen(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
FASTOPS_CPU_INLINE void narrow(float* p, float v) { *p = v; }
FASTOPS_CPU_INLINE void narrow(uint16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  *p = is_nan ? uint16_t(0x7fc0) : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// ---- 16 elements ----
FASTOPS_CPU_INLINE f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
FASTOPS_CPU_INLINE f32x16 load16(const uint16_t* p) {
  u16x16 h;
  std::memcpy(&h, p, sizeof(h));
  return reinterpret_cast<f32x16>(__builtin_convertvector(h, u32x16) << 16);
}
FASTOPS_CPU_INLINE void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof(v)); }
FASTOPS_CPU_INLINE void store16(uint16_t* p, f32x16 v) {
  const u32x16 u = reinterpret_cast<u32x16>(v);
  u32x16 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  r = (u & 0x7fffffffu) > 0x7f800000u ? u32x16{} + 0x7fc0u : r;
  const u16x16 h = __builtin_convertvector(r, u16x16);
  std::memcpy(p, &h, sizeof(h));
}

// One element as float (double for double), whatever its storage: float, bfloat16 as uint16
// bits, at::Half or double; put() rounds it back. kSimd<E>: E has the 16-lane loads above.
FASTOPS_CPU_INLINE float value(float v) { return v; }
FASTOPS_CPU_INLINE float value(uint16_t v) { return widen(v); }
FASTOPS_CPU_INLINE float value(c10::Half v) { return float(v); }
FASTOPS_CPU_INLINE double value(double v) { return v; }
FASTOPS_CPU_INLINE void put(float* p, float v) { *p = v; }
FASTOPS_CPU_INLINE void put(uint16_t* p, float v) { narrow(p, v); }
FASTOPS_CPU_INLINE void put(c10::Half* p, float v) { *p = c10::Half(v); }
FASTOPS_CPU_INLINE void put(double* p, double v) { *p = v; }

template <typename E>
constexpr bool kSimd = std::is_same_v<E, float> || std::is_same_v<E, uint16_t>;
// The accumulation type of storage type E.
template <typename E>
using Acc = std::conditional_t<std::is_same_v<E, double>, double, float>;

// Calls f(E{}) with E the storage type of `t` (float, bfloat16 as uint16 bits, Half, double).
template <typename F>
inline void dispatch_storage(const char* op, c10::ScalarType t, F&& f) {
  switch (t) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::BFloat16: return f(uint16_t{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::Double: return f(double{});
    default: TORCH_CHECK_TYPE(false, "fastops.", op, ": unsupported dtype ", t);
  }
}

// The sum of the 16 lanes, as a tree (4 dependent adds instead of 15).
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
FASTOPS_CPU_INLINE float hsum(f32x16 v) {
  f32x8 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  const f32x8 s8 = lo + hi;
  f32x4 a, b;
  std::memcpy(&a, &s8, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + sizeof(a), sizeof(b));
  const f32x4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// y[i] = f(x[i]) for float (E = float) or bfloat16 bits (E = uint16_t); y may be x.
template <typename E, typename F>
FASTOPS_CPU_INLINE void map1(const E* x, E* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store16(y + i, f(load16(x + i)));
  for (; i < n; ++i) narrow(y + i, f(widen(x[i])));
}

// z[i] = f(a[i], b[i]).
template <typename E, typename F>
FASTOPS_CPU_INLINE void map2(const E* a, const E* b, E* z, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store16(z + i, f(load16(a + i), load16(b + i)));
  for (; i < n; ++i) narrow(z + i, f(widen(a[i]), widen(b[i])));
}

// r[i][j] <- r[j][i]: four stages, stage b swapping bit b of the row index with bit b of the
// column index (rows i and i | b exchange the halves of their pairs: two two-source permutes).
FASTOPS_CPU_INLINE void transpose16x16(f32x16 (&r)[16]) {
  const auto stage = [&](auto bit, u32x16 lo, u32x16 hi) FASTOPS_CPU_INLINE_LAMBDA {
    constexpr int B = decltype(bit)::value;
    unroll<16>([&](auto ii) FASTOPS_CPU_INLINE_LAMBDA {
      constexpr int i = decltype(ii)::value;
      if constexpr ((i & B) == 0) {
        const f32x16 a = r[i], b = r[i | B];
        r[i] = __builtin_shuffle(a, b, lo);
        r[i | B] = __builtin_shuffle(a, b, hi);
      }
    });
  };
  // lo[c] = c if bit B of c is 0, else 16 + (c ^ B); hi[c] = c ^ B if it is 0, else 16 + c
  stage(std::integral_constant<int, 1>{}, u32x16{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
        u32x16{1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31});
  stage(std::integral_constant<int, 2>{}, u32x16{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
        u32x16{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31});
  stage(std::integral_constant<int, 4>{}, u32x16{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
        u32x16{4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31});
  stage(std::integral_constant<int, 8>{}, u32x16{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
        u32x16{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
}

// px[p * ld + k] = planes[k * plane + p] for pixels p < npix of 16 planes (plane: one plane's
// stride): NCHW rows as channels_last pixels, 16 x 16 blocks transposed in registers (the
// blocked NCHW depthwise kernel, ld 16; separable_conv_bn_act's NCHW bands, ld C).
template <typename E>
FASTOPS_CPU_INLINE void planes_to_pixels(const E* planes, int64_t plane, int64_t npix, float* px, int64_t ld) {
  int64_t p = 0;
  for (; p + kLanes <= npix; p += kLanes) {
    f32x16 r[16];
    unroll<16>([&](auto k) FASTOPS_CPU_INLINE_LAMBDA { r[k] = load16(planes + k * plane + p); });
    transpose16x16(r);
    unroll<16>([&](auto j) FASTOPS_CPU_INLINE_LAMBDA { store16(px + (p + j) * ld, r[j]); });
  }
  for (; p < npix; ++p)
    for (int k = 0; k < kLanes; ++k) px[p * ld + k] = value(planes[k * plane + p]);
}

// Elements per parallel task: large enough that the threading overhead vanishes, small enough
// that a >1M-element tensor splits across all cores.
constexpr int64_t kPointwiseGrain = 32768;

}  // namespace cpu

template <>
struct lane<cpu::f32x16> {
  using type = float;
  static FASTOPS_CPU_INLINE cpu::f32x16 zero() { return cpu::f32x16{}; }
  // e^x on 16 lanes without a call (a call per lane, as std::exp, also made GCC keep every
  // vector of the calling kernel in memory): x = n ln2 + r with n = round(x / ln2), |r| <= ln2/2
  // (ln2 split in two so n ln2 is exact), e^r by its degree-6 Taylor-like minimax polynomial
  // (Cephes' expf coefficients), times 2^n built in exponent bits (in two factors, so that
  // n = 128, x up to 88.72, stays finite). Overflow gives +inf, x below
  // -87.3 (where e^x is subnormal) gives 0, NaN stays NaN.
  static FASTOPS_CPU_INLINE cpu::f32x16 exp(cpu::f32x16 x) {
    typedef int32_t i32x16 __attribute__((vector_size(64)));
    constexpr float kHi = 88.72283f, kLo = -87.33654f;
    cpu::f32x16 xc = x > kHi ? cpu::f32x16{} + kHi : x;
    xc = xc < kLo ? cpu::f32x16{} + kLo : xc;
    constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    const cpu::f32x16 n = (xc * 1.44269504088896341f + kRound) - kRound;
    const cpu::f32x16 r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    cpu::f32x16 p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.f;
    const i32x16 ni = __builtin_convertvector(n, i32x16);
    const i32x16 one = -(ni > 0);  // 2^n = 2^(n - one) * 2^one: both normal for n in [-126, 128]
    const i32x16 bits_a = (ni - one + 127) << 23, bits_b = (one + 127) << 23;
    cpu::f32x16 e = p * reinterpret_cast<cpu::f32x16>(bits_a) * reinterpret_cast<cpu::f32x16>(bits_b);
    e = x > kHi ? cpu::f32x16{} + __builtin_inff() : e;
    e = x < kLo ? cpu::f32x16{} : e;
    return e;
  }
};

}  // namespace fastops
