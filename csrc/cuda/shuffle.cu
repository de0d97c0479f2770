// CUDA kernels of fastops::channel_shuffle, fastops::concat_shuffle and
// fastops::concat_shuffle_backward, NCHW and channels_last (NHWC). Argument checks and the channel
// map are csrc/shuffle.h; outputs take the layout of output_channels_last (csrc/dwconv.h) of x (a,
// grad_out); an input in any other strides is first made dense in that layout.
//
// All three ops are one gather. Output channel j (of Cout) copies channel
//     s = shuffle_source(j + jofs, G, K)
// of the virtual concatenation [src0 (C0 channels), src1 (C1 channels)] along the channels:
//   channel_shuffle(x, G)           src0 = x, no src1; jofs = 0, K = C / G
//   concat_shuffle(a, b)            src0 = a, src1 = b; G = 2, K = (Ca + Cb) / 2, jofs = 0
//   concat_shuffle_backward(g, sp)  two launches from src0 = g with G = C / 2, K = 2 (the inverse
//                                   shuffle): grad_a (jofs = 0, Cout = sp), grad_b (jofs = sp)
// The division by G runs as a multiply (ATen's IntDivider), so every channel index lives in 31 bits
// (checked). Elements are only moved, never converted: the kernels are instantiated per element
// size (2, 4, 8 bytes), which covers float16, bfloat16, float32 and float64 alike.
//
// Kernels
//   gather_planes_kernel<T, VEC>   NCHW with H*W > 1: output plane (n, j) is a copy of the source
//       plane of (n, s). A team of TPC threads (the plane's units rounded up to a power of two,
//       at most 256) copies one plane, coalesced along it; 256 / TPC teams per block, a
//       grid-stride loop over the N*Cout planes with (n, j) stepped incrementally (no division in
//       the loop). 16-byte units (VEC elements) when H*W % VEC == 0 and every pointer is 16-byte
//       aligned, else single elements.
//   gather_rows_kernel<T, VEC>     channels_last, or H*W == 1 (both are [rows][C] in memory):
//       thread = (unit of VEC consecutive output channels, row lane); a block covers CG units x
//       256 / CG rows at a time and walks its split of the rows. Each thread keeps its channels,
//       their source pointers and row strides in registers for its whole life; reads gather within
//       one pixel's channel vector (a few cache lines), writes are 16-byte units when
//       Cout % VEC == 0 and y is aligned.
// All launches go to the current stream of the input's device and are checked; nothing is
// launched for an empty output. Offsets are 64-bit.
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>  // C10_HOST_DEVICE, used by IntegerDivider.cuh
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "../shuffle.h"
#include "block.cuh"      // ceil_div, log2_ceil, pow2_ceil, choose_cg
#include "pointwise.cuh"  // kThreads, Pack, max_resident_blocks, aligned16

namespace fastops {
namespace cuda {
namespace {

using at::cuda::detail::IntDivider;

// Where output channel j of a gather reads: channel shuffle_source(j + jofs, G, K) of the
// concatenation [src0 (C0 channels), src1] (see the file comment).
struct ChannelMap {
  IntDivider<unsigned> G;
  unsigned K, jofs, C0;
  // shuffle_source(j + jofs, G, K) of csrc/shuffle.h, (o % G) * K + o / G, the division by G done
  // by multiplication (valid for o < 2^31).
  __device__ __forceinline__ unsigned source(unsigned j) const {
    const auto qr = G.divmod(j + jofs);
    return qr.mod * K + qr.div;
  }
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    gather_planes_kernel(T* __restrict__ y, const T* __restrict__ src0, const T* __restrict__ src1,
                         int64_t C1, const ChannelMap map, int64_t Cout, int64_t P, int64_t HW,
                         int tpc_log2) {
  using V = Pack<T, VEC>;
  const int tpc = 1 << tpc_log2;
  const int lane = int(threadIdx.x) & (tpc - 1);
  const int64_t teams_per_block = kThreads >> tpc_log2;
  const int64_t teams = int64_t(gridDim.x) * teams_per_block;  // planes per grid step
  int64_t p = int64_t(blockIdx.x) * teams_per_block + (int64_t(threadIdx.x) >> tpc_log2);
  if (p >= P) return;  // no block-wide synchronisation below
  int64_t n = p / Cout;
  int64_t j = p - n * Cout;
  const int64_t dn = teams / Cout;
  const int64_t dj = teams - dn * Cout;
  const int64_t HWv = HW / VEC;
  const int64_t C0 = map.C0;
  for (; p < P; p += teams) {
    const int64_t s = map.source(unsigned(j));
    const T* in = s < C0 ? src0 + (n * C0 + s) * HW : src1 + (n * C1 + (s - C0)) * HW;
    const V* iv = reinterpret_cast<const V*>(in);
    V* ov = reinterpret_cast<V*>(y + p * HW);
#pragma unroll 4
    for (int64_t u = lane; u < HWv; u += tpc) ov[u] = iv[u];
    n += dn;
    j += dj;
    if (j >= Cout) {
      j -= Cout;
      ++n;
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(T* __restrict__ y, const T* __restrict__ src0, const T* __restrict__ src1,
                       int64_t C1, const ChannelMap map, int64_t Cv, int64_t M, int cg_log2,
                       int cgroups) {
  using V = Pack<T, VEC>;
  const int cl = int(threadIdx.x) & ((1 << cg_log2) - 1);
  const int rl = int(threadIdx.x) >> cg_log2;
  const int RL = kThreads >> cg_log2;
  const int cgi = int(blockIdx.x % unsigned(cgroups));
  const int64_t split = blockIdx.x / unsigned(cgroups);
  const int64_t splits = gridDim.x / unsigned(cgroups);  // the grid is cgroups * splits blocks
  const int64_t cv = (int64_t(cgi) << cg_log2) + cl;
  if (cv >= Cv) return;  // no block-wide synchronisation below

  // This thread's VEC output channels: where each reads, and the row length of its source.
  const T* base[VEC];
  int64_t rs[VEC];
  const int64_t C0 = map.C0;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const int64_t s = map.source(unsigned(cv * VEC + k));
    if (s < C0) {
      base[k] = src0 + s;
      rs[k] = C0;
    } else {
      base[k] = src1 + (s - C0);
      rs[k] = C1;
    }
  }
  V* out = reinterpret_cast<V*>(y) + cv;
  const int64_t step = splits * RL;
#pragma unroll 2
  for (int64_t r = split * RL + rl; r < M; r += step) {
    V v;
#pragma unroll
    for (int k = 0; k < VEC; ++k) v.v[k] = base[k][r * rs[k]];
    out[r * Cv] = v;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

// Calls f(T{}) with T the unsigned integer of the element size: the kernels only move elements.
template <typename F>
void dispatch_element_size(const char* op, size_t bytes, F&& f) {
  switch (bytes) {
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    case 8: f(uint64_t{}); break;
    default: TORCH_CHECK(false, "fastops.", op, ": unsupported element size ", bytes);
  }
}

// y[:, j] = cat([src0, src1], 1)[:, shuffle_source(j + jofs, G, K)] for every channel j of y.
// y, src0 and src1 (undefined: none) are dense in one layout: rows ([N*H*W][C]: channels_last, or
// H*W == 1) or NCHW planes, with equal N, H, W and dtype.
void gather_channels(const char* op, const at::Tensor& y, const at::Tensor& src0,
                     const at::Tensor& src1, int64_t G, int64_t K, int64_t jofs, bool row) {
  if (y.numel() == 0) return;
  const int64_t N = y.size(0), Cout = y.size(1), HW = y.size(2) * y.size(3);
  const int64_t C0 = src0.size(1), C1 = src1.defined() ? src1.size(1) : 0;
  constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(C0 + C1 <= kMaxIndex && jofs + Cout <= kMaxIndex, "fastops.", op, ": ",
                    std::max(C0 + C1, jofs + Cout), " channels are too many for the CUDA kernel");
  TORCH_INTERNAL_ASSERT(G >= 1 && K >= 1 && G * K == C0 + C1 && jofs + Cout <= C0 + C1);
  const ChannelMap map{IntDivider<unsigned>(unsigned(G)), unsigned(K), unsigned(jofs),
                       unsigned(C0)};
  const c10::cuda::CUDAGuard guard(y.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  dispatch_element_size(op, y.element_size(), [&](auto t_tag) {
    using T = decltype(t_tag);
    constexpr int VMAX = 16 / sizeof(T);
    T* yp = static_cast<T*>(y.mutable_data_ptr());
    const T* s0 = static_cast<const T*>(src0.const_data_ptr());
    const T* s1 = src1.defined() ? static_cast<const T*>(src1.const_data_ptr()) : nullptr;
    if (!row) {
      const bool vec = HW % VMAX == 0 && aligned16(yp) && aligned16(s0) && aligned16(s1);
      const int64_t HWv = vec ? HW / VMAX : HW;
      const int tpc_log2 = log2_ceil(std::min<int64_t>(kThreads, pow2_ceil(HWv)));
      const int64_t P = N * Cout;
      const int64_t teams_per_block = kThreads >> tpc_log2;
      const unsigned blocks =
          unsigned(std::min<int64_t>(ceil_div(P, teams_per_block), max_resident_blocks()));
      if (vec) {
        gather_planes_kernel<T, VMAX><<<blocks, kThreads, 0, stream>>>(yp, s0, s1, C1, map, Cout,
                                                                       P, HW, tpc_log2);
      } else {
        gather_planes_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(yp, s0, s1, C1, map, Cout, P,
                                                                    HW, tpc_log2);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const bool vec = Cout % VMAX == 0 && aligned16(yp);
      const int64_t Cv = vec ? Cout / VMAX : Cout;
      const int64_t M = N * HW;
      const int cg = choose_cg(Cv);
      const int cg_log2 = log2_ceil(cg);
      const int64_t cgroups = ceil_div(Cv, cg);
      const int64_t rows_per_step = kThreads / cg;
      const int64_t want = ceil_div(max_resident_blocks(), cgroups);
      const int64_t splits =
          std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(M, rows_per_step)));
      TORCH_CHECK(cgroups * splits <= std::numeric_limits<int>::max(), "fastops.", op,
                  ": the tensor is too large for one CUDA launch");
      const unsigned blocks = unsigned(cgroups * splits);
      if (vec) {
        gather_rows_kernel<T, VMAX><<<blocks, kThreads, 0, stream>>>(yp, s0, s1, C1, map, Cv, M,
                                                                     cg_log2, int(cgroups));
      } else {
        gather_rows_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(yp, s0, s1, C1, map, Cv, M,
                                                                  cg_log2, int(cgroups));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// Rows ([N*H*W][C] in memory) for channels_last and for NCHW planes of one element.
bool row_layout(bool cl, const at::Tensor& t) { return cl || t.size(2) * t.size(3) == 1; }

at::Tensor channel_shuffle_cuda(const at::Tensor& x, int64_t groups) {
  constexpr const char* op = "channel_shuffle";
  check_channel_shuffle(op, x, groups);
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const at::Tensor xc = x.contiguous(fmt);
  gather_channels(op, y, xc, at::Tensor(), groups, x.size(1) / groups, 0, row_layout(cl, x));
  return y;
}

at::Tensor concat_shuffle_cuda(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = "concat_shuffle";
  check_concat_shuffle(op, a, b);
  const bool cl = output_channels_last(a);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t C = a.size(1) + b.size(1);
  at::Tensor y = at::empty({a.size(0), C, a.size(2), a.size(3)}, a.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const at::Tensor ac = a.contiguous(fmt);
  const at::Tensor bc = b.contiguous(fmt);
  gather_channels(op, y, ac, bc, 2, C / 2, 0, row_layout(cl, a));
  return y;
}

std::tuple<at::Tensor, at::Tensor> concat_shuffle_backward_cuda(const at::Tensor& grad_out,
                                                                int64_t split) {
  constexpr const char* op = "concat_shuffle_backward";
  check_concat_shuffle_backward(op, grad_out, split);
  const bool cl = output_channels_last(grad_out);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t N = grad_out.size(0), C = grad_out.size(1), H = grad_out.size(2),
                W = grad_out.size(3);
  at::Tensor ga = at::empty({N, split, H, W}, grad_out.options().memory_format(fmt));
  at::Tensor gb = at::empty({N, C - split, H, W}, grad_out.options().memory_format(fmt));
  if (grad_out.numel() == 0) return std::make_tuple(ga, gb);
  const at::Tensor go = grad_out.contiguous(fmt);
  const bool row = row_layout(cl, grad_out);
  // split(channel_shuffle(grad_out, C / 2), [split, C - split]): the inverse shuffle has C / 2
  // groups of 2 channels.
  gather_channels(op, ga, go, at::Tensor(), C / 2, 2, 0, row);
  gather_channels(op, gb, go, at::Tensor(), C / 2, 2, split, row);
  return std::make_tuple(ga, gb);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("channel_shuffle", &channel_shuffle_cuda);
  m.impl("concat_shuffle", &concat_shuffle_cuda);
  m.impl("concat_shuffle_backward", &concat_shuffle_backward_cuda);
}

}  // namespace cuda
}  // namespace fastops
