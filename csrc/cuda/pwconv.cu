// CUDA kernels of fastops::pwconv_bn_act and fastops::pwconv_bn_act_backward: float32, float16,
// bfloat16 (float math) and float64 (double math), NCHW and channels_last (NHWC). Argument checks
// and the formulas are csrc/pwconv.h, the channel map csrc/shuffle.h, the activation formulas
// csrc/activation.h (the ones the CPU kernels run).
//
//   z = conv1x1(x, weight, groups)  (the GEMM, through ATen: cuBLAS batched GEMMs on strided views
//       (at::bmm) for channels_last and for ungrouped NCHW, cuDNN (at::_convolution) for grouped
//       NCHW; z in x's dtype, like the reference's conv; float32 without TF32 unless
//       torch.backends.cuda.matmul.allow_tf32 is set)
//   u[c] = z[c] * scale[c] + shift[c] (+ residual[c]),  y[q] = act(u[shuffle_source(q, G, OC / G)])
//   backward: z recomputed by the same GEMM; gu[c] = act'(u[c]) * grad_out[q(c)], q(c) the output
//       position of conv channel c (shuffle_source(c, OC / G, G), the inverse map);
//       grad_shift = sum gu, grad_scale = sum gu * z, grad_residual = gu, gz = gu * scale;
//       grad_x = gz @ w per group (at::bmm, or cuDNN for grouped NCHW), grad_weight = gz^T @ x per
//       group over all N*H*W positions (at::bmm on the row layout; NCHW copies gz and x to
//       channels_last for it).
//
// Work decomposition of the fused kernels (VEC = 16 bytes of elements where the layout and the
// pointers' alignment allow, else 1):
//   pw_fwd_planes_kernel  NCHW, H*W > 1: output plane (n, q) from conv plane (n, c(q)); a team of
//       TPC threads (a power of two <= 256) per plane, 256 / TPC teams per block, a grid-stride
//       loop over the planes with (n, q) stepped incrementally; scale / shift loaded once per
//       plane.
//   pw_fwd_rows_kernel    channels_last, or H*W == 1 ([rows][OC] in memory): thread = (unit of VEC
//       output channels, row lane); each thread keeps its channels' sources, scale and shift for
//       its whole life; z / residual reads gather within one pixel's channel vector, y writes are
//       16-byte units.
//   pw_bwd_planes_kernel  NCHW, H*W > 1: block = (conv channel c, split of its N*H*W positions);
//       256 threads at consecutive positions (coalesced), (image, position) stepped incrementally;
//       grad_out is read from plane q(c) (contiguous too).
//   pw_bwd_rows_kernel    row layout: block = (group of CG channel units, split of the rows);
//       thread = (channel unit, row lane), grad_out gathered at q(c) within each row.
//   Both backward kernels write gz (and grad_residual) and one row of per-channel partial sums
//   (sum gu, sum gu * z) per block (a tree over the block in shared memory); pw_sum_splits_kernel
//   adds the rows in a fixed order (two levels, no atomics: deterministic).
// All launches go to the current stream of x's device and are checked; nothing is launched for an
// empty output. Offsets are 64-bit; channel indices are checked to fit in 31 bits.
//
// pwconv_forward / pwconv_backward (namespace fastops::cuda, declared in csrc/cuda/kernels.h) are
// also called by csrc/cuda/separable.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>  // C10_HOST_DEVICE, used by IntegerDivider.cuh
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/Context.h>
#include <ATen/ops/_convolution.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
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
#include <vector>

#include "../activation.h"
#include "../pwconv.h"
#include "kernels.h"      // pwconv_forward, pwconv_backward (declared for csrc/cuda/separable.cu)
#include "block.cuh"      // lane_sums, ceil_div, log2_ceil, choose_cg
#include "pointwise.cuh"  // kThreads, Pack, max_resident_blocks, aligned16

namespace fastops {
namespace cuda {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kMinUnitsPerThread = 4;  // a backward split gives every thread at least this much
constexpr int kWaves = 4;              // backward blocks aimed for: kWaves x the resident blocks

// o -> shuffle_source(o, G, K) = (o % G) * K + o / G (csrc/shuffle.h), the division by G done by
// multiplication (valid for o < 2^31). Forward: G = shuffle_groups, K = OC / G (output q -> conv
// channel); backward: the inverse, G = OC / shuffle_groups, K = shuffle_groups (conv channel c ->
// output position). G = 1, K = OC is the identity.
struct ChannelMap {
  IntDivider<unsigned> G;
  unsigned K;
  __device__ __forceinline__ int64_t source(int64_t o) const {
    const auto qr = G.divmod(unsigned(o));
    return int64_t(qr.mod) * K + qr.div;
  }
};

template <typename acc_t>
__device__ __forceinline__ acc_t load_or(const acc_t* p, int64_t i, acc_t dflt) {
  return p != nullptr ? p[i] : dflt;
}

// ---- forward epilogue --------------------------------------------------------------------------

template <typename T, int VEC, Act A>
__global__ void __launch_bounds__(kThreads)
    pw_fwd_planes_kernel(const T* __restrict__ z, const T* __restrict__ res,
                         const at::opmath_type<T>* __restrict__ scale,
                         const at::opmath_type<T>* __restrict__ shift, T* __restrict__ y,
                         const ChannelMap map, int64_t OC, int64_t P, int64_t HW, int tpc_log2) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, VEC>;
  const int tpc = 1 << tpc_log2;
  const int lane = int(threadIdx.x) & (tpc - 1);
  const int64_t teams_per_block = kThreads >> tpc_log2;
  const int64_t teams = int64_t(gridDim.x) * teams_per_block;  // planes per grid step
  int64_t p = int64_t(blockIdx.x) * teams_per_block + (int64_t(threadIdx.x) >> tpc_log2);
  if (p >= P) return;  // no block-wide synchronisation below
  int64_t n = p / OC;
  int64_t q = p - n * OC;
  const int64_t dn = teams / OC;
  const int64_t dq = teams - dn * OC;
  const int64_t HWv = HW / VEC;
  for (; p < P; p += teams) {
    const int64_t c = map.source(q);
    const acc_t sc = load_or(scale, c, acc_t(1));
    const acc_t sh = load_or(shift, c, acc_t(0));
    const int64_t src = (n * OC + c) * HWv;  // in units
    const V* zv = reinterpret_cast<const V*>(z) + src;
    const V* rv = res != nullptr ? reinterpret_cast<const V*>(res) + src : nullptr;
    V* yv = reinterpret_cast<V*>(y) + p * HWv;
    for (int64_t u = lane; u < HWv; u += tpc) {
      const V a = zv[u];
      V o;
      if (rv != nullptr) {
        const V r = rv[u];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          o.v[k] = T(act_fwd<A>(acc_t(a.v[k]) * sc + sh + acc_t(r.v[k])));
        }
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) o.v[k] = T(act_fwd<A>(acc_t(a.v[k]) * sc + sh));
      }
      yv[u] = o;
    }
    n += dn;
    q += dq;
    if (q >= OC) {
      q -= OC;
      ++n;
    }
  }
}

template <typename T, int VEC, Act A>
__global__ void __launch_bounds__(kThreads)
    pw_fwd_rows_kernel(const T* __restrict__ z, const T* __restrict__ res,
                       const at::opmath_type<T>* __restrict__ scale,
                       const at::opmath_type<T>* __restrict__ shift, T* __restrict__ y,
                       const ChannelMap map, int64_t OC, int64_t OCv, int64_t M, int cg_log2,
                       int cgroups) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, VEC>;
  const int cl = int(threadIdx.x) & ((1 << cg_log2) - 1);
  const int rl = int(threadIdx.x) >> cg_log2;
  const int RL = kThreads >> cg_log2;
  const int cgi = int(blockIdx.x % unsigned(cgroups));
  const int64_t split = blockIdx.x / unsigned(cgroups);
  const int64_t splits = gridDim.x / unsigned(cgroups);  // the grid is cgroups * splits blocks
  const int64_t qv = (int64_t(cgi) << cg_log2) + cl;
  if (qv >= OCv) return;  // no block-wide synchronisation below

  int64_t c[VEC];
  acc_t sc[VEC], sh[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    c[k] = map.source(qv * VEC + k);
    sc[k] = load_or(scale, c[k], acc_t(1));
    sh[k] = load_or(shift, c[k], acc_t(0));
  }
  V* yv = reinterpret_cast<V*>(y) + qv;
  const int64_t step = splits * RL;
#pragma unroll 2
  for (int64_t r = split * RL + rl; r < M; r += step) {
    const T* zr = z + r * OC;
    V o;
    if (res != nullptr) {
      const T* rr = res + r * OC;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        o.v[k] = T(act_fwd<A>(acc_t(zr[c[k]]) * sc[k] + sh[k] + acc_t(rr[c[k]])));
      }
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) o.v[k] = T(act_fwd<A>(acc_t(zr[c[k]]) * sc[k] + sh[k]));
    }
    yv[r * OCv] = o;
  }
}

// ---- backward ----------------------------------------------------------------------------------

// The geometry of one backward call (see the file comment).
struct BwdGeo {
  int64_t OC, HWv;  // plane layout: units per plane
  int64_t OCv;      // row layout: channel units per row
  int64_t Mu;       // plane: units per channel (N * HWv); row: rows (N * H * W)
  int64_t upb;      // units (plane) / rows (row) per block
  int64_t splits;   // blocks per channel (plane) / channel group (row)
  int cgroups;      // row layout: groups of CG channel units
  int cg_log2;      // row layout: log2(CG)
};

// One element of the backward: gu = act'(u) * g; returns gu, accumulates the sums.
template <Act A, typename acc_t>
__device__ __forceinline__ acc_t bwd_one(acc_t zv, acc_t rv, acc_t gv, acc_t sc, acc_t sh,
                                         acc_t& s_gu, acc_t& s_guz) {
  const acc_t gu = act_bwd<A>(gv, zv * sc + sh + rv);
  s_gu += gu;
  s_guz += gu * zv;
  return gu;
}

// partial[split][0][c] = sum gu, partial[split][1][c] = sum gu * z over the block's positions.
template <typename T, int VEC, Act A>
__global__ void __launch_bounds__(kThreads)
    pw_bwd_planes_kernel(const T* __restrict__ gout, const T* __restrict__ z,
                         const T* __restrict__ res, const at::opmath_type<T>* __restrict__ scale,
                         const at::opmath_type<T>* __restrict__ shift, T* __restrict__ gr,
                         T* __restrict__ gz, at::opmath_type<T>* __restrict__ partial,
                         const ChannelMap inv, const BwdGeo g) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, VEC>;
  __shared__ acc_t red[2 * kThreads];
  const int tid = int(threadIdx.x);
  const int64_t c = int64_t(blockIdx.x) % g.OC;
  const int64_t split = int64_t(blockIdx.x) / g.OC;
  const int64_t delta = (inv.source(c) - c) * g.HWv;  // grad_out's plane relative to z's
  const acc_t sc = load_or(scale, c, acc_t(1));
  const acc_t sh = load_or(shift, c, acc_t(0));

  const int64_t start = split * g.upb;
  const int64_t end = start + g.upb < g.Mu ? start + g.upb : g.Mu;
  int64_t p = start + tid;
  const int64_t n = p / g.HWv;
  int64_t hw = p - n * g.HWv;
  const int64_t img = g.OC * g.HWv;  // units per image
  int64_t off = n * img + c * g.HWv + hw;
  const int64_t dn = kThreads / g.HWv;
  const int64_t dhw = kThreads - dn * g.HWv;
  const int64_t off_step = dn * img + dhw;
  const int64_t wrap = img - g.HWv;  // past a plane's end: the same position of the next image

  const V* zv = reinterpret_cast<const V*>(z);
  const V* rv = reinterpret_cast<const V*>(res);
  const V* gv = reinterpret_cast<const V*>(gout);
  V* grv = reinterpret_cast<V*>(gr);
  V* gzv = reinterpret_cast<V*>(gz);
  acc_t s[2] = {acc_t(0), acc_t(0)};
  for (; p < end; p += kThreads) {
    const V a = zv[off];
    const V gg = gv[off + delta];
    V r;
    if (rv != nullptr) {
      r = rv[off];
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) r.v[k] = T(0);
    }
    V o_gu, o_gz;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t gu = bwd_one<A>(acc_t(a.v[k]), acc_t(r.v[k]), acc_t(gg.v[k]), sc, sh, s[0], s[1]);
      o_gu.v[k] = T(gu);
      o_gz.v[k] = T(gu * sc);
    }
    if (grv != nullptr) grv[off] = o_gu;
    gzv[off] = o_gz;
    off += off_step;
    hw += dhw;  // hw, dhw < HWv: at most one wrap
    if (hw >= g.HWv) {
      hw -= g.HWv;
      off += wrap;
    }
  }
  lane_sums<2>(s, red, 0, tid, 1, kThreads);
  if (tid == 0) {
    partial[(split * 2) * g.OC + c] = s[0];
    partial[(split * 2 + 1) * g.OC + c] = s[1];
  }
}

template <typename T, int VEC, Act A>
__global__ void __launch_bounds__(kThreads)
    pw_bwd_rows_kernel(const T* __restrict__ gout, const T* __restrict__ z,
                       const T* __restrict__ res, const at::opmath_type<T>* __restrict__ scale,
                       const at::opmath_type<T>* __restrict__ shift, T* __restrict__ gr,
                       T* __restrict__ gz, at::opmath_type<T>* __restrict__ partial,
                       const ChannelMap inv, const BwdGeo g) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, VEC>;
  __shared__ acc_t red[2 * VEC * kThreads];
  const int cl = int(threadIdx.x) & ((1 << g.cg_log2) - 1);
  const int rl = int(threadIdx.x) >> g.cg_log2;
  const int RL = kThreads >> g.cg_log2;
  const int cgi = int(blockIdx.x % unsigned(g.cgroups));
  const int64_t split = blockIdx.x / unsigned(g.cgroups);
  const int64_t cv = (int64_t(cgi) << g.cg_log2) + cl;
  const bool active = cv < g.OCv;  // inactive threads still take part in lane_sums

  int64_t q[VEC];
  acc_t sc[VEC], sh[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const int64_t c = cv * VEC + k;
    q[k] = active ? inv.source(c) : 0;
    sc[k] = active ? load_or(scale, c, acc_t(1)) : acc_t(1);
    sh[k] = active ? load_or(shift, c, acc_t(0)) : acc_t(0);
  }
  acc_t s[2 * VEC];
#pragma unroll
  for (int k = 0; k < 2 * VEC; ++k) s[k] = acc_t(0);

  if (active) {
    const int64_t start = split * g.upb;
    const int64_t end = start + g.upb < g.Mu ? start + g.upb : g.Mu;
    const V* zv = reinterpret_cast<const V*>(z);
    const V* rv = reinterpret_cast<const V*>(res);
    V* grv = reinterpret_cast<V*>(gr);
    V* gzv = reinterpret_cast<V*>(gz);
    for (int64_t r = start + rl; r < end; r += RL) {
      const int64_t off = r * g.OCv + cv;
      const V a = zv[off];
      V rr;
      if (rv != nullptr) {
        rr = rv[off];
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) rr.v[k] = T(0);
      }
      const T* gp = gout + r * g.OC;
      V o_gu, o_gz;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const acc_t gu = bwd_one<A>(acc_t(a.v[k]), acc_t(rr.v[k]), acc_t(gp[q[k]]), sc[k], sh[k],
                                    s[k], s[VEC + k]);
        o_gu.v[k] = T(gu);
        o_gz.v[k] = T(gu * sc[k]);
      }
      if (grv != nullptr) grv[off] = o_gu;
      gzv[off] = o_gz;
    }
  }
  lane_sums<2 * VEC>(s, red, cl, rl, 1 << g.cg_log2, RL);
  if (active && rl == 0) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      partial[(split * 2) * g.OC + cv * VEC + k] = s[k];
      partial[(split * 2 + 1) * g.OC + cv * VEC + k] = s[VEC + k];
    }
  }
}

// out[i] = sum_s partial[s * cols + i], s in fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pw_sum_splits_kernel(const acc_t* __restrict__ partial, int64_t splits, int64_t cols,
                         acc_t* __restrict__ out) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < cols; i += step) {
    acc_t v = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) v += partial[s * cols + i];
    out[i] = v;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

ChannelMap make_map(int64_t G, int64_t K) {
  return ChannelMap{IntDivider<unsigned>(unsigned(G)), unsigned(K)};
}

// scale / shift in the accumulation type, contiguous; undefined when not given.
at::Tensor param_as(const c10::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(acc).contiguous();
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

bool given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// [rows, C] view of a 4-D tensor dense in the row layout (channels_last, or H*W == 1).
at::Tensor rows_of(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).view({-1, t.size(1)}); }

// [G, rows, C / G] view of a [rows, C] matrix: batch g is channel group g.
at::Tensor by_group(const at::Tensor& rows, int64_t G) {
  return rows.view({rows.size(0), G, rows.size(1) / G}).transpose(0, 1);
}

// stride / dilation and padding of the 1x1 convolution.
constexpr int64_t kOnesData[2] = {1, 1};
constexpr int64_t kZerosData[2] = {0, 0};
constexpr at::IntArrayRef kOnes(kOnesData);
constexpr at::IntArrayRef kZeros(kZerosData);

// A grouped 1x1 convolution through cuDNN. The op is a matrix product, so float32 follows the
// matmul TF32 setting (torch.backends.cuda.matmul.allow_tf32, off by default) as the cuBLAS paths
// do, not cuDNN's (on by default), which would cost float32 about three digits.
at::Tensor grouped_conv1x1(const at::Tensor& in, const at::Tensor& weight, int64_t groups) {
  const auto& ctx = at::globalContext();
  return at::_convolution(in, weight, c10::nullopt, kOnes, kZeros, kOnes, /*transposed=*/false,
                          kZeros, groups, ctx.benchmarkCuDNN(),
                          ctx.deterministicCuDNN() || ctx.deterministicAlgorithms(),
                          ctx.userEnabledCuDNN(), ctx.allowTF32CuBLAS());
}

// z = the 1x1 convolution of xc (dense in the output layout fmt), dense in that layout.
//   row layout: per group g, z_g [rows, OCg] = x_g [rows, Cg] @ w_g^T: one batched GEMM (batch =
//       group) on strided views, no copies;
//   NCHW, groups == 1: z[n] [OC, HW] = w [OC, C] @ x[n] [C, HW]: one batched GEMM (batch = image,
//       the weight broadcast with batch stride 0);
//   NCHW, groups > 1: cuDNN (grouped_conv1x1).
at::Tensor conv1x1(const PwShape& s, const at::Tensor& xc, const at::Tensor& weight, bool row,
                   at::MemoryFormat fmt) {
  const int64_t G = s.groups, HW = s.H * s.W;
  if (!row && G > 1) return grouped_conv1x1(xc, weight, G).contiguous(fmt);
  const at::Tensor w3 = weight.reshape({G, s.OCg(), s.Cg()});
  at::Tensor z = at::empty({s.N, s.OC, s.H, s.W}, xc.options().memory_format(fmt));
  if (row) {
    at::Tensor zg = by_group(rows_of(z), G);                        // [G, rows, OCg]
    at::bmm_out(zg, by_group(rows_of(xc), G), w3.transpose(1, 2));  // [G, rows, Cg] @ [G, Cg, OCg]
  } else {
    at::Tensor z3 = z.view({s.N, s.OC, HW});
    at::bmm_out(z3, w3.expand({s.N, s.OC, s.C}), xc.view({s.N, s.C, HW}));
  }
  return z;
}

// grad_x (into grad_x, dense in fmt; reassigned on the cuDNN path) and grad_weight of the 1x1
// convolution, from gz (dense in fmt).
at::Tensor conv1x1_backward(const PwShape& s, const at::Tensor& gz, const at::Tensor& xc,
                            const at::Tensor& weight, bool row, at::MemoryFormat fmt,
                            at::Tensor& grad_x) {
  const int64_t G = s.groups, HW = s.H * s.W;
  const at::Tensor w3 = weight.reshape({G, s.OCg(), s.Cg()});
  if (row) {
    at::Tensor gxg = by_group(rows_of(grad_x), G);  // [G, rows, Cg]
    at::bmm_out(gxg, by_group(rows_of(gz), G), w3);  // [G, rows, OCg] @ [G, OCg, Cg]
  } else if (G == 1) {
    at::Tensor gx3 = grad_x.view({s.N, s.C, HW});   // [C, OC] @ [OC, HW] per image
    at::bmm_out(gx3, w3.transpose(1, 2).expand({s.N, s.C, s.OC}), gz.view({s.N, s.OC, HW}));
  } else {
    // The input gradient of a stride-1 1x1 conv is the 1x1 conv with the transposed weights.
    const at::Tensor wt = w3.transpose(1, 2).contiguous().view({s.C, s.OCg(), 1, 1});
    grad_x = grouped_conv1x1(gz, wt, G).contiguous(fmt);
  }
  // grad_w_g [OCg, Cg] = gz_g^T @ x_g over all rows: one batched GEMM with K = N*H*W, which needs
  // the row layout (NCHW: gz and x are copied to channels_last for it).
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor gz_rows = rows_of(row ? gz : gz.contiguous(cl));
  const at::Tensor x_rows = rows_of(row ? xc : xc.contiguous(cl));
  at::Tensor grad_w = at::empty({G, s.OCg(), s.Cg()}, weight.options());
  at::bmm_out(grad_w, by_group(gz_rows, G).transpose(1, 2), by_group(x_rows, G));
  return grad_w.view(weight.sizes());
}

// A new tensor of dtype `dtype` and `shape` (contiguous) holding src's values.
at::Tensor fresh_copy(const at::Tensor& src, at::IntArrayRef shape, at::ScalarType dtype) {
  at::Tensor out = at::empty(src.sizes(), src.options().dtype(dtype));
  out.copy_(src);
  return out.view(shape);
}

void check_channel_range(const char* op, const PwShape& s) {
  TORCH_CHECK_VALUE(s.OC <= std::numeric_limits<int32_t>::max(), "fastops.", op, ": ", s.OC,
                    " output channels are too many for the CUDA kernel");
}

// Calls f(std::integral_constant<int, V>{}) for V = vec (1 or VMAX).
template <int VMAX, typename F>
void dispatch_vec(int vec, F&& f) {
  if (vec == VMAX) {
    f(std::integral_constant<int, VMAX>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

template <typename T>
void launch_forward(const char* op, const PwShape& s, bool row, Act act, const at::Tensor& z,
                    const at::Tensor& res, const at::Tensor& sc, const at::Tensor& sh,
                    const at::Tensor& y, cudaStream_t stream) {
  using acc_t = at::opmath_type<T>;
  constexpr int VMAX = 16 / sizeof(T);
  const T* zp = z.const_data_ptr<T>();
  const T* rp = res.defined() ? res.const_data_ptr<T>() : nullptr;
  T* yp = y.mutable_data_ptr<T>();
  const ChannelMap map = make_map(s.shuffle, s.OC / s.shuffle);
  const int64_t HW = s.H * s.W;
  dispatch_act(act, [&](auto act_tag) {
    constexpr Act A = decltype(act_tag)::value;
    if (!row) {
      const bool vec = HW % VMAX == 0 && aligned16(zp) && aligned16(rp) && aligned16(yp);
      const int64_t HWv = vec ? HW / VMAX : HW;
      const int tpc_log2 = std::min(log2_ceil(HWv), log2_ceil(kThreads));
      const int64_t P = s.N * s.OC;
      const int64_t teams_per_block = kThreads >> tpc_log2;
      const unsigned blocks =
          unsigned(std::min<int64_t>(ceil_div(P, teams_per_block), max_resident_blocks()));
      dispatch_vec<VMAX>(vec ? VMAX : 1, [&](auto v_tag) {
        constexpr int V = decltype(v_tag)::value;
        pw_fwd_planes_kernel<T, V, A><<<blocks, kThreads, 0, stream>>>(
            zp, rp, ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), yp, map, s.OC, P, HW, tpc_log2);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    } else {
      const bool vec = s.OC % VMAX == 0 && aligned16(yp);
      const int64_t OCv = vec ? s.OC / VMAX : s.OC;
      const int64_t M = s.N * HW;
      const int cg = choose_cg(OCv);
      const int64_t cgroups = ceil_div(OCv, cg);
      const int64_t want = ceil_div(max_resident_blocks(), cgroups);
      const int64_t splits =
          std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(M, kThreads / cg)));
      TORCH_CHECK(cgroups * splits <= std::numeric_limits<int>::max(), "fastops.", op,
                  ": the output is too large for one CUDA launch");
      const unsigned blocks = unsigned(cgroups * splits);
      dispatch_vec<VMAX>(vec ? VMAX : 1, [&](auto v_tag) {
        constexpr int V = decltype(v_tag)::value;
        pw_fwd_rows_kernel<T, V, A><<<blocks, kThreads, 0, stream>>>(
            zp, rp, ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), yp, map, s.OC, OCv, M,
            log2_ceil(cg), int(cgroups));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
}

// gz (and gr when defined) and sums = [sum gu (OC), sum gu * z (OC)].
template <typename T>
void launch_backward(const char* op, const PwShape& s, bool row, Act act, const at::Tensor& go,
                     const at::Tensor& z, const at::Tensor& res, const at::Tensor& sc,
                     const at::Tensor& sh, const at::Tensor& gr, const at::Tensor& gz,
                     const at::Tensor& sums, cudaStream_t stream) {
  using acc_t = at::opmath_type<T>;
  constexpr int VMAX = 16 / sizeof(T);
  const T* gop = go.const_data_ptr<T>();
  const T* zp = z.const_data_ptr<T>();
  const T* rp = res.defined() ? res.const_data_ptr<T>() : nullptr;
  T* grp = gr.defined() ? gr.mutable_data_ptr<T>() : nullptr;
  T* gzp = gz.mutable_data_ptr<T>();
  // conv channel c -> its output position: the inverse shuffle.
  const ChannelMap inv = make_map(s.OC / s.shuffle, s.shuffle);
  const int64_t HW = s.H * s.W;
  const int64_t target = int64_t(max_resident_blocks()) * kWaves;
  bool vec;
  int64_t groups;  // blocks per split
  int64_t min_upb;
  BwdGeo g{};
  g.OC = s.OC;
  if (!row) {
    vec = HW % VMAX == 0 && aligned16(gop) && aligned16(zp) && aligned16(rp) && aligned16(grp) &&
          aligned16(gzp);
    g.HWv = vec ? HW / VMAX : HW;
    g.OCv = s.OC;
    g.Mu = s.N * g.HWv;
    g.cgroups = 1, g.cg_log2 = 0;
    groups = s.OC;
    min_upb = int64_t(kThreads) * kMinUnitsPerThread;
  } else {
    vec = s.OC % VMAX == 0 && aligned16(zp) && aligned16(rp) && aligned16(grp) && aligned16(gzp);
    g.HWv = 1;
    g.OCv = vec ? s.OC / VMAX : s.OC;
    g.Mu = s.N * HW;
    const int cg = choose_cg(g.OCv);
    g.cg_log2 = log2_ceil(cg);
    groups = ceil_div(g.OCv, cg);
    TORCH_CHECK(groups <= std::numeric_limits<int>::max(), "fastops.", op, ": too many channels");
    g.cgroups = int(groups);
    min_upb = int64_t(kThreads / cg) * kMinUnitsPerThread;
  }
  const int64_t splits =
      std::max<int64_t>(1, std::min<int64_t>(ceil_div(target, groups), ceil_div(g.Mu, min_upb)));
  g.upb = ceil_div(g.Mu, splits);
  g.splits = ceil_div(g.Mu, g.upb);  // no empty split
  TORCH_CHECK(groups * g.splits <= std::numeric_limits<int>::max(), "fastops.", op,
              ": the output is too large for one CUDA launch");
  const unsigned blocks = unsigned(groups * g.splits);
  at::Tensor partial = at::empty({g.splits * 2 * s.OC}, sums.options());

  dispatch_act(act, [&](auto act_tag) {
    constexpr Act A = decltype(act_tag)::value;
    dispatch_vec<VMAX>(vec ? VMAX : 1, [&](auto v_tag) {
      constexpr int V = decltype(v_tag)::value;
      if (!row) {
        pw_bwd_planes_kernel<T, V, A><<<blocks, kThreads, 0, stream>>>(
            gop, zp, rp, ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), grp, gzp,
            partial.mutable_data_ptr<acc_t>(), inv, g);
      } else {
        pw_bwd_rows_kernel<T, V, A><<<blocks, kThreads, 0, stream>>>(
            gop, zp, rp, ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), grp, gzp,
            partial.mutable_data_ptr<acc_t>(), inv, g);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  const int64_t cols = 2 * s.OC;
  pw_sum_splits_kernel<acc_t><<<blocks_for(cols), kThreads, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), g.splits, cols, sums.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// The forward with the output layout given (cl): y = act(conv1x1(x) * scale + shift (+ residual)),
// channel-shuffled. `s` is check_pwconv's result for these arguments.
at::Tensor pwconv_forward(const char* op, const PwShape& s, const at::Tensor& x,
                          const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                          const c10::optional<at::Tensor>& shift, Act act,
                          const c10::optional<at::Tensor>& residual, bool cl) {
  check_channel_range(op, s);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({s.N, s.OC, s.H, s.W}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const bool row = cl || s.H * s.W == 1;  // [rows][OC] in memory
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor z = conv1x1(s, xc, weight, row, fmt);
  const at::Tensor res = given(residual) ? residual->contiguous(fmt) : at::Tensor();
  const at::Tensor sc = param_as(scale, acc);
  const at::Tensor sh = param_as(shift, acc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pwconv_bn_act", [&] {
    launch_forward<scalar_t>(op, s, row, act, z, res, sc, sh, y, stream);
  });
  return y;
}

// The backward with the input-gradient layout given (cl) -> (grad_x, grad_weight, grad_scale,
// grad_shift, grad_residual); grad_residual is left undefined unless want_grad_residual (the op
// wants it when it has a residual, and returns no_grad_residual otherwise).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pwconv_backward(
    const char* op, const PwShape& s, const at::Tensor& grad_out, const at::Tensor& x,
    const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& shift, Act act, const c10::optional<at::Tensor>& residual,
    bool cl, bool want_grad_residual) {
  check_pwconv_grad_out(op, grad_out, x, s);
  check_channel_range(op, s);
  const std::vector<int64_t> out_shape{s.N, s.OC, s.H, s.W};
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto out_opts = x.options().memory_format(fmt);
  const at::ScalarType scale_dtype = given(scale) ? scale->scalar_type() : x.scalar_type();
  const at::ScalarType shift_dtype = given(shift) ? shift->scalar_type() : x.scalar_type();
  const c10::cuda::CUDAGuard guard(x.device());

  at::Tensor grad_x = at::empty(x.sizes(), out_opts);
  if (s.N * s.H * s.W == 0) {  // no positions: the parameter gradients are zero
    return std::make_tuple(grad_x, at::zeros(weight.sizes(), weight.options()),
                           at::zeros({s.OC}, x.options().dtype(scale_dtype)),
                           at::zeros({s.OC}, x.options().dtype(shift_dtype)),
                           want_grad_residual ? at::empty(out_shape, out_opts) : at::Tensor());
  }

  const bool row = cl || s.H * s.W == 1;
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor z = conv1x1(s, xc, weight, row, fmt);  // recomputed
  const at::Tensor res = given(residual) ? residual->contiguous(fmt) : at::Tensor();
  const at::Tensor go = grad_out.contiguous(fmt);
  const at::Tensor sc = param_as(scale, acc);
  const at::Tensor sh = param_as(shift, acc);
  at::Tensor gz = at::empty(out_shape, out_opts);  // gu * scale
  // Without a scale gz is gu itself, which is grad_residual.
  at::Tensor gr =
      want_grad_residual && sc.defined() ? at::empty(out_shape, out_opts) : at::Tensor();
  at::Tensor sums = at::empty({2 * s.OC}, x.options().dtype(acc));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "pwconv_bn_act_backward", [&] {
    launch_backward<scalar_t>(op, s, row, act, go, z, res, sc, sh, gr, gz, sums, stream);
  });

  const at::Tensor grad_weight = conv1x1_backward(s, gz, xc, weight, row, fmt, grad_x);
  at::Tensor grad_residual;
  if (want_grad_residual) grad_residual = gr.defined() ? gr : gz;
  return std::make_tuple(grad_x, grad_weight,
                         fresh_copy(sums.narrow(0, s.OC, s.OC), {s.OC}, scale_dtype),
                         fresh_copy(sums.narrow(0, 0, s.OC), {s.OC}, shift_dtype), grad_residual);
}

namespace {

at::Tensor pwconv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& shift, int64_t groups,
                              std::string_view act, const c10::optional<at::Tensor>& residual,
                              int64_t shuffle_groups) {
  constexpr const char* op = "pwconv_bn_act";
  const PwShape s = check_pwconv(op, x, weight, scale, shift, groups, residual, shuffle_groups);
  return pwconv_forward(op, s, x, weight, scale, shift, parse_act(op, act), residual,
                        output_channels_last(x));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pwconv_bn_act_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, int64_t groups,
    std::string_view act, const c10::optional<at::Tensor>& residual, int64_t shuffle_groups) {
  constexpr const char* op = "pwconv_bn_act_backward";
  const PwShape s = check_pwconv(op, x, weight, scale, shift, groups, residual, shuffle_groups);
  const bool has_residual = residual.has_value() && residual->defined();
  auto grads = pwconv_backward(op, s, grad_out, x, weight, scale, shift, parse_act(op, act), residual,
                               output_channels_last(x), /*want_grad_residual=*/has_residual);
  if (!has_residual) std::get<4>(grads) = no_grad_residual(x);
  return grads;
}

// The plain convolution's (x, weight) gradients: the same kernels, without the scale, shift
// and residual gradients' work where the backward skips it.
std::tuple<at::Tensor, at::Tensor> pwconv_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                        const at::Tensor& weight, int64_t groups) {
  constexpr const char* op = "pwconv_backward";
  const PwShape s = check_pwconv(op, x, weight, c10::nullopt, c10::nullopt, groups, c10::nullopt, 1);
  const auto grads = pwconv_backward(op, s, grad_out, x, weight, c10::nullopt, c10::nullopt, Act::None,
                                     c10::nullopt, output_channels_last(x), /*want_grad_residual=*/false);
  return {std::get<0>(grads), std::get<1>(grads)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("pwconv_bn_act", &pwconv_bn_act_cuda);
  m.impl("pwconv_bn_act_backward", &pwconv_bn_act_backward_cuda);
  m.impl("pwconv_backward", &pwconv_backward_cuda);
}

}  // namespace cuda
}  // namespace fastops
