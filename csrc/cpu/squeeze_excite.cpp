// CPU kernels of fastops::squeeze_excite and its backward (formulas: csrc/squeeze_excite.h).
//
// Two passes over x each way, over x (and grad_out) made dense in the output layout:
//   sums:   per (n, c), sum x (forward) or sum x and sum g * x (backward), in float over chunks
//           of at most kChunk values per lane, added up in double;
//   scale:  out = in * s[n, c] + t[n, c]: y = x * s (t = 0), or grad_x = g * s + gp / HW.
// Between them the small [N, C] / [N, S] math: the two fully connected layers with fc_layer
// (their gradients with ATen's GEMMs), the activations with csrc/activation.h's formulas.
// The forward goes one image at a time per thread when it can (forward_by_image: the scale pass
// then reads the image from cache), else over the whole batch per pass (then each thread scales
// its part backwards, the last read first).
// channels_last is vectorised across 16 channels of a pixel, its rows walked as one flat array
// where the channel pattern repeats within a few rows (lane_period; the sums split into chunks
// of pixels, each with its own partial sums, merged in a fixed order); NCHW along each plane.
// float32 and bfloat16 take the SIMD paths; float64 and float16 plain loops (in double / float).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <tuple>
#include <vector>

#include "../squeeze_excite.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int L = kLanes;
constexpr int64_t kChunk = 256;  // values per lane summed in float before they go to double

// sum x[i] and sum g[i] * x[i] over n elements (g may be null).
template <typename E, typename acc_t>
FASTOPS_CPU_INLINE void run_sums(const E* x, const E* g, int64_t n, double& sx_out, double& sgx_out) {
  double sx = 0, sgx = 0;  // (locals: adding into the references went through memory each time)
  int64_t i = 0;
  if constexpr (kSimd<E>) {
    while (i + L <= n) {
      const int64_t end = std::min(n - L + 1, i + kChunk * L);
      f32x16 a = f32x16{}, b = f32x16{};
      for (; i < end; i += L) {
        const f32x16 xv = load16(x + i);
        a += xv;
        if (g) b += load16(g + i) * xv;
      }
      sx += hsum(a);
      if (g) sgx += hsum(b);
    }
  }
  for (; i < n; ++i) {
    const acc_t xv = value(x[i]);
    sx += xv;
    if (g) sgx += acc_t(value(g[i])) * xv;
  }
  sx_out += sx, sgx_out += sgx;
}

// Rows of C values (channels_last pixels) walked as one flat array, 16 lanes at a time: lane k
// of the vector at flat offset i holds channel (i + k) % C, which repeats every lane_period(C)
// = lcm(C, 16) values. So no row ends in a scalar tail (C = 72 or 120: 8 of each row's values)
// when the period is short; 0 when it is not (rows one at a time then).
constexpr int64_t kMaxPeriod = 4096;
inline int64_t lane_period(int64_t C) {
  const int64_t P = std::lcm(C, int64_t(L));
  return P <= 4 * C && P <= kMaxPeriod ? P : 0;
}

// Column sums over `rows` pixel rows of C values (channels_last): sx[c] += sum x, sgx[c] += sum g*x.
template <typename E, typename acc_t>
FASTOPS_CPU_INLINE void run_col_sums(const E* x, const E* g, int64_t rows, int64_t C, double* sx, double* sgx) {
  if constexpr (kSimd<E>) {
    if (const int64_t P = lane_period(C)) {  // flat: a[k] sums the values of channel k % C
      const int64_t V = P / L, prow = P / C;  // the period in vectors, in rows
      const int64_t chunk_rows = std::max(prow, kChunk / prow * prow);
      alignas(64) float a[kMaxPeriod], b[kMaxPeriod];
      for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
        const int64_t n = (std::min(rows, r0 + chunk_rows) - r0) * C, periods = n / P;
        const E* xb = x + r0 * C;
        const E* gb = g ? g + r0 * C : nullptr;
        std::fill(a, a + P, 0.f);
        std::fill(b, b + P, 0.f);
        for (int64_t q = 0; q < periods; ++q)
          for (int64_t v = 0; v < V; ++v) {
            const int64_t i = q * P + v * L;
            const f32x16 xv = load16(xb + i);
            store16(a + v * L, load16(a + v * L) + xv);
            if (gb) store16(b + v * L, load16(b + v * L) + load16(gb + i) * xv);
          }
        for (int64_t i = periods * P; i < n; ++i) {  // whole rows after the last whole period
          const float xv = value(xb[i]);
          a[i - periods * P] += xv;
          if (gb) b[i - periods * P] += value(gb[i]) * xv;
        }
        for (int64_t k = 0; k < P; ++k) sx[k % C] += a[k], sgx[k % C] += b[k];
      }
      return;
    }
  }
  std::vector<acc_t> a(C), b(C);
  for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
    std::fill(a.begin(), a.end(), acc_t(0));
    std::fill(b.begin(), b.end(), acc_t(0));
    for (int64_t r = r0; r < std::min(rows, r0 + kChunk); ++r) {
      const E* xr = x + r * C;
      const E* gr = g ? g + r * C : nullptr;
      int64_t c = 0;
      if constexpr (kSimd<E>) {
        for (; c + L <= C; c += L) {
          const f32x16 xv = load16(xr + c);
          store16(a.data() + c, load16(a.data() + c) + xv);
          if (gr) store16(b.data() + c, load16(b.data() + c) + load16(gr + c) * xv);
        }
      }
      for (; c < C; ++c) {
        const acc_t xv = value(xr[c]);
        a[c] += xv;
        if (gr) b[c] += acc_t(value(gr[c])) * xv;
      }
    }
    for (int64_t c = 0; c < C; ++c) sx[c] += a[c], sgx[c] += b[c];
  }
}

// out[i] = in[i] * s + t over n elements.
template <typename E, typename acc_t>
FASTOPS_CPU_INLINE void run_scale(const E* in, E* out, int64_t n, acc_t s, acc_t t) {
  int64_t i = 0;
  if constexpr (kSimd<E>) {
    const f32x16 sv = f32x16{} + s, tv = f32x16{} + t;
    for (; i + L <= n; i += L) store16(out + i, load16(in + i) * sv + tv);
  }
  for (; i < n; ++i) put(out + i, acc_t(value(in[i])) * s + t);
}

// out[c] = in[c] * s[c] + t[c] over `rows` pixel rows of C values (channels_last); t null: 0.
template <typename E, typename acc_t>
FASTOPS_CPU_INLINE void run_row_scale(const E* in, E* out, int64_t rows, int64_t C, const acc_t* s, const acc_t* t) {
  if constexpr (kSimd<E>) {
    if (const int64_t P = lane_period(C)) {  // flat, against s and t repeated over one period
      alignas(64) float sp[kMaxPeriod], tp[kMaxPeriod];
      for (int64_t k = 0; k < P; ++k) sp[k] = s[k % C], tp[k] = t ? t[k % C] : 0.f;
      const int64_t n = rows * C;
      int64_t i = 0;
      for (int64_t j = 0; i + L <= n; i += L, j = j + L == P ? 0 : j + L)
        store16(out + i, load16(in + i) * load16(sp + j) + load16(tp + j));
      for (; i < n; ++i) put(out + i, value(in[i]) * sp[i % P] + tp[i % P]);
      return;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const E* ir = in + r * C;
    E* orow = out + r * C;
    int64_t c = 0;
    if constexpr (kSimd<E>) {
      if (t)
        for (; c + L <= C; c += L) store16(orow + c, load16(ir + c) * load16(s + c) + load16(t + c));
      else
        for (; c + L <= C; c += L) store16(orow + c, load16(ir + c) * load16(s + c));
    }
    for (; c < C; ++c) put(orow + c, acc_t(value(ir[c])) * s[c] + (t ? t[c] : acc_t(0)));
  }
}

// R rows of `in` ([., K], row-major) against one weight row wj: out[r * J] = bj + in[r] . wj.
// R independent accumulators, so that the FMAs' latency overlaps.
template <int R>
FASTOPS_CPU_INLINE void fc_rows(const float* in, int64_t K, const float* wj, float bj, float* out, int64_t J) {
  f32x16 acc[R] = {};
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    const f32x16 wv = load16(wj + k);
    unroll<R>([&](auto r) { acc[r] += wv * load16(in + r * K + k); });
  }
  unroll<R>([&](auto r) {
    float v = hsum(acc[r]);
    for (int64_t kk = k; kk < K; ++kk) v += wj[kk] * in[r * K + kk];
    out[r * J] = v + bj;
  });
}

// One row xn against R weight rows w[0 .. R) ([R, K] row-major): out[r] = b[r] + xn . w[r].
template <int R>
FASTOPS_CPU_INLINE void fc_cols(const float* xn, int64_t K, const float* w, const float* b, float* out) {
  f32x16 acc[R] = {};
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    const f32x16 xv = load16(xn + k);
    unroll<R>([&](auto r) { acc[r] += load16(w + r * K + k) * xv; });
  }
  unroll<R>([&](auto r) {
    float v = hsum(acc[r]);
    for (int64_t kk = k; kk < K; ++kk) v += w[r * K + kk] * xn[kk];
    out[r] = v + (b ? b[r] : 0.f);
  });
}

// out[n, j] = b[j] + sum_k in[n, k] * w[j, k]: a fully connected layer on [N, K] rows (row-major;
// w [J, K] row-major; b may be null), for the output columns j0 .. j1. float: blocks of 8 rows
// of `in` against each weight row, the rest one row against 4 weight rows at a time (16 lanes
// along k, independent accumulators); double: plain loops.
template <typename acc_t>
FASTOPS_CPU_INLINE void run_fc(const acc_t* in, int64_t N, int64_t K, const acc_t* w, const acc_t* b, int64_t j0,
                               int64_t j1, int64_t J, acc_t* out) {
  if constexpr (std::is_same_v<acc_t, float>) {
    const int64_t n8 = N - N % 8;
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t n = 0; n < n8; n += 8) fc_rows<8>(in + n * K, K, w + j * K, b ? b[j] : 0.f, out + n * J + j, J);
    for (int64_t n = n8; n < N; ++n) {
      int64_t j = j0;
      for (; j + 4 <= j1; j += 4) fc_cols<4>(in + n * K, K, w + j * K, b ? b + j : nullptr, out + n * J + j);
      for (; j < j1; ++j) fc_cols<1>(in + n * K, K, w + j * K, b ? b + j : nullptr, out + n * J + j);
    }
  } else {
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t n = 0; n < N; ++n) {
        acc_t v = 0;
        for (int64_t k = 0; k < K; ++k) v += w[j * K + k] * in[n * K + k];
        out[n * J + j] = v + (b ? b[j] : acc_t(0));
      }
  }
}

// The multi-versioned entry points (compiled per instruction set, simd.h), one per storage type.
#define FASTOPS_SE_ENTRIES(E, acc_t, suffix)                                                              \
  FASTOPS_CPU_MULTIVERSION void sums_##suffix(const E* x, const E* g, int64_t n, double* sx, double* sgx) { \
    run_sums<E, acc_t>(x, g, n, *sx, *sgx);                                                               \
  }                                                                                                       \
  FASTOPS_CPU_MULTIVERSION void col_sums_##suffix(const E* x, const E* g, int64_t rows, int64_t C,          \
                                                  double* sx, double* sgx) {                              \
    run_col_sums<E, acc_t>(x, g, rows, C, sx, sgx);                                                       \
  }                                                                                                       \
  FASTOPS_CPU_MULTIVERSION void scale_##suffix(const E* in, E* out, int64_t n, acc_t s, acc_t t) {          \
    run_scale<E, acc_t>(in, out, n, s, t);                                                                \
  }                                                                                                       \
  FASTOPS_CPU_MULTIVERSION void row_scale_##suffix(const E* in, E* out, int64_t rows, int64_t C,            \
                                                   const acc_t* s, const acc_t* t) {                      \
    run_row_scale<E, acc_t>(in, out, rows, C, s, t);                                                      \
  }
FASTOPS_SE_ENTRIES(float, float, f32)
FASTOPS_SE_ENTRIES(uint16_t, float, bf16)
FASTOPS_SE_ENTRIES(at::Half, float, f16)
FASTOPS_SE_ENTRIES(double, double, f64)
#undef FASTOPS_SE_ENTRIES
// run_fc per accumulation type: float compiled per instruction set, double plain.
FASTOPS_CPU_MULTIVERSION void fc_layer(const float* in, int64_t N, int64_t K, const float* w, const float* b, int64_t j0,
                                       int64_t j1, int64_t J, float* out) {
  run_fc<float>(in, N, K, w, b, j0, j1, J, out);
}
void fc_layer(const double* in, int64_t N, int64_t K, const double* w, const double* b, int64_t j0, int64_t j1,
              int64_t J, double* out) {
  run_fc<double>(in, N, K, w, b, j0, j1, J, out);
}

#define FASTOPS_SE_CALL(fn, E, ...)                                      \
  do {                                                                   \
    if constexpr (std::is_same_v<E, float>) fn##_f32(__VA_ARGS__);       \
    else if constexpr (std::is_same_v<E, uint16_t>) fn##_bf16(__VA_ARGS__); \
    else if constexpr (std::is_same_v<E, at::Half>) fn##_f16(__VA_ARGS__);  \
    else fn##_f64(__VA_ARGS__);                                          \
  } while (0)

// Per (n, c): sx = sum x, sgx = sum g * x (g may be undefined), [N * C] doubles each.
template <typename E>
void plane_sums(const at::Tensor& x, const at::Tensor& g, bool cl, std::vector<double>& sx, std::vector<double>& sgx) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const E* xp = reinterpret_cast<const E*>(x.data_ptr());
  const E* gp = g.defined() ? reinterpret_cast<const E*>(g.data_ptr()) : nullptr;
  sx.assign(N * C, 0.0);
  sgx.assign(N * C, 0.0);
  if (!cl) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kPointwiseGrain / HW), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p)
        FASTOPS_SE_CALL(sums, E, xp + p * HW, gp ? gp + p * HW : nullptr, HW, &sx[p], &sgx[p]);
    });
    return;
  }
  // channels_last: chunks of pixels of one image, each with partial sums, merged in order
  const int64_t rows = std::max<int64_t>(kChunk, kPointwiseGrain / C);
  const int64_t chunks = (HW + rows - 1) / rows;
  std::vector<double> px(N * chunks * C, 0.0), pgx(N * chunks * C, 0.0);
  at::parallel_for(0, N * chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / chunks, r0 = (t % chunks) * rows, r1 = std::min(HW, r0 + rows);
      const int64_t off = (n * HW + r0) * C;
      FASTOPS_SE_CALL(col_sums, E, xp + off, gp ? gp + off : nullptr, r1 - r0, C, &px[t * C], &pgx[t * C]);
    }
  });
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < chunks; ++k)
      for (int64_t c = 0; c < C; ++c)
        sx[n * C + c] += px[(n * chunks + k) * C + c], sgx[n * C + c] += pgx[(n * chunks + k) * C + c];
}

// out = in * s[n, c] + t[n, c] (s, t: contiguous [N, C] of Acc<E>; t null: 0). Each task walks
// its part backwards: plane_sums split `in` among the threads the same way and read it forwards,
// so what a thread reads first here is what it read last there, the likeliest still in its cache.
template <typename E, typename acc_t = Acc<E>>
void scale_pass(const at::Tensor& in, at::Tensor& out, bool cl, const acc_t* s, const acc_t* t) {
  const int64_t N = in.size(0), C = in.size(1), HW = in.size(2) * in.size(3);
  const E* ip = reinterpret_cast<const E*>(in.data_ptr());
  E* op = reinterpret_cast<E*>(out.data_ptr());
  if (!cl) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kPointwiseGrain / HW), [&](int64_t b, int64_t e) {
      for (int64_t p = e - 1; p >= b; --p)
        FASTOPS_SE_CALL(scale, E, ip + p * HW, op + p * HW, HW, s[p], t ? t[p] : acc_t(0));
    });
    return;
  }
  constexpr int64_t kRows = 64;  // pixels per backward step
  at::parallel_for(0, N * HW, std::max<int64_t>(1, kPointwiseGrain / C), [&](int64_t b, int64_t e) {
    for (int64_t hi = e; hi > b;) {  // runs of pixels within one image, last first
      const int64_t n = (hi - 1) / HW, lo = std::max({b, n * HW, hi - kRows});
      FASTOPS_SE_CALL(row_scale, E, ip + lo * C, op + lo * C, hi - lo, C, s + n * C, t ? t + n * C : nullptr);
      hi = lo;
    }
  });
}

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// act(u) or g * act'(u), elementwise over a small contiguous tensor of the accumulation type.
at::Tensor small_act(const at::Tensor& u, Act act, const at::Tensor& g = {}) {
  at::Tensor out = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "squeeze_excite", [&] {
    const scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t* gp = g.defined() ? g.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      const int64_t n = u.numel();
      if (gp)
        for (int64_t i = 0; i < n; ++i) op[i] = act_bwd<A>(gp[i], up[i]);
      else
        for (int64_t i = 0; i < n; ++i) op[i] = act_fwd<A>(up[i]);
    });
  });
  return out;
}

// The fully connected layers' operands in the accumulation type: [rows, cols] matrices, biases.
struct FC {
  at::Tensor w1, b1, w2, b2;  // b1 / b2 undefined where None
  FC(const at::Tensor& w1_, const c10::optional<at::Tensor>& b1_, const at::Tensor& w2_,
     const c10::optional<at::Tensor>& b2_, at::ScalarType acc) {
    w1 = w1_.reshape({w1_.size(0), w1_.size(1)}).to(acc).contiguous();
    w2 = w2_.reshape({w2_.size(0), w2_.size(1)}).to(acc).contiguous();
    if (b1_.has_value() && b1_->defined()) b1 = b1_->to(acc).contiguous();
    if (b2_.has_value() && b2_->defined()) b2 = b2_->to(acc).contiguous();
  }
  // t @ w^T + b for contiguous t [N, K] (fc_layer: ATen's addmm cost 40-90 us on these
  // small operands, more than a pass over x), split over the output columns when large.
  static at::Tensor linear(const at::Tensor& t, const at::Tensor& w, const at::Tensor& b) {
    const int64_t N = t.size(0), K = t.size(1), J = w.size(0);
    at::Tensor out = at::empty({N, J}, t.options());
    const int64_t grain = std::max<int64_t>(1, kPointwiseGrain / std::max<int64_t>(1, N * K));
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "squeeze_excite", [&] {
      const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, J, grain, [&](int64_t j0, int64_t j1) {
        fc_layer(t.data_ptr<scalar_t>(), N, K, w.data_ptr<scalar_t>(), bp, j0, j1, J, out.data_ptr<scalar_t>());
      });
    });
    return out;
  }
};

// The squeeze path from the pooled means p [N, C]: z, h = act(z), t, s = gate(t).
struct Squeeze {
  at::Tensor p, z, h, t, s;
  Squeeze(at::Tensor p_, const FC& fc, Act act, Act gate) : p(std::move(p_)) {
    z = FC::linear(p, fc.w1, fc.b1);
    h = small_act(z, act);
    t = FC::linear(h, fc.w2, fc.b2);
    s = small_act(t, gate);
  }
};

// The means sum / HW (in double), rounded to the accumulation type.
at::Tensor means(const std::vector<double>& sums, int64_t N, int64_t C, int64_t HW, at::ScalarType acc) {
  at::Tensor p = at::empty({N, C}, at::TensorOptions().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "squeeze_excite", [&] {
    scalar_t* pp = p.data_ptr<scalar_t>();
    for (int64_t i = 0; i < N * C; ++i) pp[i] = scalar_t(sums[i] / double(HW));
  });
  return p;
}

// v[i] = act(v[i]) over n values.
template <typename acc_t>
void act_in_place(acc_t* v, int64_t n, Act act) {
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    for (int64_t i = 0; i < n; ++i) v[i] = act_fwd<A>(v[i]);
  });
}

// The forward one image at a time, each image by one thread from start to end: pool it, its
// two fully connected layers (one row of fc_layer), scale it. The scale pass then reads the image
// from that core's cache (an image of ~400 KB here; the two-pass path reads all of x back from
// memory) and no thread waits for another. Used when every thread has an image and the layers
// are small beside the image (image_at_a_time).
template <typename E>
void forward_by_image(const at::Tensor& x, at::Tensor& y, bool cl, const SEShape& sh, const FC& fc, Act a, Act g) {
  using acc_t = Acc<E>;
  const int64_t C = sh.C, HW = sh.HW, S = sh.S;
  const E* xp = reinterpret_cast<const E*>(x.data_ptr());
  E* yp = reinterpret_cast<E*>(y.data_ptr());
  const acc_t* w1 = fc.w1.data_ptr<acc_t>();
  const acc_t* w2 = fc.w2.data_ptr<acc_t>();
  const acc_t* b1 = fc.b1.defined() ? fc.b1.data_ptr<acc_t>() : nullptr;
  const acc_t* b2 = fc.b2.defined() ? fc.b2.data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, sh.N, 1, [&](int64_t b, int64_t e) {
    std::vector<double> sx(C), unused(C);
    std::vector<acc_t> p(C), h(S), sc(C);
    for (int64_t n = b; n < e; ++n) {
      const E* xn = xp + n * C * HW;
      E* yn = yp + n * C * HW;
      std::fill(sx.begin(), sx.end(), 0.0);
      if (cl) {
        FASTOPS_SE_CALL(col_sums, E, xn, nullptr, HW, C, sx.data(), unused.data());
      } else {
        for (int64_t c = 0; c < C; ++c) FASTOPS_SE_CALL(sums, E, xn + c * HW, nullptr, HW, &sx[c], &unused[c]);
      }
      for (int64_t c = 0; c < C; ++c) p[c] = acc_t(sx[c] / double(HW));
      fc_layer(p.data(), 1, C, w1, b1, 0, S, S, h.data());
      act_in_place(h.data(), S, a);
      fc_layer(h.data(), 1, S, w2, b2, 0, C, C, sc.data());
      act_in_place(sc.data(), C, g);
      if (cl) {
        FASTOPS_SE_CALL(row_scale, E, xn, yn, HW, C, sc.data(), static_cast<const acc_t*>(nullptr));
      } else {
        for (int64_t c = 0; c < C; ++c) FASTOPS_SE_CALL(scale, E, xn + c * HW, yn + c * HW, HW, sc[c], acc_t(0));
      }
    }
  });
}

// One image at a time (forward_by_image) pays off when every thread gets an image and the fully
// connected layers' work per image (2 C S multiply-adds, from the weights in cache) is at most
// twice the image's C HW values. Measured against the two-pass path (2 threads, N=8, both
// layouts): C72 28x28 1.3-1.4x, C120 28x28 1.1-1.35x, C480 14x14 (S = 120, HW = 196) 1.1x,
// C672 14x14 (S = 168) 1.05-1.15x, but C960 7x7 (S = 240, HW = 49) 0.8-0.9x.
bool image_at_a_time(const SEShape& sh) {
  return sh.N >= at::get_num_threads() && sh.S <= sh.HW;
}

at::Tensor squeeze_excite(const at::Tensor& x_, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                          const at::Tensor& w2, const c10::optional<at::Tensor>& b2, c10::string_view act,
                          c10::string_view gate) {
  const char* op = "squeeze_excite";
  const SEShape sh = check_squeeze_excite(op, x_, w1, b1, w2, b2);
  const Act a = parse_act(op, act), g = parse_act(op, gate, "gate");
  const bool cl = output_channels_last(x_);
  const at::Tensor x = x_.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty_like(x);
  const at::ScalarType acc = acc_type(x);
  dispatch_storage(op, x.scalar_type(), [&](auto e) {
    using E = decltype(e);
    if (image_at_a_time(sh)) {
      forward_by_image<E>(x, y, cl, sh, FC(w1, b1, w2, b2, acc), a, g);
      return;
    }
    std::vector<double> sx, unused;
    plane_sums<E>(x, at::Tensor(), cl, sx, unused);
    const Squeeze sq(means(sx, sh.N, sh.C, sh.HW, acc), FC(w1, b1, w2, b2, acc), a, g);
    scale_pass<E>(x, y, cl, sq.s.data_ptr<Acc<E>>(), static_cast<const Acc<E>*>(nullptr));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward(
    const at::Tensor& grad_out, const at::Tensor& x_, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2, c10::string_view act, c10::string_view gate) {
  const char* op = "squeeze_excite_backward";
  const SEShape sh = check_squeeze_excite(op, x_, w1, b1, w2, b2);
  check_like(op, "grad_out", grad_out, "x", x_);
  const Act a = parse_act(op, act), ga = parse_act(op, gate, "gate");
  const bool cl = output_channels_last(x_);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_.contiguous(fmt), g = grad_out.contiguous(fmt);
  at::Tensor gx = at::empty_like(x);
  const at::ScalarType acc = acc_type(x);
  const FC fc(w1, b1, w2, b2, acc);
  at::Tensor gw1, gb1, gw2, gb2;
  dispatch_storage(op, x.scalar_type(), [&](auto e) {
    using E = decltype(e);
    std::vector<double> sx, sgx;
    plane_sums<E>(x, g, cl, sx, sgx);
    const Squeeze sq(means(sx, sh.N, sh.C, sh.HW, acc), fc, a, ga);
    at::Tensor gs = at::empty({sh.N, sh.C}, at::TensorOptions().dtype(at::kDouble));
    std::copy(sgx.begin(), sgx.end(), gs.data_ptr<double>());
    const at::Tensor gt = small_act(sq.t, ga, gs.to(acc));  // d/dt
    gb2 = gt.sum(0);
    gw2 = at::mm(gt.t(), sq.h);
    const at::Tensor gz = small_act(sq.z, a, at::mm(gt, fc.w2));  // d/dz
    gb1 = gz.sum(0);
    gw1 = at::mm(gz.t(), sq.p);
    const at::Tensor tp = at::mm(gz, fc.w1).div_(double(sh.HW)).contiguous();  // d/dp / HW
    scale_pass<E>(g, gx, cl, sq.s.data_ptr<Acc<E>>(), tp.data_ptr<Acc<E>>());
  });
  const auto like = [&](const at::Tensor& grad, const c10::optional<at::Tensor>& p) {
    return grad.to(p.has_value() && p->defined() ? p->scalar_type() : x.scalar_type());
  };
  return {gx, gw1.reshape(w1.sizes()).to(w1.scalar_type()), like(gb1, b1), gw2.reshape(w2.sizes()).to(w2.scalar_type()),
          like(gb2, b2)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("squeeze_excite", &squeeze_excite);
  m.impl("squeeze_excite_backward", &squeeze_excite_backward);
}

}  // namespace cpu
}  // namespace fastops
