// CUDA kernels of fastops::dwconv_bn_act and fastops::dwconv_bn_act_backward: float32, float16,
// bfloat16 (float math) and float64 (double math), NCHW and channels_last (NHWC). Argument checks,
// shape arithmetic and the layout rule are csrc/dwconv.h; the activation formulas csrc/activation.h
// (the same ones the CPU kernels run).
//
//   z[n, oc, oh, ow] = sum_{kh, kw} x[n, oc / m, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * w[oc, kh, kw]
//   u = z * scale[oc] + shift[oc];  y = act(u)
//
// Kernels
//   dw_tiled_kernel<T, A, K, CL, BWD>  one block = a group of CG output channels x an output tile
//       (TOH x TOW) of one image; the input tile plus halo (all staged input channels of the group)
//       is staged in shared memory as the accumulation type; each thread owns one output channel,
//       so its weights (K = 3 or 5: K*K registers; K = 0: any KH x KW, from shared memory), scale
//       and shift are loaded once. Layout CL: NHWC (channel-fastest threads, coalesced over
//       channels) or NCHW (position-fastest threads, coalesced over width).
//       BWD = false: y = act(z*scale + shift).
//       BWD = true: recomputes z, gu = act'(u) * grad_out, writes gz = gu * scale (accumulation
//       type, output layout) for the grad_x kernel, and accumulates per thread sum(gu), sum(gu*z)
//       and (K > 0) sum(gz * x) per tap over a run of tiles; each block then writes one row of
//       per-channel partial sums (a tree reduction in shared memory; no atomics).
//   dw_cl_vec_kernel<T, A, K>   the forward in NHWC with one output channel per input channel
//       (multiplier 1) and a channel count that is a multiple of 16 bytes' worth of T (8 half /
//       bfloat16, 4 float, 2 double): each thread computes those V channels of one output pixel
//       from 16-byte loads of x straight from global memory (neighbouring threads read the
//       neighbouring pixels' channels, so a warp's loads are contiguous; the halo re-reads hit the
//       caches), weights, scale and shift from one [KH*KW + 2, C] buffer in the accumulation type
//       that dw_cl_vec_params_kernel fills per call; a block is a run of pixels x channels of one
//       output row, so a thread's index math is one division. No shared memory, no
//       synchronisation. Its per-thread body (dw_cl_vec_point) is a host + device function, and
//       the CPU op fastops_testing::dwconv_bn_act_cl_vec runs it thread by thread on the host,
//       so the CPU test suite checks the index arithmetic, masking and epilogue the GPU runs.
//   reduce_rows_kernel   sums the [splits, cols] partial rows into [cols] (deterministic).
//   dw_grad_x_kernel<T, K, CL>   grad_x by gathering: each grad_x element sums gz * w over the
//       output positions that read it (no atomics).
//   dw_grad_w_kernel<T, CL>   grad_weight for K = 0 (any kernel shape): one block per (channel
//       group, tap, run of positions), partial sums per block, then reduce_rows_kernel.
// All launches go to the current stream of x's device and are checked; no kernel is launched for
// an empty tensor. Offsets into global memory are 64-bit; coordinates inside one image are int
// (make_geom checks that they fit).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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
#include "../dwconv.h"
#include "block.cuh"      // ceil_div, pow2_ceil
#include "pointwise.cuh"  // max_resident_blocks, blocks_for, kThreads

namespace fastops {
namespace cuda {
namespace {

constexpr int kBlock = 256;                     // the most threads any kernel here launches with
constexpr size_t kSmemDefault = 48 * 1024;      // dynamic shared memory without opt-in
static_assert(kThreads == kBlock, "blocks_for() sizes grids for kBlock-thread blocks");

// The convolution geometry as the kernels see it (all per-image coordinates fit in int).
struct Geom {
  int64_t N;
  int C, H, W, OC, mult, OH, OW;
  int KH, KW, SH, SW, PH, PW, DH, DW;
};

// How dw_tiled_kernel splits the work (chosen by choose_tiling).
struct Tiling {
  int TOH, TOW;      // output tile
  int IHT, IWT;      // input tile including the halo
  int CG, TPC;       // channels per block, threads per channel (powers of two); CG*TPC threads
  int tiles_w;       // tiles across the output width
  int cgroups;       // ceil(OC / CG)
  int nv;            // backward: partial values per channel (2, or 2 + K*K)
  int64_t tiles;     // tiles per image
  int64_t items;     // N * tiles
  int64_t ipb;       // items per block
  int64_t splits;    // blocks along the items; the grid is splits * cgroups blocks
  size_t smem;       // dynamic shared memory, bytes
};

// Offset of element (n, c, h, w) in a dense NCHW (CL = false) or NHWC (CL = true) tensor.
template <bool CL>
__device__ __forceinline__ int64_t offset4(int64_t n, int c, int h, int w, int C, int H, int W) {
  if constexpr (CL) {
    return ((n * H + h) * W + w) * C + c;
  } else {
    return ((n * C + c) * H + h) * W + w;
  }
}

// Sum of v over the TPC threads that share c_local (thread id tid = CL ? q*CG + c_local :
// c_local*TPC + q, TPC a power of two); every thread of the group gets the sum. `red` holds one
// value per thread. Every thread of the block must call it (it synchronises).
template <bool CL, typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, acc_t* red, int tid, int c_local, int q, int CG,
                                           int TPC) {
  __syncthreads();  // earlier readers of `red` (the tile, or the previous sum) are done
  red[tid] = v;
  __syncthreads();
  for (int s = TPC >> 1; s > 0; s >>= 1) {
    if (q < s) red[tid] += red[CL ? tid + s * CG : tid + s];
    __syncthreads();
  }
  return red[CL ? c_local : c_local * TPC];
}

template <typename T, Act A, int K, bool CL, bool BWD>
__global__ void __launch_bounds__(kBlock)
    dw_tiled_kernel(const T* __restrict__ x, const T* __restrict__ w,
                    const at::opmath_type<T>* __restrict__ scale,
                    const at::opmath_type<T>* __restrict__ shift, T* __restrict__ y,
                    const T* __restrict__ gout, at::opmath_type<T>* __restrict__ gz,
                    at::opmath_type<T>* __restrict__ partial, const Geom g, const Tiling t) {
  using acc_t = at::opmath_type<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);  // NCHW: [CG][IHT][IWT]; NHWC: [IHT][IWT][CG]

  const int tid = threadIdx.x;
  const int nthreads = t.CG * t.TPC;  // == blockDim.x
  const int c_local = CL ? tid % t.CG : tid / t.TPC;
  const int q = CL ? tid / t.CG : tid % t.TPC;  // this thread's lane among its channel's threads
  const int cgi = int(int64_t(blockIdx.x) % t.cgroups);
  const int64_t split = int64_t(blockIdx.x) / t.cgroups;

  const int oc0 = cgi * t.CG;
  const int oc_end = oc0 + t.CG < g.OC ? oc0 + t.CG : g.OC;
  const int oc = oc0 + c_local;
  const bool oc_ok = oc < g.OC;
  const int ic0 = oc0 / g.mult;                    // first staged input channel
  const int icn = (oc_end - 1) / g.mult - ic0 + 1;  // staged input channels (<= CG)
  const int ic_local = oc_ok ? oc / g.mult - ic0 : 0;

  const int KH = K > 0 ? K : g.KH;
  const int KW = K > 0 ? K : g.KW;
  const int KK = KH * KW;
  acc_t* wsm = tile + t.CG * t.IHT * t.IWT;  // K == 0: the group's weights, [CG][KH*KW]

  // This thread's channel: weights, scale, shift.
  acc_t wr[K > 0 ? K * K : 1];
  if constexpr (K > 0) {
#pragma unroll
    for (int i = 0; i < K * K; ++i) wr[i] = oc_ok ? acc_t(w[int64_t(oc) * (K * K) + i]) : acc_t(0);
  } else {
    wr[0] = acc_t(0);
    const int nw = (oc_end - oc0) * KK;
    for (int i = tid; i < nw; i += nthreads) wsm[i] = acc_t(w[int64_t(oc0) * KK + i]);
    // (read only after the __syncthreads that precede the first use below)
  }
  const acc_t sc = (oc_ok && scale != nullptr) ? scale[oc] : acc_t(1);
  const acc_t sh = (oc_ok && shift != nullptr) ? shift[oc] : acc_t(0);

  // Steps through the tile, in elements.
  const int col_step = CL ? t.CG : 1;
  const int row_step = t.IWT * col_step;
  const int tap_row = row_step * g.DH;
  const int tap_col = col_step * g.DW;
  const int chan_base = CL ? ic_local : ic_local * t.IHT * t.IWT;

  // Backward accumulators (per thread, over all its outputs).
  acc_t s_gu = acc_t(0), s_guz = acc_t(0);
  acc_t gw[K > 0 ? K * K : 1];
#pragma unroll
  for (int i = 0; i < (K > 0 ? K * K : 1); ++i) gw[i] = acc_t(0);

  const int64_t it_begin = split * t.ipb;
  const int64_t it_end = it_begin + t.ipb < t.items ? it_begin + t.ipb : t.items;
  const int tile_outputs = t.TOH * t.TOW;
  const int stage = icn * t.IHT * t.IWT;

  for (int64_t it = it_begin; it < it_end; ++it) {
    const int64_t n = it / t.tiles;
    const int tt = int(it % t.tiles);
    const int oh0 = (tt / t.tiles_w) * t.TOH;
    const int ow0 = (tt % t.tiles_w) * t.TOW;
    const int ih0 = oh0 * g.SH - g.PH;
    const int iw0 = ow0 * g.SW - g.PW;

    __syncthreads();  // everyone is done with the previous tile (and wsm is written)
    for (int i = tid; i < stage; i += nthreads) {
      int cl, r, s, dst;
      if constexpr (CL) {  // channel fastest: coalesced NHWC reads
        cl = i % icn;
        const int rest = i / icn;
        s = rest % t.IWT;
        r = rest / t.IWT;
        dst = (r * t.IWT + s) * t.CG + cl;
      } else {  // width fastest: coalesced NCHW reads
        s = i % t.IWT;
        const int rest = i / t.IWT;
        r = rest % t.IHT;
        cl = rest / t.IHT;
        dst = i;
      }
      const int ih = ih0 + r, iw = iw0 + s;
      acc_t v = acc_t(0);  // zero padding
      if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
        v = acc_t(x[offset4<CL>(n, ic0 + cl, ih, iw, g.C, g.H, g.W)]);
      }
      tile[dst] = v;
    }
    __syncthreads();

    if (oc_ok) {
      for (int j = q; j < tile_outputs; j += t.TPC) {
        const int a = j / t.TOW, b = j % t.TOW;
        const int oh = oh0 + a, ow = ow0 + b;
        if (oh >= g.OH || ow >= g.OW) continue;
        const acc_t* tp = tile + chan_base + a * g.SH * row_step + b * g.SW * col_step;
        acc_t z = acc_t(0);
        if constexpr (K > 0) {
#pragma unroll
          for (int kh = 0; kh < K; ++kh) {
#pragma unroll
            for (int kw = 0; kw < K; ++kw) z += tp[kh * tap_row + kw * tap_col] * wr[kh * K + kw];
          }
        } else {
          const acc_t* wp = wsm + c_local * KK;
          for (int kh = 0; kh < KH; ++kh) {
            for (int kw = 0; kw < KW; ++kw) z += tp[kh * tap_row + kw * tap_col] * wp[kh * KW + kw];
          }
        }
        const int64_t o = offset4<CL>(n, oc, oh, ow, g.OC, g.OH, g.OW);
        const acc_t u = z * sc + sh;
        if constexpr (!BWD) {
          y[o] = T(act_fwd<A>(u));
        } else {
          const acc_t gu = act_bwd<A>(acc_t(gout[o]), u);
          const acc_t gzv = gu * sc;
          gz[o] = gzv;
          s_gu += gu;
          s_guz += gu * z;
          if constexpr (K > 0) {
#pragma unroll
            for (int kh = 0; kh < K; ++kh) {
#pragma unroll
              for (int kw = 0; kw < K; ++kw) gw[kh * K + kw] += gzv * tp[kh * tap_row + kw * tap_col];
            }
          }
        }
      }
    }
  }

  if constexpr (BWD) {
    // One row of partial sums per block: partial[split][oc][v], v = 0: sum gu (grad_shift),
    // 1: sum gu*z (grad_scale), 2 + tap: sum gz*x (grad_weight, K > 0 only).
    acc_t* red = tile;  // CG*TPC values; choose_tiling makes the allocation at least that large
    const bool writer = oc_ok && q == 0;
    const int64_t base = (split * g.OC + (oc_ok ? oc : 0)) * t.nv;
    acc_t r = group_sum<CL>(s_gu, red, tid, c_local, q, t.CG, t.TPC);
    if (writer) partial[base] = r;
    r = group_sum<CL>(s_guz, red, tid, c_local, q, t.CG, t.TPC);
    if (writer) partial[base + 1] = r;
    if constexpr (K > 0) {
#pragma unroll
      for (int i = 0; i < K * K; ++i) {
        r = group_sum<CL>(gw[i], red, tid, c_local, q, t.CG, t.TPC);
        if (writer) partial[base + 2 + i] = r;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// channels_last, multiplier 1, C a multiple of V = 16 / sizeof(T): V channels per thread.

template <typename T>
constexpr int vec_lanes() {
  return int(16 / sizeof(T));
}

// v in the accumulation type. bfloat16 from its bits: c10's conversion reads the value through a
// type-punned pointer, which the host compiler (g++ -O3, strict aliasing) turned into zeros when
// the value came from a copied Pack (the host emulation below); device code is the same either way.
template <typename T>
FASTOPS_HD at::opmath_type<T> to_acc(T v) {
  return at::opmath_type<T>(v);
}
FASTOPS_HD float to_acc(c10::BFloat16 v) { return c10::detail::f32_from_bits(v.x); }

// Row r < KH*KW: the weights of tap r for every channel; row KH*KW: scale (1 when absent); row
// KH*KW + 1: shift (0 when absent); all in the accumulation type. Element i of the buffer.
template <typename T>
FASTOPS_HD at::opmath_type<T> dw_cl_vec_param(int64_t i, const T* w, const at::opmath_type<T>* scale,
                                              const at::opmath_type<T>* shift, int64_t C, int64_t KK) {
  using acc_t = at::opmath_type<T>;
  const int64_t row = i / C, c = i - row * C;
  if (row < KK) return to_acc(w[c * KK + row]);
  if (row == KK) return scale != nullptr ? scale[c] : acc_t(1);
  return shift != nullptr ? shift[c] : acc_t(0);
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    dw_cl_vec_params_kernel(const T* w, const at::opmath_type<T>* scale, const at::opmath_type<T>* shift,
                            at::opmath_type<T>* params, int64_t C, int64_t KK) {
  const int64_t total = (KK + 2) * C;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    params[i] = dw_cl_vec_param(i, w, scale, shift, C, KK);
}

// Output pixel (n, oh, ow), channels [c0, c0 + V): z by the taps that fall inside the input, then
// act(z * scale + shift), one 16-byte store. x and y dense NHWC, 16-byte aligned; params as above,
// aligned to its Pack of V accumulation values; C % V == 0 (so every load below is aligned).
template <typename T, Act A, int K>
FASTOPS_HD void dw_cl_vec_point(const T* __restrict__ x, const at::opmath_type<T>* __restrict__ params,
                                T* __restrict__ y, const Geom& g, int64_t n, int oh, int ow, int c0) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = vec_lanes<T>();
  using XPack = Pack<T, V>;
  using PPack = Pack<acc_t, V>;
  const int KH = K > 0 ? K : g.KH;
  const int KW = K > 0 ? K : g.KW;
  const int64_t C = g.C;
  acc_t acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = acc_t(0);
  const T* xn = x + n * g.H * g.W * C + c0;
  const int ih0 = oh * g.SH - g.PH, iw0 = ow * g.SW - g.PW;
#pragma unroll
  for (int kh = 0; kh < KH; ++kh) {
    const int ih = ih0 + kh * g.DH;
    if (ih < 0 || ih >= g.H) continue;
    const T* xr = xn + int64_t(ih) * g.W * C;
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
      const int iw = iw0 + kw * g.DW;
      if (iw < 0 || iw >= g.W) continue;
      const XPack xv = *reinterpret_cast<const XPack*>(xr + int64_t(iw) * C);
      const PPack wv = *reinterpret_cast<const PPack*>(params + int64_t(kh * KW + kw) * C + c0);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += to_acc(xv.v[j]) * wv.v[j];
    }
  }
  const int64_t KK = int64_t(KH) * KW;
  const PPack sc = *reinterpret_cast<const PPack*>(params + KK * C + c0);
  const PPack sh = *reinterpret_cast<const PPack*>(params + (KK + 1) * C + c0);
  XPack out;
#pragma unroll
  for (int j = 0; j < V; ++j) out.v[j] = T(act_fwd<A>(acc[j] * sc.v[j] + sh.v[j]));
  *reinterpret_cast<XPack*>(y + ((n * g.OH + oh) * g.OW + ow) * C + c0) = out;
}

// Block (x, y): threads over the OW * C / V (pixel, channel vector) pairs of output rows
// blockIdx.y, blockIdx.y + gridDim.y, ... (rows = N * OH).
template <typename T, Act A, int K>
__global__ void __launch_bounds__(kBlock)
    dw_cl_vec_kernel(const T* __restrict__ x, const at::opmath_type<T>* __restrict__ params, T* __restrict__ y,
                     const Geom g, int64_t rows) {
  constexpr int V = vec_lanes<T>();
  const int CV = g.C / V;
  const int i = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x);
  if (i >= g.OW * CV) return;
  const int ow = i / CV;
  const int c0 = (i - ow * CV) * V;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / g.OH;
    dw_cl_vec_point<T, A, K>(x, params, y, g, n, int(row - n * g.OH), ow, c0);
  }
}

// out[c] = sum_r in[r * cols + c]: 32 columns x 8 row lanes per block, fixed summation order.
template <typename acc_t>
__global__ void __launch_bounds__(kBlock)
    reduce_rows_kernel(const acc_t* __restrict__ in, int64_t rows, int64_t cols,
                       acc_t* __restrict__ out) {
  __shared__ acc_t red[8][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t col = int64_t(blockIdx.x) * 32 + tx;
  acc_t s = acc_t(0);
  if (col < cols) {
    for (int64_t r = ty; r < rows; r += 8) s += in[r * cols + col];
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < cols) {
    acc_t total = acc_t(0);
#pragma unroll
    for (int k = 0; k < 8; ++k) total += red[k][tx];
    out[col] = total;
  }
}

// grad_x[n, c, ih, iw] = sum_{j < m} sum_{kh, kw} gz[n, c*m + j, oh, ow] * w[c*m + j, kh, kw] over
// the (kh, kw) with ih = oh*sh - ph + kh*dh and iw = ow*sw - pw + kw*dw for some output (oh, ow).
// wt: the weights in the accumulation type, [OC][KH*KW] (NCHW) or [KH*KW][OC] (NHWC, coalesced).
template <typename T, int K, bool CL>
__global__ void __launch_bounds__(kBlock)
    dw_grad_x_kernel(const at::opmath_type<T>* __restrict__ gz,
                     const at::opmath_type<T>* __restrict__ wt, T* __restrict__ gx, const Geom g,
                     int64_t total) {
  using acc_t = at::opmath_type<T>;
  const int KH = K > 0 ? K : g.KH;
  const int KW = K > 0 ? K : g.KW;
  const int KK = KH * KW;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int c, ih, iw;
    int64_t n;
    if constexpr (CL) {
      c = int(idx % g.C);
      int64_t r = idx / g.C;
      iw = int(r % g.W);
      r /= g.W;
      ih = int(r % g.H);
      n = r / g.H;
    } else {
      iw = int(idx % g.W);
      int64_t r = idx / g.W;
      ih = int(r % g.H);
      r /= g.H;
      c = int(r % g.C);
      n = r / g.C;
    }
    acc_t s = acc_t(0);
    for (int j = 0; j < g.mult; ++j) {
      const int oc = c * g.mult + j;
#pragma unroll
      for (int kh = 0; kh < KH; ++kh) {
        const int th = ih + g.PH - kh * g.DH;
        if (th < 0 || th % g.SH != 0) continue;
        const int oh = th / g.SH;
        if (oh >= g.OH) continue;
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
          const int tw = iw + g.PW - kw * g.DW;
          if (tw < 0 || tw % g.SW != 0) continue;
          const int ow = tw / g.SW;
          if (ow >= g.OW) continue;
          const int tap = kh * KW + kw;
          const acc_t wv = CL ? wt[int64_t(tap) * g.OC + oc] : wt[int64_t(oc) * KK + tap];
          s += gz[offset4<CL>(n, oc, oh, ow, g.OC, g.OH, g.OW)] * wv;
        }
      }
    }
    gx[idx] = T(s);
  }
}

// grad_weight for any kernel shape: block = (group of CG channels, one tap, one run of ppb output
// positions); partial[split][oc * KK + tap] = sum over the run of gz * x.
template <typename T, bool CL>
__global__ void __launch_bounds__(kBlock)
    dw_grad_w_kernel(const T* __restrict__ x, const at::opmath_type<T>* __restrict__ gz,
                     at::opmath_type<T>* __restrict__ partial, const Geom g, int CG, int TPC,
                     int ngroups, int64_t P, int64_t ppb) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t red[kBlock];
  const int tid = threadIdx.x;
  const int c_local = CL ? tid % CG : tid / TPC;
  const int q = CL ? tid / CG : tid % TPC;
  const int grp = int(int64_t(blockIdx.x) % ngroups);
  const int64_t split = int64_t(blockIdx.x) / ngroups;
  const int KK = g.KH * g.KW;
  const int tap = grp % KK;
  const int cgi = grp / KK;
  const int kh = tap / g.KW, kw = tap % g.KW;
  const int oc = cgi * CG + c_local;
  const bool ok = oc < g.OC;
  const int c = ok ? oc / g.mult : 0;

  acc_t s = acc_t(0);
  if (ok) {
    const int64_t p_end = (split + 1) * ppb < P ? (split + 1) * ppb : P;
    for (int64_t p = split * ppb + q; p < p_end; p += TPC) {
      const int ow = int(p % g.OW);
      const int64_t r = p / g.OW;
      const int oh = int(r % g.OH);
      const int64_t n = r / g.OH;
      const int ih = oh * g.SH - g.PH + kh * g.DH;
      const int iw = ow * g.SW - g.PW + kw * g.DW;
      if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
        s += gz[offset4<CL>(n, oc, oh, ow, g.OC, g.OH, g.OW)] *
             acc_t(x[offset4<CL>(n, c, ih, iw, g.C, g.H, g.W)]);
      }
    }
  }
  const acc_t total = group_sum<CL>(s, red, tid, c_local, q, CG, TPC);
  if (ok && q == 0) partial[split * (int64_t(g.OC) * KK) + int64_t(oc) * KK + tap] = total;
}

// ---------------------------------------------------------------------------------------------
// Host side

Geom make_geom(const char* op, const DwConvShape& s) {
  constexpr int64_t kMaxExtent = int64_t(1) << 29;
  TORCH_CHECK_VALUE(s.H + 2 * s.PH < kMaxExtent && s.W + 2 * s.PW < kMaxExtent, "fastops.", op,
                    ": the padded input (", s.H + 2 * s.PH, "x", s.W + 2 * s.PW,
                    ") is too large for the CUDA kernel (each side must be below 2^29)");
  TORCH_CHECK_VALUE(s.OC <= std::numeric_limits<int>::max() / 2, "fastops.", op, ": ", s.OC,
                    " output channels are too many for the CUDA kernel");
  Geom g;
  g.N = s.N;
  g.C = int(s.C), g.H = int(s.H), g.W = int(s.W), g.OC = int(s.OC), g.mult = int(s.mult);
  g.OH = int(s.OH), g.OW = int(s.OW), g.KH = int(s.KH), g.KW = int(s.KW);
  g.PH = int(s.PH), g.PW = int(s.PW);
  // A stride only matters with more than one output along that axis, a dilation only with more
  // than one tap; normalising the others to 1 keeps every product below in int range
  // ((OH-1)*SH and (KH-1)*DH are both at most H + 2*PH).
  g.SH = s.OH > 1 ? int(s.SH) : 1;
  g.SW = s.OW > 1 ? int(s.SW) : 1;
  g.DH = s.KH > 1 ? int(s.DH) : 1;
  g.DW = s.KW > 1 ? int(s.DW) : 1;
  return g;
}

// The compile-time kernel size of the specialised kernels (0 = any, read at run time).
int kernel_variant(const Geom& g) {
  if (g.KH == g.KW && (g.KH == 3 || g.KH == 5)) return g.KH;
  return 0;
}

size_t max_optin_smem() {
  int device = 0, bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return size_t(bytes);
}

Tiling choose_tiling(const char* op, const Geom& g, bool cl, int K, size_t acc_size, bool bwd) {
  Tiling t{};
  const int oc_p2 = pow2_ceil(g.OC);
  if (!cl) {
    // A tile of up to 16 x 32 outputs of CG planes; threads walk the width (coalesced).
    t.TOW = std::min(32, pow2_ceil(g.OW));
    t.TOH = std::min(16, pow2_ceil(g.OH));
    t.TPC = std::min(kBlock, t.TOH * t.TOW);
    t.CG = std::min(kBlock / t.TPC, oc_p2);
  } else {
    // A tile of up to 8 x 8 positions of up to 32 channels; threads walk the channels (coalesced).
    t.CG = std::min(32, oc_p2);
    t.TOH = std::min(8, pow2_ceil(g.OH));
    t.TOW = std::min(8, pow2_ceil(g.OW));
    t.TPC = std::min(kBlock / t.CG, t.TOH * t.TOW);
  }
  auto smem_of = [&](const Tiling& c) -> size_t {
    const int64_t iht = int64_t(c.TOH - 1) * g.SH + int64_t(g.KH - 1) * g.DH + 1;
    const int64_t iwt = int64_t(c.TOW - 1) * g.SW + int64_t(g.KW - 1) * g.DW + 1;
    int64_t elems = int64_t(c.CG) * iht * iwt + (K == 0 ? int64_t(c.CG) * g.KH * g.KW : 0);
    elems = std::max<int64_t>(elems, int64_t(c.CG) * c.TPC);  // the backward's reduction buffer
    return size_t(elems) * acc_size;
  };
  // Until it fits the default shared memory (large dilations): first fewer channels (that costs no
  // extra halo; NHWC keeps at least 8 channels for coalescing), then a smaller tile, then down to
  // one channel. CG and TPC stay powers of two with CG * TPC <= kBlock.
  auto too_big = [&] { return smem_of(t) > kSmemDefault; };
  const int cg_floor = cl ? std::min(8, t.CG) : 1;
  while (too_big() && t.CG > cg_floor) {
    t.CG /= 2;
    if (cl) t.TPC = std::min(kBlock / t.CG, t.TOH * t.TOW);
  }
  while (too_big() && (t.TOH > 1 || t.TOW > 1)) {
    if (t.TOH >= t.TOW) {
      t.TOH /= 2;
    } else {
      t.TOW /= 2;
    }
    t.TPC = std::min(t.TPC, t.TOH * t.TOW);  // no more threads per channel than outputs
  }
  while (too_big() && t.CG > 1) t.CG /= 2;
  t.smem = smem_of(t);
  if (t.smem > kSmemDefault) {
    TORCH_CHECK_VALUE(t.smem <= max_optin_smem(), "fastops.", op, ": the dilated kernel (",
                      int64_t(g.KH - 1) * g.DH + 1, "x", int64_t(g.KW - 1) * g.DW + 1,
                      ") is too large for the CUDA kernel's shared-memory tile (", t.smem,
                      " bytes); use fastops.reference.dwconv_bn_act");
  }
  t.IHT = int((t.TOH - 1) * g.SH + (g.KH - 1) * g.DH + 1);
  t.IWT = int((t.TOW - 1) * g.SW + (g.KW - 1) * g.DW + 1);
  t.tiles_w = int(ceil_div(g.OW, t.TOW));
  t.tiles = ceil_div(g.OH, t.TOH) * t.tiles_w;
  t.items = g.N * t.tiles;
  t.cgroups = int(ceil_div(g.OC, t.CG));
  if (!bwd) {
    t.ipb = 1;  // one tile per block
    t.splits = t.items;
    t.nv = 0;
  } else {
    // Enough blocks to fill the GPU, each looping over a run of tiles, so the partial-sum buffer
    // stays small ([splits, OC, nv]).
    const int64_t want = ceil_div(max_resident_blocks(), t.cgroups);
    const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(want, t.items));
    t.ipb = ceil_div(t.items, splits);
    t.splits = ceil_div(t.items, t.ipb);
    t.nv = K > 0 ? 2 + K * K : 2;
  }
  TORCH_CHECK(t.splits * t.cgroups <= std::numeric_limits<int>::max(), "fastops.", op,
              ": the output is too large for one CUDA launch");
  return t;
}

template <typename T, Act A, int K, bool CL, bool BWD>
void launch_tiled(const Geom& g, const Tiling& t, const T* x, const T* w,
                  const at::opmath_type<T>* scale, const at::opmath_type<T>* shift, T* y,
                  const T* gout, at::opmath_type<T>* gz, at::opmath_type<T>* partial,
                  cudaStream_t stream) {
  auto kernel = dw_tiled_kernel<T, A, K, CL, BWD>;
  if (t.smem > kSmemDefault) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(t.smem)));
  }
  const unsigned blocks = unsigned(t.splits * t.cgroups);
  kernel<<<blocks, t.CG * t.TPC, t.smem, stream>>>(x, w, scale, shift, y, gout, gz, partial, g, t);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void launch_reduce_rows(const acc_t* in, int64_t rows, int64_t cols, acc_t* out,
                        cudaStream_t stream) {
  const int64_t blocks = ceil_div(cols, 32);
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "fastops: reduction too large");
  reduce_rows_kernel<acc_t><<<unsigned(blocks), kBlock, 0, stream>>>(in, rows, cols, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(std::integral_constant<int, K>{}) for K = k in {3, 5}, else K = 0.
template <typename F>
void dispatch_kernel_size(int k, F&& f) {
  switch (k) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

template <typename F>
void dispatch_layout(bool cl, F&& f) {
  if (cl) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
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

// A new tensor of dtype `dtype` and `shape` (contiguous) holding src's values.
at::Tensor fresh_copy(const at::Tensor& src, at::IntArrayRef shape, at::ScalarType dtype) {
  at::Tensor out = at::empty(src.sizes(), src.options().dtype(dtype));
  out.copy_(src);
  return out.view(shape);
}

// Whether dw_cl_vec_kernel computes this forward: NHWC, multiplier 1, a multiple of V channels,
// x's data 16-byte aligned (y is a fresh allocation), and a row's OW * C / V threads in int.
bool cl_vec_usable(const Geom& g, bool cl, const at::Tensor& xc) {
  const int V = int(16 / xc.element_size());
  return cl && g.mult == 1 && g.C % V == 0 && aligned16(xc.const_data_ptr()) &&
         int64_t(g.OW) * (g.C / V) <= std::numeric_limits<int>::max() - kBlock;
}

// The forward by dw_cl_vec_kernel into y (NHWC, y.numel() > 0; cl_vec_usable holds; K:
// kernel_variant(g)). Host = true
// runs the same per-thread code on the host, thread by thread, on CPU tensors (the test op
// fastops_testing::dwconv_bn_act_cl_vec), after poisoning y with NaN.
template <bool Host>
void dw_cl_vec_forward(const at::Tensor& xc, const at::Tensor& weight, const at::Tensor& sc, const at::Tensor& sh,
                       const Geom& g, int K, Act act, const at::Tensor& y) {
  const int64_t KK = int64_t(g.KH) * g.KW, C = g.C, rows = g.N * g.OH;
  const at::ScalarType acc = at::toOpMathType(xc.scalar_type());
  const at::Tensor wc = weight.contiguous();
  const at::Tensor params = at::empty({KK + 2, C}, xc.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "dwconv_bn_act", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = vec_lanes<scalar_t>();
    const scalar_t* w = wc.const_data_ptr<scalar_t>();
    const acc_t* scale = ptr_or_null<acc_t>(sc);
    const acc_t* shift = ptr_or_null<acc_t>(sh);
    acc_t* pp = params.mutable_data_ptr<acc_t>();
    const int threads_per_row = g.OW * (g.C / V);
    cudaStream_t stream = nullptr;
    if constexpr (Host) {
      for (int64_t i = 0; i < (KK + 2) * C; ++i) pp[i] = dw_cl_vec_param(i, w, scale, shift, C, KK);
      y.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      stream = c10::cuda::getCurrentCUDAStream();
      dw_cl_vec_params_kernel<scalar_t><<<blocks_for((KK + 2) * C), kBlock, 0, stream>>>(w, scale, shift, pp, C, KK);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    dispatch_act(act, [&](auto act_tag) {
      constexpr Act A = decltype(act_tag)::value;
      dispatch_kernel_size(K, [&](auto k_tag) {
        constexpr int KS = decltype(k_tag)::value;
        const scalar_t* xp = xc.const_data_ptr<scalar_t>();
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        if constexpr (Host) {
          for (int64_t row = 0; row < rows; ++row) {
            const int64_t n = row / g.OH;
            for (int i = 0; i < threads_per_row; ++i) {
              const int ow = i / (g.C / V);
              dw_cl_vec_point<scalar_t, A, KS>(xp, pp, yp, g, n, int(row - n * g.OH), ow, (i - ow * (g.C / V)) * V);
            }
          }
        } else {
          const int threads = int(std::min<int64_t>(kBlock, ceil_div(threads_per_row, 32) * 32));
          const dim3 grid(unsigned(ceil_div(threads_per_row, threads)), unsigned(std::min<int64_t>(rows, 65535)));
          dw_cl_vec_kernel<scalar_t, A, KS><<<grid, threads, 0, stream>>>(xp, pp, yp, g, rows);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  });
}

// The forward. Host = false: the CUDA op (dw_cl_vec_kernel where cl_vec_usable, else the tiled
// kernel). Host = true: the test op fastops_testing::dwconv_bn_act_cl_vec, dw_cl_vec_kernel's
// per-thread code run on the host on CPU tensors, for the cases cl_vec_usable takes only.
// (Registered as both ops' kernel: it has their signature.)
template <bool Host>
at::Tensor dwconv_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                          const c10::optional<at::Tensor>& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, std::string_view act_name) {
  constexpr const char* op = Host ? "dwconv_bn_act_cl_vec" : "dwconv_bn_act";
  if constexpr (Host)
    TORCH_CHECK_VALUE(x.device().is_cpu(), "fastops_testing.", op, ": emulates the CUDA kernel on CPU tensors only");
  const DwConvShape s = check_dwconv(op, x, weight, scale, shift, stride, padding, dilation);
  const Act act = parse_act(op, act_name);
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  c10::optional<c10::cuda::CUDAGuard> guard;
  if constexpr (!Host) guard.emplace(x.device());
  at::Tensor y = at::empty({s.N, s.OC, s.OH, s.OW}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;

  const Geom g = make_geom(op, s);
  const int K = kernel_variant(g);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor sc = param_as(scale, acc);
  const at::Tensor sh = param_as(shift, acc);
  if (cl_vec_usable(g, cl, xc)) {
    dw_cl_vec_forward<Host>(xc, weight, sc, sh, g, K, act, y);
    return y;
  }
  TORCH_CHECK_VALUE(!Host, "fastops_testing.", op,
                    ": dw_cl_vec_kernel does not take this case (NHWC, multiplier 1, channels a "
                    "multiple of 16 bytes' worth, aligned data)");
  const at::Tensor wc = weight.contiguous();
  const Tiling t = choose_tiling(op, g, cl, K, c10::elementSize(acc), /*bwd=*/false);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv_bn_act", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_act(act, [&](auto act_tag) {
      constexpr Act A = decltype(act_tag)::value;
      dispatch_kernel_size(K, [&](auto k_tag) {
        constexpr int KS = decltype(k_tag)::value;
        dispatch_layout(cl, [&](auto cl_tag) {
          constexpr bool CL = decltype(cl_tag)::value;
          launch_tiled<scalar_t, A, KS, CL, false>(
              g, t, xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
              ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), y.mutable_data_ptr<scalar_t>(),
              nullptr, nullptr, nullptr, stream);
        });
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::string_view act_name) {
  constexpr const char* op = "dwconv_bn_act_backward";
  const DwConvShape s = check_dwconv(op, x, weight, scale, shift, stride, padding, dilation);
  const Act act = parse_act(op, act_name);
  TORCH_CHECK_VALUE(grad_out.defined(), "fastops.", op, ": argument 'grad_out' is an undefined tensor");
  const std::vector<int64_t> out_shape{s.N, s.OC, s.OH, s.OW};
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(out_shape), "fastops.", op,
                    ": argument 'grad_out' has shape ", grad_out.sizes(),
                    " but the output has shape ", at::IntArrayRef(out_shape));
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), "fastops.", op,
                   ": argument 'grad_out' has dtype ", grad_out.scalar_type(), " but 'x' has dtype ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), "fastops.", op, ": argument 'grad_out' is on ",
                    grad_out.device(), " but 'x' is on ", x.device());

  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::ScalarType scale_dtype =
      scale.has_value() && scale->defined() ? scale->scalar_type() : x.scalar_type();
  const at::ScalarType shift_dtype =
      shift.has_value() && shift->defined() ? shift->scalar_type() : x.scalar_type();
  const c10::cuda::CUDAGuard guard(x.device());

  if (s.N == 0 || s.OC == 0) {  // nothing to compute: all gradients are zero (or empty)
    return std::make_tuple(at::empty(x.sizes(), x.options().memory_format(fmt)).zero_(),
                           at::empty(weight.sizes(), weight.options()).zero_(),
                           at::empty({s.OC}, x.options().dtype(scale_dtype)).zero_(),
                           at::empty({s.OC}, x.options().dtype(shift_dtype)).zero_());
  }

  const Geom g = make_geom(op, s);
  const int K = kernel_variant(g);
  const int64_t KK = s.KH * s.KW;
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const auto acc_opts = x.options().dtype(acc);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor wc = weight.contiguous();
  const at::Tensor go = grad_out.contiguous(fmt);
  const at::Tensor sc = param_as(scale, acc);
  const at::Tensor sh = param_as(shift, acc);
  // The weights for the grad_x gather, in the accumulation type: [OC][KK], or [KK][OC] for NHWC.
  const at::Tensor w2 = weight.reshape({s.OC, KK}).to(acc);
  const at::Tensor wt = cl ? w2.t().contiguous() : w2.contiguous();

  const Tiling t = choose_tiling(op, g, cl, K, c10::elementSize(acc), /*bwd=*/true);
  at::Tensor gz = at::empty({s.N, s.OC, s.OH, s.OW}, acc_opts.memory_format(fmt));
  at::Tensor partial = at::empty({t.splits, s.OC, t.nv}, acc_opts);
  at::Tensor sums = at::empty({s.OC, t.nv}, acc_opts);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor grad_weight;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_kernel_size(K, [&](auto k_tag) {
      constexpr int KS = decltype(k_tag)::value;
      dispatch_layout(cl, [&](auto cl_tag) {
        constexpr bool CL = decltype(cl_tag)::value;
        // 1. gz, and per-block partial sums of gu, gu*z (and gz*x per tap when KS > 0).
        dispatch_act(act, [&](auto act_tag) {
          constexpr Act A = decltype(act_tag)::value;
          launch_tiled<scalar_t, A, KS, CL, true>(
              g, t, xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
              ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), nullptr,
              go.const_data_ptr<scalar_t>(), gz.mutable_data_ptr<acc_t>(),
              partial.mutable_data_ptr<acc_t>(), stream);
        });
        launch_reduce_rows<acc_t>(partial.const_data_ptr<acc_t>(), t.splits, int64_t(s.OC) * t.nv,
                                  sums.mutable_data_ptr<acc_t>(), stream);

        // 2. grad_weight, when the tiled kernel did not accumulate it.
        if constexpr (KS == 0) {
          const int cgw = CL ? std::min(32, pow2_ceil(s.OC)) : 1;
          const int tpc = kBlock / cgw;
          const int64_t groups = ceil_div(s.OC, cgw) * KK;
          TORCH_CHECK(groups <= std::numeric_limits<int>::max(), "fastops.", op,
                      ": the weight is too large for the CUDA kernel");
          const int64_t P = s.N * s.OH * s.OW;
          const int64_t want = ceil_div(max_resident_blocks(), groups);
          int64_t splits = std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(P, tpc)));
          const int64_t ppb = ceil_div(P, splits);
          splits = ceil_div(P, ppb);
          TORCH_CHECK(splits * groups <= std::numeric_limits<int>::max(), "fastops.", op,
                      ": the output is too large for one CUDA launch");
          at::Tensor wpartial = at::empty({splits, s.OC * KK}, acc_opts);
          at::Tensor wsum = at::empty({s.OC * KK}, acc_opts);
          dw_grad_w_kernel<scalar_t, CL><<<unsigned(splits * groups), kBlock, 0, stream>>>(
              xc.const_data_ptr<scalar_t>(), gz.const_data_ptr<acc_t>(),
              wpartial.mutable_data_ptr<acc_t>(), g, cgw, tpc, int(groups), P, ppb);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          launch_reduce_rows<acc_t>(wpartial.const_data_ptr<acc_t>(), splits, s.OC * KK,
                                    wsum.mutable_data_ptr<acc_t>(), stream);
          grad_weight = fresh_copy(wsum, weight.sizes(), weight.scalar_type());
        } else {
          grad_weight = fresh_copy(sums.narrow(1, 2, KK), weight.sizes(), weight.scalar_type());
        }

        // 3. grad_x by gathering gz.
        const int64_t total = grad_x.numel();
        if (total > 0) {
          dw_grad_x_kernel<scalar_t, KS, CL><<<blocks_for(total), kBlock, 0, stream>>>(
              gz.const_data_ptr<acc_t>(), wt.const_data_ptr<acc_t>(),
              grad_x.mutable_data_ptr<scalar_t>(), g, total);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  });

  at::Tensor grad_shift = fresh_copy(sums.select(1, 0), {s.OC}, shift_dtype);
  at::Tensor grad_scale = fresh_copy(sums.select(1, 1), {s.OC}, scale_dtype);
  return std::make_tuple(grad_x, grad_weight, grad_scale, grad_shift);
}

}  // namespace

// A test hook, not part of fastops' API: declared here, beside the only code it runs.
TORCH_LIBRARY(fastops_testing, m) {
  m.def(
      "dwconv_bn_act_cl_vec(Tensor x, Tensor weight, Tensor? scale, Tensor? shift, int[2] stride, "
      "int[2] padding, int[2] dilation, str act) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastops_testing, CPU, m) { m.impl("dwconv_bn_act_cl_vec", &dwconv_forward</*Host=*/true>); }

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("dwconv_bn_act", &dwconv_forward</*Host=*/false>);
  m.impl("dwconv_bn_act_backward", &dwconv_bn_act_backward_cuda);
}

}  // namespace cuda
}  // namespace fastops
