// CPU helpers for auto-vectorised loops.
//
// FASTOPS_CPU_MULTIVERSION compiles a function once per instruction set (AVX-512, AVX2, baseline)
// and picks the best at load time (GCC function multi-versioning), so one wheel runs everywhere
// and still uses wide vectors where the machine has them. Loops inside such functions are
// written plainly over raw pointers; -O3 vectorises them.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(FASTOPS_NO_MULTIVERSION)
#define FASTOPS_CPU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTOPS_CPU_MULTIVERSION
#endif

namespace fastops {
namespace cpu {

// bfloat16 <-> float32 on raw bits, written so the compiler can vectorise them. Rounding is
// round-to-nearest-even and NaN stays NaN, as c10::BFloat16 does.
inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return is_nan ? uint16_t(0x7fc0) : uint16_t(rounded);
}

// Elements per parallel task: large enough that the threading overhead vanishes, small enough
// that a >1M-element tensor splits across all cores.
constexpr int64_t kPointwiseGrain = 32768;

}  // namespace cpu
}  // namespace fastops
