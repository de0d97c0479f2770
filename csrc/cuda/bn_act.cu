// CUDA kernels of fastops::bn_act_train and fastops::bn_act_train_backward: training-mode
// BatchNorm (batch statistics) + activation, float32, float16, bfloat16 (float math) and float64
// (double math), NCHW and channels_last (NHWC). Argument checks and the formulas are
// csrc/bn_act.h; the activation formulas csrc/activation.h (the same ones the CPU kernels run).
//
//   mean, var (biased) per channel over N, H, W (M = N*H*W values);
//   xhat = (x - mean) * rsqrt(var + eps),  u = xhat * w + b,  y = act(u)
//   backward: gu = act'(u) * grad_out,  grad_bias = sum gu,  grad_weight = sum gu * xhat,
//             grad_x = w * rsqrt(var + eps) * (gu - grad_bias / M - xhat * grad_weight / M)
//
// Work decomposition (the same for every pass of one call; see Plan / Walker below). The dense
// x (and grad_out / y / grad_x) is walked in "units" of VEC elements (VEC = 16 bytes when every
// pointer is 16-byte aligned and the layout allows it, else 1):
//   plane layout (NCHW, H*W > 1): a channel is N planes of H*W contiguous elements; a unit is VEC
//       elements of one plane (needs H*W % VEC == 0). Block = (channel c, split s): it walks units
//       [s*upb, (s+1)*upb) of channel c, 256 threads at consecutive units (coalesced along the
//       plane), the (image, position) of each unit stepped incrementally (no division per element).
//   row layout (NHWC, or NCHW with H*W == 1: both are [M][C] in memory): a unit is VEC consecutive
//       channels of one row (needs C % VEC == 0). Block = (group of CG units of channels, split s
//       over rows); thread = (channel unit cl = tid % CG, row lane tid / CG), so a warp reads whole
//       runs of consecutive channels of consecutive rows (coalesced); each thread keeps the same
//       VEC channels for its whole life, so their parameters are loaded once.
//   splits: enough blocks for ~4 waves of resident blocks, at least 4 units per thread.
// Kernels
//   bn_stats_kernel      per-thread Welford/Chan statistics (one batch of U units merged at a time:
//                        batch mean, batch sum of squared deviations, one division per batch), a
//                        Chan tree merge per block in shared memory, one (mean, M2) partial per
//                        (channel, split). No E[x^2] - E[x]^2: accurate for |mean| >> std.
//   bn_stats_finish_kernel   one warp per channel merges its splits' partials (Chan, fixed order;
//                        the partials' counts follow from the geometry) -> mean, var.
//   bn_fwd_kernel        y = act(((x - mean) * invstd) * w + b).
//   bn_bwd_reduce_kernel per-(channel, split) partial sums of gu and gu * xhat (tree in shared
//                        memory, no atomics).
//   bn_sums_finish_kernel    one warp per channel sums the partials (fixed order) -> grad_bias,
//                        grad_weight (accumulation type).
//   bn_bwd_dx_kernel     grad_x.
// All launches go to the current stream of x's device and are checked. Offsets are 64-bit.
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
#include "../bn_act.h"
#include "../dwconv.h"      // parse_act, output_channels_last
#include "block.cuh"      // ceil_div, choose_cg
#include "pointwise.cuh"  // kThreads, Pack, max_resident_blocks, aligned16

namespace fastops {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;  // finishing kernels: one warp per channel
constexpr int kMinUnitsPerThread = 4;             // a split gives every thread at least this much
constexpr int kWaves = 4;                         // blocks aimed for: kWaves x the resident blocks
static_assert(kThreads % kWarp == 0 && (kThreads & (kThreads - 1)) == 0, "kThreads: a power of two");

// Units a thread loads before it computes (memory-level parallelism; a power of two, so that the
// batch statistics below divide by a power of two exactly).
template <int VEC>
constexpr int kBatch = VEC >= 4 ? 2 : (VEC == 2 ? 4 : 8);

// The geometry every kernel of one call shares (see the file comment).
struct Geo {
  int64_t C;       // channels
  int64_t HWv;     // plane layout: units per plane (H*W / VEC); row layout: unused (1)
  int64_t Cv;      // row layout: units per row (C / VEC); plane layout: unused (C)
  int64_t Mu;      // units per channel (plane: N * HWv) or rows (row: M)
  int64_t upb;     // units (plane) / rows (row) per block
  int64_t groups;  // plane: C; row: ceil(Cv / CG)
  int64_t splits;  // blocks per group; the grid is groups * splits blocks
  int CG;          // row layout: channel units per block (a power of two <= 32); plane: 1
};

template <typename acc_t>
__device__ __forceinline__ acc_t rsqrt_acc(acc_t v) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return ::rsqrt(v);
  } else {
    return ::rsqrtf(v);
  }
}

// This thread's walk over its units: unit index p (along the channel for the plane layout, the
// row for the row layout), its offset in units, and the step to its next unit.
template <int VEC, bool ROW>
struct Walker {
  int64_t p, end, step;  // unit index, end of the block's range, stride between this thread's units
  int64_t off, off_step; // offset of unit p (in units of VEC elements), and its increment per step
  int64_t hw, HWv, dhw, wrap;  // plane layout: position of unit p in its plane, step within a plane
  int64_t chan;          // plane: the channel; row: the first of this thread's VEC channels
  int64_t split;         // the block's split
  int tid, rl, RL;       // thread, its lane among the threads of one channel unit, their count
  bool active;           // row layout: this thread has a channel unit (cv < Cv)

  __device__ __forceinline__ explicit Walker(const Geo& g) {
    tid = int(threadIdx.x);
    const int64_t bid = int64_t(blockIdx.x);
    const int64_t gi = bid % g.groups;
    split = bid / g.groups;
    const int64_t start = split * g.upb;
    end = start + g.upb < g.Mu ? start + g.upb : g.Mu;
    if constexpr (ROW) {
      const int cl = tid % g.CG;
      rl = tid / g.CG;
      RL = int(blockDim.x) / g.CG;
      const int64_t cv = gi * g.CG + cl;
      active = cv < g.Cv;
      chan = cv * VEC;
      step = RL;
      p = active ? start + rl : end;  // inactive threads walk nothing
      off = p * g.Cv + cv;
      off_step = step * g.Cv;
      hw = 0, HWv = 1, dhw = 0, wrap = 0;
    } else {
      rl = tid;
      RL = int(blockDim.x);
      active = true;
      chan = gi;
      step = int64_t(blockDim.x);
      p = start + tid;
      HWv = g.HWv;
      const int64_t CHWv = g.C * HWv;  // units per image
      const int64_t n = p / HWv;
      hw = p - n * HWv;
      off = n * CHWv + chan * HWv + hw;
      const int64_t dn = step / HWv;
      dhw = step - dn * HWv;
      off_step = dn * CHWv + dhw;
      wrap = CHWv - HWv;  // leaving the end of a plane: the same position of the next image's plane
    }
  }
  __device__ __forceinline__ bool valid() const { return p < end; }
  // This thread's next u units are all in range.
  __device__ __forceinline__ bool has(int u) const { return p + int64_t(u - 1) * step < end; }
  __device__ __forceinline__ void advance() {
    p += step;
    off += off_step;
    if constexpr (!ROW) {
      hw += dhw;  // hw, dhw < HWv: at most one wrap
      if (hw >= HWv) {
        hw -= HWv;
        off += wrap;
      }
    }
  }
  // The channel of element k of a unit.
  __device__ __forceinline__ int64_t channel(int k) const { return ROW ? chan + k : chan; }
};

// Chan et al.: merges (nb, mb, m2b) into (n, mean, m2); n and nb counts (exact integers).
template <typename acc_t, typename count_t>
__device__ __forceinline__ void chan_merge(count_t& n, acc_t& mean, acc_t& m2, count_t nb, acc_t mb,
                                           acc_t m2b) {
  if (nb == 0) return;
  if (n == 0) {
    n = nb, mean = mb, m2 = m2b;
    return;
  }
  const count_t nab = n + nb;
  const acc_t r = acc_t(nb) / acc_t(nab);
  const acc_t delta = mb - mean;
  mean += delta * r;
  m2 += m2b + delta * delta * (acc_t(n) * r);
  n = nab;
}

// Merges a batch of UU units into this thread's statistics: per channel of the thread, the
// batch's mean and sum of squared deviations from it, then one Chan merge (one division for all
// the thread's channels: they share the count).
template <int UU, int VEC, bool ROW, typename T, typename acc_t>
__device__ __forceinline__ void welford_batch(const Pack<T, VEC> (&a)[UU], acc_t& cnt,
                                              acc_t (&mean)[ROW ? VEC : 1],
                                              acc_t (&m2)[ROW ? VEC : 1]) {
  constexpr int NCH = ROW ? VEC : 1;
  constexpr int PER = ROW ? UU : UU * VEC;  // values per channel in the batch: a power of two
  acc_t bmean[NCH], bm2[NCH];
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch) bmean[ch] = acc_t(0), bm2[ch] = acc_t(0);
#pragma unroll
  for (int j = 0; j < UU; ++j) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) bmean[ROW ? k : 0] += acc_t(a[j].v[k]);
  }
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch) bmean[ch] *= acc_t(1) / acc_t(PER);  // exact: PER = 2^k
#pragma unroll
  for (int j = 0; j < UU; ++j) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t d = acc_t(a[j].v[k]) - bmean[ROW ? k : 0];
      bm2[ROW ? k : 0] += d * d;
    }
  }
  if (cnt == acc_t(0)) {
#pragma unroll
    for (int ch = 0; ch < NCH; ++ch) mean[ch] = bmean[ch], m2[ch] = bm2[ch];
    cnt = acc_t(PER);
    return;
  }
  const acc_t n1 = cnt + acc_t(PER);
  const acc_t r = acc_t(PER) / n1;
  const acc_t wgt = cnt * r;
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch) {
    const acc_t delta = bmean[ch] - mean[ch];
    mean[ch] += delta * r;
    m2[ch] += bm2[ch] + delta * delta * wgt;
  }
  cnt = n1;
}

// partial[(c * splits + split) * 2 + {0, 1}] = (mean, M2) of the block's values of channel c.
template <typename T, int VEC, bool ROW>
__global__ void __launch_bounds__(kThreads)
    bn_stats_kernel(const T* __restrict__ x, at::opmath_type<T>* __restrict__ partial, const Geo g) {
  using acc_t = at::opmath_type<T>;
  using P = Pack<T, VEC>;
  constexpr int NCH = ROW ? VEC : 1;
  constexpr int U = kBatch<VEC>;
  __shared__ acc_t sh_n[kThreads], sh_mean[kThreads], sh_m2[kThreads];

  Walker<VEC, ROW> w(g);
  const P* xp = reinterpret_cast<const P*>(x);
  acc_t cnt = acc_t(0);  // values per channel so far (exact: below 2^24 per thread)
  acc_t mean[NCH], m2[NCH];
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch) mean[ch] = acc_t(0), m2[ch] = acc_t(0);

  while (w.has(U)) {
    P a[U];
#pragma unroll
    for (int j = 0; j < U; ++j) {
      a[j] = xp[w.off];
      w.advance();
    }
    welford_batch<U, VEC, ROW>(a, cnt, mean, m2);
  }
  while (w.valid()) {
    P a[1];
    a[0] = xp[w.off];
    w.advance();
    welford_batch<1, VEC, ROW>(a, cnt, mean, m2);
  }

  // Chan tree over the RL threads of each channel unit (threads tid = rl * CG + cl).
  const int CG = ROW ? g.CG : 1;
#pragma unroll
  for (int k = 0; k < NCH; ++k) {
    __syncthreads();  // the previous channel's results have been read
    sh_n[w.tid] = cnt, sh_mean[w.tid] = mean[k], sh_m2[w.tid] = m2[k];
    __syncthreads();
    for (int half = w.RL >> 1; half > 0; half >>= 1) {
      if (w.rl < half) {
        const int o = w.tid + half * CG;
        acc_t n = sh_n[w.tid], mu = sh_mean[w.tid], q = sh_m2[w.tid];
        chan_merge(n, mu, q, sh_n[o], sh_mean[o], sh_m2[o]);
        sh_n[w.tid] = n, sh_mean[w.tid] = mu, sh_m2[w.tid] = q;
      }
      __syncthreads();
    }
    if (w.rl == 0 && w.active) {
      const int64_t i = (w.channel(k) * g.splits + w.split) * 2;
      partial[i] = sh_mean[w.tid];
      partial[i + 1] = sh_m2[w.tid];
    }
  }
}

// One warp per channel: Chan merge of the channel's `splits` partials. Split s holds
// (min(Mu, (s+1)*upb) - s*upb) * unit values.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    bn_stats_finish_kernel(const acc_t* __restrict__ partial, int64_t C, int64_t splits, int64_t Mu,
                           int64_t upb, int64_t unit, acc_t* __restrict__ mean_out,
                           acc_t* __restrict__ var_out) {
  const int lane = int(threadIdx.x) % kWarp;
  const int64_t c = int64_t(blockIdx.x) * kWarpsPerBlock + int(threadIdx.x) / kWarp;
  if (c >= C) return;  // the whole warp
  long long n = 0;
  acc_t mean = acc_t(0), m2 = acc_t(0);
  for (int64_t s = lane; s < splits; s += kWarp) {
    const int64_t s_end = (s + 1) * upb < Mu ? (s + 1) * upb : Mu;
    const long long nb = (long long)((s_end - s * upb) * unit);
    const int64_t i = (c * splits + s) * 2;
    chan_merge(n, mean, m2, nb, partial[i], partial[i + 1]);
  }
#pragma unroll
  for (int d = kWarp / 2; d > 0; d >>= 1) {
    const long long nb = __shfl_down_sync(0xffffffffu, n, d);
    const acc_t mb = __shfl_down_sync(0xffffffffu, mean, d);
    const acc_t qb = __shfl_down_sync(0xffffffffu, m2, d);
    chan_merge(n, mean, m2, nb, mb, qb);
  }
  if (lane == 0) {
    mean_out[c] = mean;
    var_out[c] = m2 / acc_t(n);  // n == M > 1
  }
}

// y = act(((x - mean) * invstd) * w + b).
template <typename T, int VEC, bool ROW, Act A>
__global__ void __launch_bounds__(kThreads)
    bn_fwd_kernel(const T* __restrict__ x, const at::opmath_type<T>* __restrict__ mean,
                  const at::opmath_type<T>* __restrict__ var,
                  const at::opmath_type<T>* __restrict__ weight,
                  const at::opmath_type<T>* __restrict__ bias, at::opmath_type<T> eps,
                  T* __restrict__ y, const Geo g) {
  using acc_t = at::opmath_type<T>;
  using P = Pack<T, VEC>;
  constexpr int NCH = ROW ? VEC : 1;
  constexpr int U = kBatch<VEC>;

  Walker<VEC, ROW> w(g);
  acc_t pm[NCH], pi[NCH], pw[NCH], pb[NCH];
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch) {
    pm[ch] = acc_t(0), pi[ch] = acc_t(1), pw[ch] = acc_t(1), pb[ch] = acc_t(0);
    if (w.active) {
      const int64_t c = w.channel(ch);
      pm[ch] = mean[c];
      pi[ch] = rsqrt_acc(var[c] + eps);
      if (weight != nullptr) pw[ch] = weight[c];
      if (bias != nullptr) pb[ch] = bias[c];
    }
  }
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);

  auto apply = [&](const P& a) {
    P o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int ch = ROW ? k : 0;
      const acc_t xhat = (acc_t(a.v[k]) - pm[ch]) * pi[ch];
      o.v[k] = T(act_fwd<A>(xhat * pw[ch] + pb[ch]));
    }
    return o;
  };
  while (w.has(U)) {
    P a[U];
    int64_t off[U];
#pragma unroll
    for (int j = 0; j < U; ++j) {
      off[j] = w.off;
      a[j] = xp[w.off];
      w.advance();
    }
#pragma unroll
    for (int j = 0; j < U; ++j) yp[off[j]] = apply(a[j]);
  }
  while (w.valid()) {
    yp[w.off] = apply(xp[w.off]);
    w.advance();
  }
}

// Sum of v over the RL threads of each channel unit (threads tid = rl * CG + cl); the result is
// valid in the thread with rl == 0. Every thread of the block calls it (it synchronises).
template <typename acc_t>
__device__ __forceinline__ acc_t unit_sum(acc_t v, acc_t* red, int tid, int rl, int RL, int CG) {
  __syncthreads();  // earlier readers of `red` are done
  red[tid] = v;
  __syncthreads();
  for (int half = RL >> 1; half > 0; half >>= 1) {
    if (rl < half) red[tid] += red[tid + half * CG];
    __syncthreads();
  }
  return red[tid];
}

// partial[(c * splits + split) * 2 + {0, 1}] = (sum gu, sum gu * xhat) over the block's values of
// channel c.
template <typename T, int VEC, bool ROW, Act A>
__global__ void __launch_bounds__(kThreads)
    bn_bwd_reduce_kernel(const T* __restrict__ gout, const T* __restrict__ x,
                         const at::opmath_type<T>* __restrict__ mean,
                         const at::opmath_type<T>* __restrict__ var,
                         const at::opmath_type<T>* __restrict__ weight,
                         const at::opmath_type<T>* __restrict__ bias, at::opmath_type<T> eps,
                         at::opmath_type<T>* __restrict__ partial, const Geo g) {
  using acc_t = at::opmath_type<T>;
  using P = Pack<T, VEC>;
  constexpr int NCH = ROW ? VEC : 1;
  constexpr int U = kBatch<VEC>;
  __shared__ acc_t red[kThreads];

  Walker<VEC, ROW> w(g);
  acc_t pm[NCH], pi[NCH], pw[NCH], pb[NCH], sg[NCH], sgx[NCH];
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch) {
    pm[ch] = acc_t(0), pi[ch] = acc_t(1), pw[ch] = acc_t(1), pb[ch] = acc_t(0);
    sg[ch] = acc_t(0), sgx[ch] = acc_t(0);
    if (w.active) {
      const int64_t c = w.channel(ch);
      pm[ch] = mean[c];
      pi[ch] = rsqrt_acc(var[c] + eps);
      if (weight != nullptr) pw[ch] = weight[c];
      if (bias != nullptr) pb[ch] = bias[c];
    }
  }
  const P* xp = reinterpret_cast<const P*>(x);
  const P* gp = reinterpret_cast<const P*>(gout);

  auto accumulate = [&](const P& a, const P& gr) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int ch = ROW ? k : 0;
      const acc_t xhat = (acc_t(a.v[k]) - pm[ch]) * pi[ch];
      const acc_t gu = act_bwd<A>(acc_t(gr.v[k]), xhat * pw[ch] + pb[ch]);
      sg[ch] += gu;
      sgx[ch] += gu * xhat;
    }
  };
  while (w.has(U)) {
    P a[U], gr[U];
#pragma unroll
    for (int j = 0; j < U; ++j) {
      a[j] = xp[w.off];
      gr[j] = gp[w.off];
      w.advance();
    }
#pragma unroll
    for (int j = 0; j < U; ++j) accumulate(a[j], gr[j]);
  }
  while (w.valid()) {
    accumulate(xp[w.off], gp[w.off]);
    w.advance();
  }

  const int CG = ROW ? g.CG : 1;
#pragma unroll
  for (int k = 0; k < NCH; ++k) {
    const acc_t s0 = unit_sum(sg[k], red, w.tid, w.rl, w.RL, CG);
    const acc_t s1 = unit_sum(sgx[k], red, w.tid, w.rl, w.RL, CG);
    if (w.rl == 0 && w.active) {
      const int64_t i = (w.channel(k) * g.splits + w.split) * 2;
      partial[i] = s0;
      partial[i + 1] = s1;
    }
  }
}

// One warp per channel: sums of the channel's `splits` partial pairs (fixed order).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    bn_sums_finish_kernel(const acc_t* __restrict__ partial, int64_t C, int64_t splits,
                          acc_t* __restrict__ sum_gu, acc_t* __restrict__ sum_gux) {
  const int lane = int(threadIdx.x) % kWarp;
  const int64_t c = int64_t(blockIdx.x) * kWarpsPerBlock + int(threadIdx.x) / kWarp;
  if (c >= C) return;  // the whole warp
  acc_t s0 = acc_t(0), s1 = acc_t(0);
  for (int64_t s = lane; s < splits; s += kWarp) {
    const int64_t i = (c * splits + s) * 2;
    s0 += partial[i];
    s1 += partial[i + 1];
  }
#pragma unroll
  for (int d = kWarp / 2; d > 0; d >>= 1) {
    s0 += __shfl_down_sync(0xffffffffu, s0, d);
    s1 += __shfl_down_sync(0xffffffffu, s1, d);
  }
  if (lane == 0) {
    sum_gu[c] = s0;
    sum_gux[c] = s1;
  }
}

// grad_x = w * invstd * (gu - sum_gu / M - xhat * sum_gux / M).
template <typename T, int VEC, bool ROW, Act A>
__global__ void __launch_bounds__(kThreads)
    bn_bwd_dx_kernel(const T* __restrict__ gout, const T* __restrict__ x,
                     const at::opmath_type<T>* __restrict__ mean,
                     const at::opmath_type<T>* __restrict__ var,
                     const at::opmath_type<T>* __restrict__ weight,
                     const at::opmath_type<T>* __restrict__ bias, at::opmath_type<T> eps,
                     const at::opmath_type<T>* __restrict__ sum_gu,
                     const at::opmath_type<T>* __restrict__ sum_gux, at::opmath_type<T> M,
                     T* __restrict__ gx, const Geo g) {
  using acc_t = at::opmath_type<T>;
  using P = Pack<T, VEC>;
  constexpr int NCH = ROW ? VEC : 1;
  constexpr int U = kBatch<VEC>;

  Walker<VEC, ROW> w(g);
  acc_t pm[NCH], pi[NCH], pw[NCH], pb[NCH], pk[NCH], pa[NCH], pq[NCH];
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch) {
    pm[ch] = acc_t(0), pi[ch] = acc_t(1), pw[ch] = acc_t(1), pb[ch] = acc_t(0);
    pa[ch] = acc_t(0), pq[ch] = acc_t(0);
    if (w.active) {
      const int64_t c = w.channel(ch);
      pm[ch] = mean[c];
      pi[ch] = rsqrt_acc(var[c] + eps);
      if (weight != nullptr) pw[ch] = weight[c];
      if (bias != nullptr) pb[ch] = bias[c];
      pa[ch] = sum_gu[c] / M;
      pq[ch] = sum_gux[c] / M;
    }
    pk[ch] = pw[ch] * pi[ch];
  }
  const P* xp = reinterpret_cast<const P*>(x);
  const P* gp = reinterpret_cast<const P*>(gout);
  P* op = reinterpret_cast<P*>(gx);

  auto apply = [&](const P& a, const P& gr) {
    P o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int ch = ROW ? k : 0;
      const acc_t xhat = (acc_t(a.v[k]) - pm[ch]) * pi[ch];
      const acc_t gu = act_bwd<A>(acc_t(gr.v[k]), xhat * pw[ch] + pb[ch]);
      o.v[k] = T(pk[ch] * (gu - pa[ch] - xhat * pq[ch]));
    }
    return o;
  };
  while (w.has(U)) {
    P a[U], gr[U];
    int64_t off[U];
#pragma unroll
    for (int j = 0; j < U; ++j) {
      off[j] = w.off;
      a[j] = xp[w.off];
      gr[j] = gp[w.off];
      w.advance();
    }
#pragma unroll
    for (int j = 0; j < U; ++j) op[off[j]] = apply(a[j], gr[j]);
  }
  while (w.valid()) {
    op[w.off] = apply(xp[w.off], gp[w.off]);
    w.advance();
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

struct Plan {
  bool row;
  int vec;
  Geo g;
};

// vec_max: 16-byte units of the dtype; aligned: every tensor the kernels walk is 16-byte aligned.
Plan make_plan(const char* op, const BnShape& s, bool cl, int vec_max, bool aligned) {
  Plan p{};
  p.row = cl || s.HW == 1;  // NCHW with H*W == 1 is [N][C] in memory, like NHWC
  p.vec = (aligned && (p.row ? s.C : s.HW) % vec_max == 0) ? vec_max : 1;
  Geo& g = p.g;
  g.C = s.C;
  int64_t min_upb;
  if (p.row) {
    g.Cv = s.C / p.vec;
    g.HWv = 1;
    g.CG = choose_cg(g.Cv);
    g.groups = ceil_div(g.Cv, g.CG);
    g.Mu = s.M();
    min_upb = int64_t(kThreads / g.CG) * kMinUnitsPerThread;
  } else {
    g.Cv = s.C;
    g.HWv = s.HW / p.vec;
    g.CG = 1;
    g.groups = s.C;
    g.Mu = s.N * g.HWv;
    min_upb = int64_t(kThreads) * kMinUnitsPerThread;
  }
  const int64_t target = int64_t(max_resident_blocks()) * kWaves;
  const int64_t want = ceil_div(target, g.groups);
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(g.Mu, min_upb)));
  g.upb = ceil_div(g.Mu, splits);
  g.splits = ceil_div(g.Mu, g.upb);  // no empty split
  TORCH_CHECK(g.groups * g.splits <= std::numeric_limits<int>::max(), "fastops.", op,
              ": the input is too large for one CUDA launch");
  return p;
}

unsigned grid_of(const Geo& g) { return unsigned(g.groups * g.splits); }

unsigned finish_grid(int64_t C) {
  const int64_t blocks = ceil_div(C, kWarpsPerBlock);
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "fastops: too many channels");
  return unsigned(blocks);
}

// weight / bias in the accumulation type, contiguous; undefined when not given.
at::Tensor param_as(const c10::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(acc).contiguous();
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps, std::string_view act_name) {
  constexpr const char* op = "bn_act_train";
  const BnShape s = check_bn_act(op, x, weight, bias, eps);
  const Act act = parse_act(op, act_name);
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::ScalarType acc = bn_stat_dtype(x);
  TORCH_INTERNAL_ASSERT(acc == at::toOpMathType(x.scalar_type()));
  const c10::cuda::CUDAGuard guard(x.device());

  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor w = param_as(weight, acc);
  const at::Tensor b = param_as(bias, acc);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor mean = at::empty({s.C}, x.options().dtype(acc));
  at::Tensor var = at::empty({s.C}, x.options().dtype(acc));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VMAX = 16 / sizeof(scalar_t);
    const bool aligned = aligned16(xc.const_data_ptr()) && aligned16(y.const_data_ptr());
    const Plan p = make_plan(op, s, cl, VMAX, aligned);
    const Geo g = p.g;
    at::Tensor partial = at::empty({s.C * g.splits * 2}, x.options().dtype(acc));
    dispatch_vec_layout<VMAX>(p.vec, p.row, [&](auto v_tag, auto row_tag) {
      constexpr int V = decltype(v_tag)::value;
      constexpr bool ROW = decltype(row_tag)::value;
      bn_stats_kernel<scalar_t, V, ROW><<<grid_of(g), kThreads, 0, stream>>>(
          xc.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bn_stats_finish_kernel<acc_t><<<finish_grid(s.C), kThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), s.C, g.splits, g.Mu, g.upb, ROW ? 1 : V,
          mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dispatch_act(act, [&](auto act_tag) {
        constexpr Act A = decltype(act_tag)::value;
        bn_fwd_kernel<scalar_t, V, ROW, A><<<grid_of(g), kThreads, 0, stream>>>(
            xc.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
            var.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(b),
            acc_t(eps), y.mutable_data_ptr<scalar_t>(), g);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return std::make_tuple(y, mean, var);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
    std::string_view act_name) {
  constexpr const char* op = "bn_act_train_backward";
  const BnShape s = check_bn_act(op, x, weight, bias, eps);
  check_bn_act_backward(op, grad_out, x, mean, var, s);
  const Act act = parse_act(op, act_name);
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::ScalarType acc = bn_stat_dtype(x);
  TORCH_INTERNAL_ASSERT(acc == at::toOpMathType(x.scalar_type()));
  const c10::cuda::CUDAGuard guard(x.device());

  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor go = grad_out.contiguous(fmt);
  const at::Tensor mc = mean.to(acc).contiguous();
  const at::Tensor vc = var.to(acc).contiguous();
  const at::Tensor w = param_as(weight, acc);
  const at::Tensor b = param_as(bias, acc);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor sum_gu = at::empty({s.C}, x.options().dtype(acc));   // grad_bias
  at::Tensor sum_gux = at::empty({s.C}, x.options().dtype(acc));  // grad_weight
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VMAX = 16 / sizeof(scalar_t);
    const bool aligned = aligned16(xc.const_data_ptr()) && aligned16(go.const_data_ptr()) &&
                         aligned16(grad_x.const_data_ptr());
    const Plan p = make_plan(op, s, cl, VMAX, aligned);
    const Geo g = p.g;
    at::Tensor partial = at::empty({s.C * g.splits * 2}, x.options().dtype(acc));
    dispatch_vec_layout<VMAX>(p.vec, p.row, [&](auto v_tag, auto row_tag) {
      constexpr int V = decltype(v_tag)::value;
      constexpr bool ROW = decltype(row_tag)::value;
      dispatch_act(act, [&](auto act_tag) {
        constexpr Act A = decltype(act_tag)::value;
        bn_bwd_reduce_kernel<scalar_t, V, ROW, A><<<grid_of(g), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
            mc.const_data_ptr<acc_t>(), vc.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(w),
            ptr_or_null<acc_t>(b), acc_t(eps), partial.mutable_data_ptr<acc_t>(), g);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        bn_sums_finish_kernel<acc_t><<<finish_grid(s.C), kThreads, 0, stream>>>(
            partial.const_data_ptr<acc_t>(), s.C, g.splits, sum_gu.mutable_data_ptr<acc_t>(),
            sum_gux.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        bn_bwd_dx_kernel<scalar_t, V, ROW, A><<<grid_of(g), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
            mc.const_data_ptr<acc_t>(), vc.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(w),
            ptr_or_null<acc_t>(b), acc_t(eps), sum_gu.const_data_ptr<acc_t>(),
            sum_gux.const_data_ptr<acc_t>(), acc_t(s.M()), grad_x.mutable_data_ptr<scalar_t>(), g);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });

  const bool has_w = weight.has_value() && weight->defined();
  const bool has_b = bias.has_value() && bias->defined();
  at::Tensor grad_weight = has_w ? sum_gux.to(weight->scalar_type()) : sum_gux;
  at::Tensor grad_bias = has_b ? sum_gu.to(bias->scalar_type()) : sum_gu;
  return std::make_tuple(grad_x, grad_weight, grad_bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("bn_act_train", &bn_act_train_cuda);
  m.impl("bn_act_train_backward", &bn_act_train_backward_cuda);
}

}  // namespace cuda
}  // namespace fastops
