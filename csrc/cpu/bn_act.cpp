// CPU kernels of fastops::bn_act_train and its backward (formulas: csrc/bn_act.h).
//
// Two passes each way, over x made dense in its output layout:
//   forward:  per-channel sums of (x - K) and (x - K)^2, K = the channel's first value (shifted
//             sums: no cancellation when |mean| >> std), then y = act((x - mean) * k + bias)
//             with k = weight * invstd, in registers before the single store;
//   backward: per-channel sums of gu and gu * xhat, then grad_x.
// Sums run in float over chunks of at most kChunk values per lane and are added up in double.
// channels_last is vectorised across 16 channels (a row of C values per pixel), parallel over
// pixels, each thread's per-channel sums merged at the end; NCHW is vectorised along each plane,
// reductions parallel over channels, elementwise passes over planes. float32 and bfloat16 take
// these paths; float64 / float16 a plain loop with the same formulas (in double).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../bn_act.h"
#include "channel_vector.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int L = kLanes;
constexpr int64_t kChunk = 256;  // values per lane summed in float before they go to double

enum class Pass { Stats, Normalize, GradSums, GradX };

// Everything a pass reads or writes. Per-channel float vectors: shift (K, stats), mean, invstd,
// w, b (forward / backward), k (= w * invstd), mb (= sum gu / M), mw (= sum gu*xhat / M).
struct Args {
  const void* x;
  const void* g;  // grad_out (backward)
  void* y;        // y or grad_x
  int64_t N, C, HW;
  const float *shift, *mean, *invstd, *w, *b, *k, *mb, *mw;
  Act act;
};

// Per-thread accumulators of the channels_last reductions: float for a chunk, double in total.
struct Sums {
  std::vector<float> f1, f2;
  std::vector<double> d1, d2;
  explicit Sums(int64_t C) : f1(C), f2(C), d1(C, 0.0), d2(C, 0.0) {}
  FASTOPS_CPU_INLINE void flush(int64_t C) {
    for (int64_t c = 0; c < C; ++c) d1[c] += f1[c], d2[c] += f2[c], f1[c] = 0.f, f2[c] = 0.f;
  }
};

FASTOPS_CPU_INLINE double lane_sum(f32x16 v) {
  double s = 0;
  for (int l = 0; l < L; ++l) s += v[l];
  return s;
}

// The two values a reduction pass adds up for one element (v1, v2), as a template over float or
// f32x16: statistics (x - K, (x - K)^2) or gradient sums (gu, gu * xhat).
template <Pass P, Act A, typename T>
FASTOPS_CPU_INLINE void reduce_terms(T x, T g, T shift, T mean, T invstd, T w, T b, T& v1, T& v2) {
  if constexpr (P == Pass::Stats) {
    v1 = x - shift;
    v2 = v1 * v1;
  } else {
    const T xh = (x - mean) * invstd;
    v1 = act_bwd<A>(g, xh * w + b);
    v2 = v1 * xh;
  }
}

// The value an elementwise pass stores: y = act((x - mean) * k + b), or
// grad_x = k * (gu - mb - xhat * mw).
template <Pass P, Act A, typename T>
FASTOPS_CPU_INLINE T apply_term(T x, T g, T mean, T invstd, T w, T b, T k, T mb, T mw) {
  if constexpr (P == Pass::Normalize) {
    return act_fwd<A>((x - mean) * k + b);
  } else {
    const T xh = (x - mean) * invstd;
    const T gu = act_bwd<A>(g, xh * w + b);
    return k * (gu - mb - xh * mw);
  }
}

// ---------------------------------------------------------------------------- channels_last

// Reduction over pixel rows [r0, r1) of x viewed as [M][C].
template <Pass P, Act A, typename E>
FASTOPS_CPU_INLINE void reduce_cl(const Args& a, int64_t r0, int64_t r1, Sums& s) {
  const E* x = static_cast<const E*>(a.x);
  const E* g = static_cast<const E*>(a.g);
  const int64_t C = a.C;
  float* f1 = s.f1.data();
  float* f2 = s.f2.data();
  for (int64_t r = r0; r < r1; r += kChunk) {
    const int64_t re = std::min(r1, r + kChunk);
    for (int64_t i = r; i < re; ++i) {
      const E* xr = x + i * C;
      const E* gr = g ? g + i * C : nullptr;
      int64_t c = 0;
      for (; c + L <= C; c += L) {
        f32x16 v1, v2;
        const f32x16 xv = load16(xr + c);
        reduce_terms<P, A>(xv, gr ? load16(gr + c) : xv, load16(a.shift + c), load16(a.mean + c),
                           load16(a.invstd + c), load16(a.w + c), load16(a.b + c), v1, v2);
        store16(f1 + c, load16(f1 + c) + v1);
        store16(f2 + c, load16(f2 + c) + v2);
      }
      for (; c < C; ++c) {
        float v1, v2;
        const float xv = widen(xr[c]);
        reduce_terms<P, A>(xv, gr ? widen(gr[c]) : xv, a.shift[c], a.mean[c], a.invstd[c], a.w[c],
                           a.b[c], v1, v2);
        f1[c] += v1, f2[c] += v2;
      }
    }
    s.flush(C);
  }
}

// Elementwise pass over pixel rows [r0, r1).
template <Pass P, Act A, typename E>
FASTOPS_CPU_INLINE void apply_cl(const Args& a, int64_t r0, int64_t r1) {
  const E* x = static_cast<const E*>(a.x);
  const E* g = static_cast<const E*>(a.g);
  E* y = static_cast<E*>(a.y);
  const int64_t C = a.C;
  for (int64_t i = r0; i < r1; ++i) {
    const E* xr = x + i * C;
    const E* gr = g ? g + i * C : nullptr;
    E* yr = y + i * C;
    int64_t c = 0;
    for (; c + L <= C; c += L) {
      const f32x16 xv = load16(xr + c);
      store16(yr + c, apply_term<P, A>(xv, gr ? load16(gr + c) : xv, load16(a.mean + c),
                                       load16(a.invstd + c), load16(a.w + c), load16(a.b + c),
                                       load16(a.k + c), load16(a.mb + c), load16(a.mw + c)));
    }
    for (; c < C; ++c) {
      const float xv = widen(xr[c]);
      narrow(yr + c, apply_term<P, A>(xv, gr ? widen(gr[c]) : xv, a.mean[c], a.invstd[c], a.w[c],
                                      a.b[c], a.k[c], a.mb[c], a.mw[c]));
    }
  }
}

// ---------------------------------------------------------------------------- NCHW

// Reduction of channel c over its N planes; results in (*d1, *d2).
template <Pass P, Act A, typename E>
FASTOPS_CPU_INLINE void reduce_nchw(const Args& a, int64_t c, double* d1, double* d2) {
  const E* x = static_cast<const E*>(a.x);
  const E* g = static_cast<const E*>(a.g);
  const int64_t HW = a.HW;
  const f32x16 shift = f32x16{} + a.shift[c], mean = f32x16{} + a.mean[c],
               invstd = f32x16{} + a.invstd[c], w = f32x16{} + a.w[c], b = f32x16{} + a.b[c];
  double t1 = 0, t2 = 0;
  for (int64_t n = 0; n < a.N; ++n) {
    const E* xp = x + (n * a.C + c) * HW;
    const E* gp = g ? g + (n * a.C + c) * HW : nullptr;
    int64_t i = 0;
    while (i + L <= HW) {
      const int64_t end = std::min(HW - L + 1, i + kChunk * L);
      f32x16 s1 = f32x16{}, s2 = f32x16{};
      for (; i < end; i += L) {
        f32x16 v1, v2;
        const f32x16 xv = load16(xp + i);
        reduce_terms<P, A>(xv, gp ? load16(gp + i) : xv, shift, mean, invstd, w, b, v1, v2);
        s1 += v1, s2 += v2;
      }
      t1 += lane_sum(s1), t2 += lane_sum(s2);
    }
    for (; i < HW; ++i) {
      float v1, v2;
      const float xv = widen(xp[i]);
      reduce_terms<P, A>(xv, gp ? widen(gp[i]) : xv, a.shift[c], a.mean[c], a.invstd[c], a.w[c],
                         a.b[c], v1, v2);
      t1 += v1, t2 += v2;
    }
  }
  *d1 = t1, *d2 = t2;
}

// Elementwise pass over planes [p0, p1) (p = n * C + c).
template <Pass P, Act A, typename E>
FASTOPS_CPU_INLINE void apply_nchw(const Args& a, int64_t p0, int64_t p1) {
  const E* x = static_cast<const E*>(a.x);
  const E* g = static_cast<const E*>(a.g);
  E* y = static_cast<E*>(a.y);
  const int64_t HW = a.HW;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % a.C;
    const E* xp = x + p * HW;
    const E* gp = g ? g + p * HW : nullptr;
    E* yp = y + p * HW;
    const f32x16 mean = f32x16{} + a.mean[c], invstd = f32x16{} + a.invstd[c],
                 w = f32x16{} + a.w[c], b = f32x16{} + a.b[c], k = f32x16{} + a.k[c],
                 mb = f32x16{} + a.mb[c], mw = f32x16{} + a.mw[c];
    int64_t i = 0;
    for (; i + L <= HW; i += L) {
      const f32x16 xv = load16(xp + i);
      store16(yp + i, apply_term<P, A>(xv, gp ? load16(gp + i) : xv, mean, invstd, w, b, k, mb, mw));
    }
    for (; i < HW; ++i) {
      const float xv = widen(xp[i]);
      narrow(yp + i, apply_term<P, A>(xv, gp ? widen(gp[i]) : xv, a.mean[c], a.invstd[c], a.w[c],
                                      a.b[c], a.k[c], a.mb[c], a.mw[c]));
    }
  }
}

// ---------------------------------------------------------------------------- entry points
// One multi-versioned function per storage type; the pass and the activation are switched inside.
// Reductions: channels_last adds rows [begin, end) into `s`; NCHW reduces channels [begin, end)
// into d1[c], d2[c]. Elementwise passes: rows (channels_last) or planes (NCHW) [begin, end).
template <typename E>
FASTOPS_CPU_INLINE void run(bool cl, Pass pass, const Args& a, int64_t begin, int64_t end, Sums* s,
                            double* d1, double* d2) {
  const Act act = a.act;
  switch (pass) {
    case Pass::Stats:
      if (cl) {
        reduce_cl<Pass::Stats, Act::None, E>(a, begin, end, *s);
      } else {
        for (int64_t c = begin; c < end; ++c) reduce_nchw<Pass::Stats, Act::None, E>(a, c, d1 + c, d2 + c);
      }
      break;
    case Pass::GradSums:
#define FASTOPS_CALL(A)                                                                          \
  if (cl) {                                                                                      \
    reduce_cl<Pass::GradSums, A, E>(a, begin, end, *s);                                          \
  } else {                                                                                       \
    for (int64_t c = begin; c < end; ++c) reduce_nchw<Pass::GradSums, A, E>(a, c, d1 + c, d2 + c); \
  }
      FASTOPS_ACT_CASES(FASTOPS_CALL)
#undef FASTOPS_CALL
      break;
    case Pass::Normalize:
#define FASTOPS_CALL(A) \
  cl ? apply_cl<Pass::Normalize, A, E>(a, begin, end) : apply_nchw<Pass::Normalize, A, E>(a, begin, end)
      FASTOPS_ACT_CASES(FASTOPS_CALL)
#undef FASTOPS_CALL
      break;
    case Pass::GradX:
#define FASTOPS_CALL(A) \
  cl ? apply_cl<Pass::GradX, A, E>(a, begin, end) : apply_nchw<Pass::GradX, A, E>(a, begin, end)
      FASTOPS_ACT_CASES(FASTOPS_CALL)
#undef FASTOPS_CALL
      break;
  }
}

FASTOPS_CPU_MULTIVERSION void run_f32(bool cl, Pass pass, const Args& a, int64_t begin, int64_t end,
                                      Sums* s, double* d1, double* d2) {
  run<float>(cl, pass, a, begin, end, s, d1, d2);
}
FASTOPS_CPU_MULTIVERSION void run_bf16(bool cl, Pass pass, const Args& a, int64_t begin,
                                       int64_t end, Sums* s, double* d1, double* d2) {
  run<uint16_t>(cl, pass, a, begin, end, s, d1, d2);
}

// A pass over the whole tensor, threaded. Reductions return the per-channel sums (d1, d2).
void run_pass(bool cl, bool bf16, Pass pass, const Args& a, std::vector<double>* d1,
              std::vector<double>* d2) {
  auto call = [&](int64_t b, int64_t e, Sums* s, double* o1, double* o2) {
    bf16 ? run_bf16(cl, pass, a, b, e, s, o1, o2) : run_f32(cl, pass, a, b, e, s, o1, o2);
  };
  const int64_t M = a.N * a.HW, C = a.C;
  const bool reduce = pass == Pass::Stats || pass == Pass::GradSums;
  if (reduce) {
    d1->assign(C, 0.0), d2->assign(C, 0.0);
    if (!cl) {
      at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) { call(b, e, nullptr, d1->data(), d2->data()); });
      return;
    }
    // Fixed blocks of whole float chunks (at most kMaxBlocks), each summed into its own slot and
    // the slots added in block order: the result does not depend on the thread count or on
    // which thread finishes first (run to run, the same input gives the same bits).
    constexpr int64_t kMaxBlocks = 64;
    const int64_t rows = kChunk * std::max<int64_t>(1, (M + kChunk * kMaxBlocks - 1) / (kChunk * kMaxBlocks));
    const int64_t blocks = (M + rows - 1) / rows;
    std::vector<double> slots(static_cast<size_t>(blocks) * 2 * C);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      Sums s(C);
      for (int64_t blk = b0; blk < b1; ++blk) {
        std::fill(s.d1.begin(), s.d1.end(), 0.0), std::fill(s.d2.begin(), s.d2.end(), 0.0);
        call(blk * rows, std::min(M, (blk + 1) * rows), &s, nullptr, nullptr);
        std::copy(s.d1.begin(), s.d1.end(), slots.begin() + blk * 2 * C);
        std::copy(s.d2.begin(), s.d2.end(), slots.begin() + blk * 2 * C + C);
      }
    });
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t c = 0; c < C; ++c) (*d1)[c] += slots[blk * 2 * C + c], (*d2)[c] += slots[blk * 2 * C + C + c];
    return;
  }
  if (cl) {
    at::parallel_for(0, M, std::max<int64_t>(1, 16384 / C), [&](int64_t b, int64_t e) { call(b, e, nullptr, nullptr, nullptr); });
  } else {
    at::parallel_for(0, a.N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a.HW)),
                     [&](int64_t b, int64_t e) { call(b, e, nullptr, nullptr, nullptr); });
  }
}

// ---------------------------------------------------------------------------- generic (f64, f16)

template <typename scalar_t>
void generic_pass(Pass pass, const Args& a, const double* mean, const double* invstd,
                  const double* w, const double* b, const double* mb, const double* mw,
                  std::vector<double>& d1, std::vector<double>& d2) {
  // x, g, y: NCHW contiguous
  const scalar_t* x = static_cast<const scalar_t*>(a.x);
  const scalar_t* g = static_cast<const scalar_t*>(a.g);
  scalar_t* y = static_cast<scalar_t*>(a.y);
  const int64_t HW = a.HW, C = a.C;
  const bool reduce = pass == Pass::Stats || pass == Pass::GradSums;
  if (reduce) d1.assign(C, 0.0), d2.assign(C, 0.0);
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s1 = 0, s2 = 0;
      const double k = pass == Pass::Stats ? 0.0 : w[c] * invstd[c];
      for (int64_t n = 0; n < a.N; ++n) {
        const int64_t base = (n * C + c) * HW;
        for (int64_t i = 0; i < HW; ++i) {
          const double xv = double(x[base + i]);
          if (pass == Pass::Stats) {
            s1 += xv;
            continue;
          }
          const double xh = (xv - mean[c]) * invstd[c];
          const double u = xh * w[c] + b[c];
          double out = 0;
          dispatch_act(a.act, [&](auto tag) {
            constexpr Act A = decltype(tag)::value;
            if (pass == Pass::Normalize) {
              out = act_fwd<A>(u);
            } else {
              const double gu = act_bwd<A>(double(g[base + i]), u);
              if (pass == Pass::GradSums) {
                s1 += gu, s2 += gu * xh;
              } else {
                out = k * (gu - mb[c] - xh * mw[c]);
              }
            }
          });
          if (pass == Pass::Normalize || pass == Pass::GradX) y[base + i] = scalar_t(out);
        }
      }
      if (pass == Pass::Stats) {  // second pass over the channel: squared deviations
        const double m = s1 / double(a.N * HW);
        for (int64_t n = 0; n < a.N; ++n) {
          const int64_t base = (n * C + c) * HW;
          for (int64_t i = 0; i < HW; ++i) {
            const double d = double(x[base + i]) - m;
            s2 += d * d;
          }
        }
      }
      if (reduce) d1[c] = s1, d2[c] = s2;
    }
  });
}

// ---------------------------------------------------------------------------- ops

std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

// v as a [C] tensor of dtype on like's device: filled in place for float / double (one op).
at::Tensor channel_tensor(const std::vector<double>& v, const at::Tensor& like, at::ScalarType dtype) {
  const int64_t C = int64_t(v.size());
  if (dtype == at::kFloat) {
    at::Tensor t = at::empty({C}, like.options().dtype(at::kFloat));
    std::copy(v.begin(), v.end(), t.mutable_data_ptr<float>());
    return t;
  }
  at::Tensor t = at::empty({C}, like.options().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), t.mutable_data_ptr<double>());
  return dtype == at::kDouble ? t : t.to(dtype);
}

// x made dense in the layout of the outputs (channels_last or NCHW).
at::Tensor dense(const at::Tensor& t, bool cl) {
  return t.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

bool fast_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train(const at::Tensor& x,
                                                            const c10::optional<at::Tensor>& weight,
                                                            const c10::optional<at::Tensor>& bias,
                                                            double eps, c10::string_view act) {
  const char* op = "bn_act_train";
  const BnShape s = check_bn_act(op, x, weight, bias, eps);
  const Act A = parse_act(op, std::string_view(act.data(), act.size()));
  const bool cl = output_channels_last(x);
  const at::Tensor xc = dense(x, cl);
  at::Tensor y = at::empty_like(xc);
  const int64_t C = s.C;
  const double M = double(s.M());
  const std::vector<double> w = channel_vector(weight, C, 1.0), b = channel_vector(bias, C, 0.0);
  std::vector<double> mean(C), var(C), invstd(C), d1, d2;
  Args a{xc.const_data_ptr(), nullptr, y.mutable_data_ptr(), s.N, C, s.HW,
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, A};
  if (fast_dtype(x)) {
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    // shift: each channel's first value (element (0, c, 0, 0)), read in place
    std::vector<float> shift(C);
    const int64_t step = cl ? 1 : s.HW;
    if (bf16) {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(xc.const_data_ptr());
      for (int64_t c = 0; c < C; ++c) shift[c] = widen(p[c * step]);
    } else {
      const float* p = xc.const_data_ptr<float>();
      for (int64_t c = 0; c < C; ++c) shift[c] = p[c * step];
    }
    const std::vector<float> zeros(C, 0.f);
    a.shift = shift.data(), a.mean = a.invstd = a.w = a.b = zeros.data();
    run_pass(cl, bf16, Pass::Stats, a, &d1, &d2);
    for (int64_t c = 0; c < C; ++c) {
      const double m1 = d1[c] / M;  // mean of x - shift
      mean[c] = shift[c] + m1;
      var[c] = std::max(0.0, d2[c] / M - m1 * m1);
      invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    }
    const std::vector<float> mf = to_float(mean), bf = to_float(b);
    std::vector<float> kf(C);
    for (int64_t c = 0; c < C; ++c) kf[c] = float(w[c] * invstd[c]);
    a.mean = mf.data(), a.k = kf.data(), a.b = bf.data();
    run_pass(cl, bf16, Pass::Normalize, a, nullptr, nullptr);
  } else {
    at::Tensor xn = xc.contiguous(), yn = cl ? at::empty_like(xn) : y;
    a.x = xn.const_data_ptr(), a.y = yn.mutable_data_ptr();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, x.scalar_type(), "bn_act_train", [&] {
      generic_pass<scalar_t>(Pass::Stats, a, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, d1, d2);
      for (int64_t c = 0; c < C; ++c) {
        mean[c] = d1[c] / M;
        var[c] = d2[c] / M;
        invstd[c] = 1.0 / std::sqrt(var[c] + eps);
      }
      generic_pass<scalar_t>(Pass::Normalize, a, mean.data(), invstd.data(), w.data(), b.data(),
                             nullptr, nullptr, d1, d2);
    });
    if (!yn.is_same(y)) y.copy_(yn);
  }
  const at::ScalarType st = bn_stat_dtype(x);
  return {y, channel_tensor(mean, x, st), channel_tensor(var, x, st)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean_t,
    const at::Tensor& var_t, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps, c10::string_view act) {
  const char* op = "bn_act_train_backward";
  const BnShape s = check_bn_act(op, x, weight, bias, eps);
  check_bn_act_backward(op, grad_out, x, mean_t, var_t, s);
  const Act A = parse_act(op, std::string_view(act.data(), act.size()));
  const bool cl = output_channels_last(x);
  const at::Tensor xc = dense(x, cl), gc = dense(grad_out, cl);
  at::Tensor gx = at::empty_like(xc);
  const int64_t C = s.C;
  const double M = double(s.M());
  const std::vector<double> w = channel_vector(weight, C, 1.0), b = channel_vector(bias, C, 0.0);
  const std::vector<double> mean = channel_vector(mean_t, C, 0.0), var = channel_vector(var_t, C, 1.0);
  std::vector<double> invstd(C), mb(C), mw(C), d1, d2;
  for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
  Args a{xc.const_data_ptr(), gc.const_data_ptr(), gx.mutable_data_ptr(), s.N, C, s.HW,
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, A};
  if (fast_dtype(x)) {
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    const std::vector<float> mf = to_float(mean), isf = to_float(invstd), wf = to_float(w), bf = to_float(b);
    a.mean = mf.data(), a.invstd = isf.data(), a.w = wf.data(), a.b = bf.data(), a.shift = mf.data();
    run_pass(cl, bf16, Pass::GradSums, a, &d1, &d2);
    std::vector<float> kf(C), mbf(C), mwf(C);
    for (int64_t c = 0; c < C; ++c) {
      kf[c] = float(w[c] * invstd[c]), mbf[c] = float(d1[c] / M), mwf[c] = float(d2[c] / M);
    }
    a.k = kf.data(), a.mb = mbf.data(), a.mw = mwf.data();
    run_pass(cl, bf16, Pass::GradX, a, nullptr, nullptr);
  } else {
    at::Tensor xn = xc.contiguous(), gn = gc.contiguous(), gxn = cl ? at::empty_like(xn) : gx;
    a.x = xn.const_data_ptr(), a.g = gn.const_data_ptr(), a.y = gxn.mutable_data_ptr();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, x.scalar_type(), "bn_act_train_backward", [&] {
      generic_pass<scalar_t>(Pass::GradSums, a, mean.data(), invstd.data(), w.data(), b.data(),
                             nullptr, nullptr, d1, d2);
      for (int64_t c = 0; c < C; ++c) mb[c] = d1[c] / M, mw[c] = d2[c] / M;
      generic_pass<scalar_t>(Pass::GradX, a, mean.data(), invstd.data(), w.data(), b.data(),
                             mb.data(), mw.data(), d1, d2);
    });
    if (!gxn.is_same(gx)) gx.copy_(gxn);
  }
  const at::ScalarType st = bn_stat_dtype(x);
  const at::ScalarType wt = weight.has_value() && weight->defined() ? weight->scalar_type() : st;
  const at::ScalarType bt = bias.has_value() && bias->defined() ? bias->scalar_type() : st;
  return {gx, channel_tensor(d2, x, wt), channel_tensor(d1, x, bt)};
}


}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("bn_act_train", &bn_act_train);
  m.impl("bn_act_train_backward", &bn_act_train_backward);
}

}  // namespace cpu
}  // namespace fastops
