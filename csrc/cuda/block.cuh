// Block-level helpers shared by the CUDA kernels: a reduction over a block's threads, and the
// host-side geometry of the "row layout" launches (threads along channel units, rows in lanes).
#pragma once

#include <cstdint>

#include "pointwise.cuh"  // kThreads

namespace fastops {
namespace cuda {

// Sums each v[i] over the `lanes` threads of a slot (thread = lane * slots + slot, lanes a power of
// two, lanes * slots == blockDim.x); lane 0 of every slot gets the sums. A tree in shared memory
// (`red`: NV * kThreads values), fixed order. Every thread of the block must call it.
template <int NV, typename acc_t>
__device__ __forceinline__ void lane_sums(acc_t (&v)[NV], acc_t* red, int slot, int lane,
                                          int slots, int lanes) {
  const int t = lane * slots + slot;
  __syncthreads();  // earlier readers of red are done
#pragma unroll
  for (int i = 0; i < NV; ++i) red[i * kThreads + t] = v[i];
  __syncthreads();
  for (int s = lanes >> 1; s > 0; s >>= 1) {
    if (lane < s) {
#pragma unroll
      for (int i = 0; i < NV; ++i) red[i * kThreads + t] += red[i * kThreads + t + s * slots];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < NV; ++i) v[i] = red[i * kThreads + slot];
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The smallest l with 2^l >= v.
inline int log2_ceil(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

// The smallest power of two >= v (v >= 1).
inline int pow2_ceil(int64_t v) { return 1 << log2_ceil(v); }

// Channel units per block in the row layout: all of them up to 8 (rounded up to a power of two),
// else the power of two in {8, 16, 32} that leaves the fewest idle threads (ties: the larger).
inline int choose_cg(int64_t Cv) {
  if (Cv <= 8) return pow2_ceil(Cv);
  int best = 32;
  int64_t best_idle = ceil_div(Cv, 32) * 32 - Cv;
  for (int cg : {16, 8}) {
    const int64_t idle = ceil_div(Cv, cg) * cg - Cv;
    if (idle < best_idle) best = cg, best_idle = idle;
  }
  return best;
}

}  // namespace cuda
}  // namespace fastops
