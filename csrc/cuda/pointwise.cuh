// Flat pointwise CUDA launchers shared by fastops' elementwise kernels.
//
// Operands are dense tensors of one layout (csrc/pointwise.h arranges that), so a kernel walks
// raw buffers: 16-byte vector loads and stores when every pointer is 16-byte aligned, scalar
// accesses otherwise; a grid-stride loop with 64-bit indices; math in float (double for double)
// on the current stream of the tensor's device, every launch checked.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace fastops {
namespace cuda {

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Enough blocks to keep every SM busy and memory latency covered; the grid-stride loop does the
// rest. The SM count is read once per device.
inline int max_resident_blocks() {
  constexpr int kMaxDevices = 64;
  static int sms_of[kMaxDevices] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int sms = device < kMaxDevices ? sms_of[device] : 0;
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (device < kMaxDevices) sms_of[device] = sms;
  }
  return sms * 8;
}

inline int blocks_for(int64_t items) {
  const int64_t want = (items + kThreads - 1) / kThreads;
  return int(std::max<int64_t>(1, std::min<int64_t>(want, max_resident_blocks())));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// y[i] = op(x[i]); y may alias x exactly (in-place).
template <typename T, int VEC, typename Op>
__global__ void unary_kernel(const T* x, T* y, int64_t n, Op op) {
  using acc_t = at::opmath_type<T>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  for (int64_t i = first; i < nvec; i += stride) {
    Pack<T, VEC> a = reinterpret_cast<const Pack<T, VEC>*>(x)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) a.v[k] = T(op(acc_t(a.v[k])));
    reinterpret_cast<Pack<T, VEC>*>(y)[i] = a;
  }
  for (int64_t i = nvec * VEC + first; i < n; i += stride) y[i] = T(op(acc_t(x[i])));
}

// z[i] = op(a[i], b[i]).
template <typename T, int VEC, typename Op>
__global__ void binary_kernel(const T* a, const T* b, T* z, int64_t n, Op op) {
  using acc_t = at::opmath_type<T>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  for (int64_t i = first; i < nvec; i += stride) {
    const Pack<T, VEC> pa = reinterpret_cast<const Pack<T, VEC>*>(a)[i];
    const Pack<T, VEC> pb = reinterpret_cast<const Pack<T, VEC>*>(b)[i];
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) out.v[k] = T(op(acc_t(pa.v[k]), acc_t(pb.v[k])));
    reinterpret_cast<Pack<T, VEC>*>(z)[i] = out;
  }
  for (int64_t i = nvec * VEC + first; i < n; i += stride) z[i] = T(op(acc_t(a[i]), acc_t(b[i])));
}

template <typename T, typename Op>
void launch_unary(const at::Tensor& x, const at::Tensor& y, Op op) {
  const c10::cuda::CUDAGuard guard(y.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const int64_t n = y.numel();
  constexpr int VEC = 16 / sizeof(T);
  if (aligned16(xp) && aligned16(yp)) {
    unary_kernel<T, VEC><<<blocks_for(n / VEC + 1), kThreads, 0, stream>>>(xp, yp, n, op);
  } else {
    unary_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(xp, yp, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename Op>
void launch_binary(const at::Tensor& a, const at::Tensor& b, const at::Tensor& z, Op op) {
  const c10::cuda::CUDAGuard guard(z.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* ap = a.const_data_ptr<T>();
  const T* bp = b.const_data_ptr<T>();
  T* zp = z.mutable_data_ptr<T>();
  const int64_t n = z.numel();
  constexpr int VEC = 16 / sizeof(T);
  if (aligned16(ap) && aligned16(bp) && aligned16(zp)) {
    binary_kernel<T, VEC><<<blocks_for(n / VEC + 1), kThreads, 0, stream>>>(ap, bp, zp, n, op);
  } else {
    binary_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(ap, bp, zp, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fastops
