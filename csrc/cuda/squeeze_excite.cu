// CUDA kernels of fastops::squeeze_excite and fastops::squeeze_excite_backward: float32, float16,
// bfloat16 (float math, the pooled and hidden values in float32) and float64 (double math), NCHW
// and channels_last (NHWC). Argument checks and the formulas are csrc/squeeze_excite.h; the
// activation formulas csrc/activation.h (the ones the CPU kernels run).
//
//   forward:  p = mean_hw x  [N, C];  z = p @ w1^T + b1,  h = act(z)  [N, S];
//             t = h @ w2^T + b2,  s = gate(t)  [N, C];  y = x * s
//   backward: one pass over (x, g) for sum_hw x (-> p) and gs = sum_hw g * x; the small FC math
//             (h, t, s recomputed from p); one pass gx = g * s + gp / (H*W).
// The [N, C] / [N, S] matrices are tiny: their products run as ATen GEMMs (cuBLAS) in the
// accumulation type, the bias + activation and the activation gradients as tiny elementwise
// kernels.
//
// Work decomposition of the two passes over x (the same geometry for the reduction and the scale
// pass of one call; VEC = 16 bytes of elements when every tensor walked is 16-byte aligned and the
// layout allows it, else 1):
//   plane layout (NCHW, H*W > 1): an (n, c) plane is H*W contiguous elements. Item = (plane, chunk
//       of it); one warp per item, lanes at consecutive units (coalesced), a grid-stride loop over
//       the items. Chunks split the planes only when there are too few planes to fill the GPU.
//       Reduction: warp shuffles, no shared memory.
//   row layout (NHWC, or NCHW with H*W == 1: [N][H*W][C] in memory): item = (image n, split of its
//       rows, group of CG channel units); thread = (channel unit cl = tid % CG, row lane
//       tid / CG): a warp reads runs of consecutive channels of consecutive rows, each thread keeps
//       its VEC channels for the item. Reduction: per thread over its rows, then a tree over the
//       row lanes in shared memory (fixed order).
//   The sums are accumulated in double at every level (see sum_t below). When an image's sums
//   are split (chunks > 1 or splits > 1) each item writes a partial, and se_finish_kernel adds
//   them in a fixed order (two levels, no atomics: deterministic).
// Kernels
//   se_reduce_planes_kernel / se_reduce_rows_kernel <T, VEC, BWD>   sum_hw x (BWD: and sum_hw g*x)
//   se_finish_kernel        the partials' sums per (n, c) (divided by H*W for the mean)
//   bias_act_kernel<acc_t, A>   z += bias (kept: the pre-activation), out = act(z)
//   act_grad_kernel<acc_t, A>   out = act_bwd(g, u) = g * act'(u)
//   se_scale_planes_kernel / se_scale_rows_kernel <T, VEC, ADD>   out = in * a[n, c] (+ b[n, c])
// All launches go to the current stream of x's device and are checked. Offsets are 64-bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "../activation.h"
#include "../squeeze_excite.h"
#include "block.cuh"      // lane_sums, ceil_div, log2_ceil, choose_cg
#include "pointwise.cuh"  // kThreads, Pack, max_resident_blocks, blocks_for, aligned16

namespace fastops {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int kMinUnitsPerThread = 4;  // a chunk / split gives every thread at least this much
constexpr int kWaves = 4;              // work items aimed for: kWaves x the resident blocks
static_assert(kThreads % kWarp == 0 && (kThreads & (kThreads - 1)) == 0,
              "kThreads: a power of two");

// The geometry of both passes over x (see the file comment).
struct Geo {
  int64_t N, C, HW;
  int64_t items;   // work items: plane layout N*C*chunks, row layout N*splits*cgroups
  int64_t HWv;     // plane layout: units per plane
  int64_t chunks;  // plane layout: chunks per plane
  int64_t upc;     // plane layout: units per chunk
  int64_t Cv;      // row layout: channel units per row (C / VEC)
  int64_t splits;  // row layout: splits of an image's rows
  int64_t rps;     // row layout: rows per split
  int cgroups;     // row layout: groups of CG channel units
  int cg_log2;     // row layout: log2(CG)
};

// ---- reductions --------------------------------------------------------------------------------
// The sums are accumulated in double (sum_t) whatever the dtype: pooling a plane of a few thousand
// values with a large mean in float costs the mean a few ulps, which the excitation's FCs amplify
// (csrc/cpu/squeeze_excite.cpp sums in double too). The kernels stay memory-bound.
using sum_t = double;

// Writes the sums of one (n, c) (index i = n*C + c) of an item: directly when the item is the only
// one of its (n, c) (out0 = v[0] / HW, out1 = v[1], rounded once to acc_t), else as partial number
// `part` of `parts`.
template <int NV, typename acc_t>
__device__ __forceinline__ void put_sums(const sum_t (&v)[NV], int64_t i, int64_t part,
                                         int64_t parts, acc_t* __restrict__ out0,
                                         acc_t* __restrict__ out1, sum_t* __restrict__ partial,
                                         sum_t hw) {
  if (parts == 1) {
    out0[i] = acc_t(v[0] / hw);
    if constexpr (NV > 1) out1[i] = acc_t(v[1]);
  } else {
#pragma unroll
    for (int k = 0; k < NV; ++k) partial[(i * parts + part) * NV + k] = v[k];
  }
}

// Plane layout: one warp per (plane, chunk): sum x (and, BWD, sum g * x) over the chunk.
template <typename T, int VEC, bool BWD>
__global__ void __launch_bounds__(kThreads)
    se_reduce_planes_kernel(const T* __restrict__ x, const T* __restrict__ g,
                            at::opmath_type<T>* __restrict__ out0,
                            at::opmath_type<T>* __restrict__ out1, sum_t* __restrict__ partial,
                            sum_t hw, const Geo geo) {
  using V = Pack<T, VEC>;
  constexpr int NV = BWD ? 2 : 1;
  const int lane = int(threadIdx.x) % kWarp;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  // The item loop is warp-uniform: the shuffles below see the full warp.
  for (int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + int64_t(threadIdx.x) / kWarp;
       item < geo.items; item += warps) {
    int64_t plane = item, chunk = 0;
    if (geo.chunks > 1) {
      plane = item / geo.chunks;
      chunk = item - plane * geo.chunks;
    }
    const int64_t u0 = chunk * geo.upc;
    const int64_t u1 = u0 + geo.upc < geo.HWv ? u0 + geo.upc : geo.HWv;
    const V* xv = reinterpret_cast<const V*>(x) + plane * geo.HWv;
    const V* gv = BWD ? reinterpret_cast<const V*>(g) + plane * geo.HWv : nullptr;
    sum_t v[NV];
#pragma unroll
    for (int k = 0; k < NV; ++k) v[k] = sum_t(0);
#pragma unroll 4
    for (int64_t u = u0 + lane; u < u1; u += kWarp) {
      const V a = xv[u];
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[0] += sum_t(a.v[e]);
      if constexpr (BWD) {
        const V b = gv[u];
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[1] += sum_t(b.v[e]) * sum_t(a.v[e]);
      }
    }
#pragma unroll
    for (int off = kWarp / 2; off > 0; off >>= 1) {
#pragma unroll
      for (int k = 0; k < NV; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
    }
    if (lane == 0) put_sums<NV>(v, plane, chunk, geo.chunks, out0, out1, partial, hw);
  }
}

// The (image, split, channel group) of a row-layout item.
struct RowItem {
  int64_t n, split, cv;  // cv: this thread's channel unit
  int64_t r0, r1;        // the split's rows [r0, r1) of image n
};

__device__ __forceinline__ RowItem row_item(const Geo& geo, int64_t item, int cl) {
  RowItem it;
  const int64_t cgi = item % geo.cgroups;
  const int64_t rest = item / geo.cgroups;
  it.split = rest % geo.splits;
  it.n = rest / geo.splits;
  it.cv = (cgi << geo.cg_log2) + cl;
  it.r0 = it.split * geo.rps;
  it.r1 = it.r0 + geo.rps < geo.HW ? it.r0 + geo.rps : geo.HW;
  return it;
}

// Row layout: per (image, split, channel group): sum x (and, BWD, sum g * x) per channel.
template <typename T, int VEC, bool BWD>
__global__ void __launch_bounds__(kThreads)
    se_reduce_rows_kernel(const T* __restrict__ x, const T* __restrict__ g,
                          at::opmath_type<T>* __restrict__ out0,
                          at::opmath_type<T>* __restrict__ out1, sum_t* __restrict__ partial,
                          sum_t hw, const Geo geo) {
  using V = Pack<T, VEC>;
  constexpr int NV = BWD ? 2 : 1;
  __shared__ sum_t red[NV * VEC * kThreads];  // at most 32 KiB (float16 / bfloat16, BWD)
  const int cl = int(threadIdx.x) & ((1 << geo.cg_log2) - 1);
  const int rl = int(threadIdx.x) >> geo.cg_log2;
  const int RL = kThreads >> geo.cg_log2;
  // The item loop is block-uniform: every thread reaches lane_sums' barriers.
  for (int64_t item = blockIdx.x; item < geo.items; item += gridDim.x) {
    const RowItem it = row_item(geo, item, cl);
    const bool active = it.cv < geo.Cv;
    sum_t v[NV * VEC];
#pragma unroll
    for (int k = 0; k < NV * VEC; ++k) v[k] = sum_t(0);
    if (active) {
      const int64_t base = it.n * geo.HW * geo.Cv + it.cv;
      const V* xv = reinterpret_cast<const V*>(x) + base;
      const V* gv = BWD ? reinterpret_cast<const V*>(g) + base : nullptr;
#pragma unroll 4
      for (int64_t r = it.r0 + rl; r < it.r1; r += RL) {
        const V a = xv[r * geo.Cv];
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] += sum_t(a.v[e]);
        if constexpr (BWD) {
          const V b = gv[r * geo.Cv];
#pragma unroll
          for (int e = 0; e < VEC; ++e) v[VEC + e] += sum_t(b.v[e]) * sum_t(a.v[e]);
        }
      }
    }
    lane_sums<NV * VEC>(v, red, cl, rl, 1 << geo.cg_log2, RL);
    if (active && rl == 0) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        sum_t w[NV];
        w[0] = v[e];
        if constexpr (BWD) w[1] = v[VEC + e];
        put_sums<NV>(w, it.n * geo.C + it.cv * VEC + e, it.split, geo.splits, out0, out1, partial,
                     hw);
      }
    }
  }
}

// out0[i] = sum_p partial[i][p][0] / HW (and out1[i] = sum_p partial[i][p][1]), p in fixed order.
template <typename acc_t, int NV>
__global__ void __launch_bounds__(kThreads)
    se_finish_kernel(const sum_t* __restrict__ partial, int64_t count, int64_t parts,
                     acc_t* __restrict__ out0, acc_t* __restrict__ out1, sum_t hw) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step) {
    sum_t v[NV];
#pragma unroll
    for (int k = 0; k < NV; ++k) v[k] = sum_t(0);
    const sum_t* p = partial + i * parts * NV;
    for (int64_t s = 0; s < parts; ++s) {
#pragma unroll
      for (int k = 0; k < NV; ++k) v[k] += p[s * NV + k];
    }
    out0[i] = acc_t(v[0] / hw);
    if constexpr (NV > 1) out1[i] = acc_t(v[1]);
  }
}

// ---- the small [N, S] / [N, C] elementwise steps ----------------------------------------------

// z[i] += bias[i % cols] (z keeps the pre-activation), out[i] = act(z[i]).
template <typename acc_t, Act A>
__global__ void __launch_bounds__(kThreads)
    bias_act_kernel(acc_t* __restrict__ z, const acc_t* __restrict__ bias, acc_t* __restrict__ out,
                    int64_t n, int64_t cols) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    acc_t u = z[i];
    if (bias != nullptr) {
      u += bias[i % cols];
      z[i] = u;
    }
    out[i] = act_fwd<A>(u);
  }
}

// out[i] = g[i] * act'(u[i]).
template <typename acc_t, Act A>
__global__ void __launch_bounds__(kThreads)
    act_grad_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ u,
                    acc_t* __restrict__ out, int64_t n) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    out[i] = act_bwd<A>(g[i], u[i]);
  }
}

// ---- the scale pass --------------------------------------------------------------------------

// Plane layout: out = in * a[plane] (+ b[plane]), one warp per (plane, chunk).
template <typename T, int VEC, bool ADD>
__global__ void __launch_bounds__(kThreads)
    se_scale_planes_kernel(const T* __restrict__ in, const at::opmath_type<T>* __restrict__ a,
                           const at::opmath_type<T>* __restrict__ b, T* __restrict__ out,
                           const Geo geo) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, VEC>;
  const int lane = int(threadIdx.x) % kWarp;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + int64_t(threadIdx.x) / kWarp;
       item < geo.items; item += warps) {
    int64_t plane = item, chunk = 0;
    if (geo.chunks > 1) {
      plane = item / geo.chunks;
      chunk = item - plane * geo.chunks;
    }
    const acc_t av = a[plane];
    const acc_t bv = ADD ? b[plane] : acc_t(0);
    const int64_t u0 = chunk * geo.upc;
    const int64_t u1 = u0 + geo.upc < geo.HWv ? u0 + geo.upc : geo.HWv;
    const V* iv = reinterpret_cast<const V*>(in) + plane * geo.HWv;
    V* ov = reinterpret_cast<V*>(out) + plane * geo.HWv;
#pragma unroll 4
    for (int64_t u = u0 + lane; u < u1; u += kWarp) {
      const V s = iv[u];
      V o;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        o.v[e] = ADD ? T(acc_t(s.v[e]) * av + bv) : T(acc_t(s.v[e]) * av);
      }
      ov[u] = o;
    }
  }
}

// Row layout: out = in * a[n, c] (+ b[n, c]), per (image, split, channel group).
template <typename T, int VEC, bool ADD>
__global__ void __launch_bounds__(kThreads)
    se_scale_rows_kernel(const T* __restrict__ in, const at::opmath_type<T>* __restrict__ a,
                         const at::opmath_type<T>* __restrict__ b, T* __restrict__ out,
                         const Geo geo) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, VEC>;
  const int cl = int(threadIdx.x) & ((1 << geo.cg_log2) - 1);
  const int rl = int(threadIdx.x) >> geo.cg_log2;
  const int RL = kThreads >> geo.cg_log2;
  for (int64_t item = blockIdx.x; item < geo.items; item += gridDim.x) {
    const RowItem it = row_item(geo, item, cl);
    if (it.cv >= geo.Cv) continue;  // no barriers in this kernel
    acc_t av[VEC], bv[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const int64_t i = it.n * geo.C + it.cv * VEC + e;
      av[e] = a[i];
      bv[e] = ADD ? b[i] : acc_t(0);
    }
    const int64_t base = it.n * geo.HW * geo.Cv + it.cv;
    const V* iv = reinterpret_cast<const V*>(in) + base;
    V* ov = reinterpret_cast<V*>(out) + base;
#pragma unroll 4
    for (int64_t r = it.r0 + rl; r < it.r1; r += RL) {
      const V s = iv[r * geo.Cv];
      V o;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        o.v[e] = ADD ? T(acc_t(s.v[e]) * av[e] + bv[e]) : T(acc_t(s.v[e]) * av[e]);
      }
      ov[r * geo.Cv] = o;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

struct Plan {
  bool row;
  int vec;
  Geo g;
  unsigned blocks;
};

// vec_max: 16-byte units of the dtype; aligned: every tensor the passes walk is 16-byte aligned.
Plan make_plan(const char* op, const SEShape& s, bool cl, int vec_max, bool aligned) {
  Plan p{};
  p.row = cl || s.HW == 1;  // NCHW with H*W == 1 is [N][C] in memory, like NHWC
  p.vec = (aligned && (p.row ? s.C : s.HW) % vec_max == 0) ? vec_max : 1;
  Geo& g = p.g;
  g.N = s.N, g.C = s.C, g.HW = s.HW;
  const int64_t target = int64_t(max_resident_blocks()) * kWaves;  // blocks
  if (p.row) {
    g.Cv = s.C / p.vec;
    const int cg = choose_cg(g.Cv);
    g.cg_log2 = log2_ceil(cg);
    const int64_t cgroups = ceil_div(g.Cv, cg);
    TORCH_CHECK(cgroups <= std::numeric_limits<int>::max(), "fastops.", op, ": too many channels");
    g.cgroups = int(cgroups);
    const int64_t RL = kThreads / cg;
    const int64_t want = ceil_div(target, s.N * cgroups);
    const int64_t splits =
        std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(s.HW, RL * kMinUnitsPerThread)));
    g.rps = ceil_div(s.HW, splits);
    g.splits = ceil_div(s.HW, g.rps);  // no empty split
    g.items = s.N * g.splits * cgroups;
    g.HWv = 1, g.chunks = 1, g.upc = 1;
    p.blocks = unsigned(std::min<int64_t>(g.items, target));
  } else {
    g.HWv = s.HW / p.vec;
    const int64_t P = s.N * s.C;
    const int64_t want = ceil_div(target * kWarpsPerBlock, P);
    const int64_t chunks =
        std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(g.HWv, kWarp * kMinUnitsPerThread)));
    g.upc = ceil_div(g.HWv, chunks);
    g.chunks = ceil_div(g.HWv, g.upc);  // no empty chunk
    g.items = P * g.chunks;
    g.Cv = s.C, g.splits = 1, g.rps = 1, g.cgroups = 1, g.cg_log2 = 0;
    p.blocks = unsigned(std::min<int64_t>(ceil_div(g.items, kWarpsPerBlock), target));
  }
  return p;
}

int64_t parts_of(const Plan& p) { return p.row ? p.g.splits : p.g.chunks; }

// Calls f(std::integral_constant<int, V>{}, std::bool_constant<ROW>{}) for V = vec (1 or VMAX)
// and ROW = row.
template <int VMAX, typename F>
void dispatch_vec_layout(int vec, bool row, F&& f) {
  auto with_vec = [&](auto v_tag) {
    if (row) {
      f(v_tag, std::true_type{});
    } else {
      f(v_tag, std::false_type{});
    }
  };
  if (vec == VMAX) {
    with_vec(std::integral_constant<int, VMAX>{});
  } else {
    with_vec(std::integral_constant<int, 1>{});
  }
}

// out0 = mean_hw x (BWD: and out1 = sum_hw g * x), [N, C] in the accumulation type (summed in
// double, rounded once).
template <typename T, bool BWD>
void launch_reduce(const Plan& p, const at::Tensor& x, const at::Tensor& g, const at::Tensor& out0,
                   const at::Tensor& out1, cudaStream_t stream) {
  using acc_t = at::opmath_type<T>;
  constexpr int VMAX = 16 / sizeof(T);
  constexpr int NV = BWD ? 2 : 1;
  const int64_t parts = parts_of(p);
  const int64_t count = p.g.N * p.g.C;
  at::Tensor partial;
  if (parts > 1) partial = at::empty({count * parts * NV}, out0.options().dtype(at::kDouble));
  sum_t* pp = parts > 1 ? partial.mutable_data_ptr<sum_t>() : nullptr;
  const sum_t hw = sum_t(p.g.HW);
  const T* xp = x.const_data_ptr<T>();
  const T* gp = BWD ? g.const_data_ptr<T>() : nullptr;
  acc_t* o0 = out0.mutable_data_ptr<acc_t>();
  acc_t* o1 = BWD ? out1.mutable_data_ptr<acc_t>() : nullptr;
  dispatch_vec_layout<VMAX>(p.vec, p.row, [&](auto v_tag, auto row_tag) {
    constexpr int V = decltype(v_tag)::value;
    if constexpr (decltype(row_tag)::value) {
      se_reduce_rows_kernel<T, V, BWD>
          <<<p.blocks, kThreads, 0, stream>>>(xp, gp, o0, o1, pp, hw, p.g);
    } else {
      se_reduce_planes_kernel<T, V, BWD>
          <<<p.blocks, kThreads, 0, stream>>>(xp, gp, o0, o1, pp, hw, p.g);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (parts > 1) {
    se_finish_kernel<acc_t, NV><<<blocks_for(count), kThreads, 0, stream>>>(
        partial.const_data_ptr<sum_t>(), count, parts, o0, o1, hw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// out = in * a (+ b), a and b [N, C] in the accumulation type.
template <typename T, bool ADD>
void launch_scale(const Plan& p, const at::Tensor& in, const at::Tensor& a, const at::Tensor& b,
                  const at::Tensor& out, cudaStream_t stream) {
  using acc_t = at::opmath_type<T>;
  constexpr int VMAX = 16 / sizeof(T);
  const T* ip = in.const_data_ptr<T>();
  const acc_t* ap = a.const_data_ptr<acc_t>();
  const acc_t* bp = ADD ? b.const_data_ptr<acc_t>() : nullptr;
  T* op = out.mutable_data_ptr<T>();
  dispatch_vec_layout<VMAX>(p.vec, p.row, [&](auto v_tag, auto row_tag) {
    constexpr int V = decltype(v_tag)::value;
    if constexpr (decltype(row_tag)::value) {
      se_scale_rows_kernel<T, V, ADD><<<p.blocks, kThreads, 0, stream>>>(ip, ap, bp, op, p.g);
    } else {
      se_scale_planes_kernel<T, V, ADD><<<p.blocks, kThreads, 0, stream>>>(ip, ap, bp, op, p.g);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// z += bias (when given; z keeps the pre-activation), returns act(z). z: [rows, cols] contiguous.
at::Tensor bias_act(const at::Tensor& z, const at::Tensor& bias, Act act, cudaStream_t stream) {
  at::Tensor out = at::empty_like(z);
  const int64_t n = z.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "squeeze_excite", [&] {
    dispatch_act(act, [&](auto act_tag) {
      constexpr Act A = decltype(act_tag)::value;
      bias_act_kernel<scalar_t, A><<<blocks_for(n), kThreads, 0, stream>>>(
          z.mutable_data_ptr<scalar_t>(),
          bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), n, z.size(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

// g * act'(u), elementwise; g, u contiguous of one shape.
at::Tensor act_grad(const at::Tensor& g, const at::Tensor& u, Act act, cudaStream_t stream) {
  at::Tensor out = at::empty_like(u);
  const int64_t n = u.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "squeeze_excite_backward", [&] {
    dispatch_act(act, [&](auto act_tag) {
      constexpr Act A = decltype(act_tag)::value;
      act_grad_kernel<scalar_t, A><<<blocks_for(n), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

// The FC weights and biases in the accumulation type: w1 [S, C], w2 [C, S], biases [S] / [C]
// (undefined where not given).
struct FcParams {
  at::Tensor w1, b1, w2, b2;
};

FcParams fc_params(const SEShape& s, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                   const at::Tensor& w2, const c10::optional<at::Tensor>& b2, at::ScalarType acc) {
  FcParams f;
  f.w1 = w1.reshape({s.S, s.C}).to(acc).contiguous();
  f.w2 = w2.reshape({s.C, s.S}).to(acc).contiguous();
  if (b1.has_value() && b1->defined()) f.b1 = b1->to(acc).contiguous();
  if (b2.has_value() && b2->defined()) f.b2 = b2->to(acc).contiguous();
  return f;
}

// The excitation from the pooled p [N, C]: z (pre-activation) and h [N, S], t (pre-gate) and
// s [N, C].
struct Hidden {
  at::Tensor z, h, t, s;
};

Hidden excite(const at::Tensor& p, const FcParams& f, Act act, Act gate, cudaStream_t stream) {
  Hidden r;
  r.z = at::mm(p, f.w1.t());
  r.h = bias_act(r.z, f.b1, act, stream);
  r.t = at::mm(r.h, f.w2.t());
  r.s = bias_act(r.t, f.b2, gate, stream);
  return r;
}

at::Tensor squeeze_excite_cuda(const at::Tensor& x, const at::Tensor& w1,
                               const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                               const c10::optional<at::Tensor>& b2, std::string_view act_name,
                               std::string_view gate_name) {
  constexpr const char* op = "squeeze_excite";
  const SEShape s = check_squeeze_excite(op, x, w1, b1, w2, b2);
  const Act act = parse_act(op, act_name);
  const Act gate = parse_act(op, gate_name, "gate");
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (y.numel() == 0) return y;  // N == 0 (C and H*W are > 0 by the checks)

  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const at::Tensor xc = x.contiguous(fmt);
  const FcParams f = fc_params(s, w1, b1, w2, b2, acc);
  at::Tensor p = at::empty({s.N, s.C}, x.options().dtype(acc));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    const bool aligned = aligned16(xc.const_data_ptr()) && aligned16(y.const_data_ptr());
    const Plan plan = make_plan(op, s, cl, 16 / sizeof(scalar_t), aligned);
    launch_reduce<scalar_t, false>(plan, xc, at::Tensor(), p, at::Tensor(), stream);
    const Hidden hid = excite(p, f, act, gate, stream);
    launch_scale<scalar_t, false>(plan, xc, hid.s, at::Tensor(), y, stream);
  });
  return y;
}

// A new tensor of `dtype` holding src's values in `shape` (contiguous).
at::Tensor fresh_as(const at::Tensor& src, at::IntArrayRef shape, at::ScalarType dtype) {
  at::Tensor out = at::empty(src.sizes(), src.options().dtype(dtype));
  out.copy_(src);
  return out.view(shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    std::string_view act_name, std::string_view gate_name) {
  constexpr const char* op = "squeeze_excite_backward";
  const SEShape s = check_squeeze_excite(op, x, w1, b1, w2, b2);
  check_floating(op, "grad_out", grad_out);
  check_like(op, "grad_out", grad_out, "x", x);
  const Act act = parse_act(op, act_name);
  const Act gate = parse_act(op, gate_name, "gate");
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType b1_dtype =
      b1.has_value() && b1->defined() ? b1->scalar_type() : x.scalar_type();
  const at::ScalarType b2_dtype =
      b2.has_value() && b2->defined() ? b2->scalar_type() : x.scalar_type();
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (s.N == 0) {  // no samples: every parameter gradient is zero
    return std::make_tuple(grad_x, at::zeros(w1.sizes(), w1.options()),
                           at::zeros({s.S}, x.options().dtype(b1_dtype)),
                           at::zeros(w2.sizes(), w2.options()),
                           at::zeros({s.C}, x.options().dtype(b2_dtype)));
  }

  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const auto acc_opts = x.options().dtype(acc);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor go = grad_out.contiguous(fmt);
  const FcParams f = fc_params(s, w1, b1, w2, b2, acc);
  at::Tensor p = at::empty({s.N, s.C}, acc_opts);   // mean_hw x
  at::Tensor gs = at::empty({s.N, s.C}, acc_opts);  // sum_hw g * x
  at::Tensor grad_w1, grad_b1, grad_w2, grad_b2;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    const bool aligned = aligned16(xc.const_data_ptr()) && aligned16(go.const_data_ptr()) &&
                         aligned16(grad_x.const_data_ptr());
    const Plan plan = make_plan(op, s, cl, 16 / sizeof(scalar_t), aligned);
    launch_reduce<scalar_t, true>(plan, xc, go, p, gs, stream);

    const Hidden hid = excite(p, f, act, gate, stream);
    const at::Tensor gt = act_grad(gs, hid.t, gate, stream);  // [N, C]
    grad_b2 = at::sum(gt, 0);
    grad_w2 = at::mm(gt.t(), hid.h);                          // [C, S]
    const at::Tensor gz = act_grad(at::mm(gt, f.w2), hid.z, act, stream);  // [N, S]
    grad_b1 = at::sum(gz, 0);
    grad_w1 = at::mm(gz.t(), p);                              // [S, C]
    at::Tensor gq = at::mm(gz, f.w1);                         // gp [N, C]
    gq.div_(double(s.HW));                                    // gp / (H*W)

    launch_scale<scalar_t, true>(plan, go, hid.s, gq, grad_x, stream);
  });

  return std::make_tuple(grad_x, fresh_as(grad_w1, w1.sizes(), w1.scalar_type()),
                         fresh_as(grad_b1, {s.S}, b1_dtype),
                         fresh_as(grad_w2, w2.sizes(), w2.scalar_type()),
                         fresh_as(grad_b2, {s.C}, b2_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("squeeze_excite", &squeeze_excite_cuda);
  m.impl("squeeze_excite_backward", &squeeze_excite_backward_cuda);
}

}  // namespace cuda
}  // namespace fastops
