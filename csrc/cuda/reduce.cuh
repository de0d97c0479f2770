// Block-level reductions shared by the CUDA kernels.
#pragma once

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

}  // namespace cuda
}  // namespace fastops
