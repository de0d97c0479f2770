// CPU kernels of fastops::dwconv_bn_act and its backward.
//
// Forward: one pass, the affine and the activation applied in registers before the single store.
//   channels_last: vectorised across 16 channels; for each block of channels the KHxKW weight
//     vectors stay in registers while the row of output pixels is swept; border pixels check the
//     taps, interior pixels don't. Parallel over (n, output row).
//   NCHW: vectorised along the output width. Each (n, channel) plane is first copied into a
//     zero-padded scratch plane split into `stride` phases, so that every tap of every output
//     vector is one contiguous 16-float load, for any stride and dilation. Parallel over planes.
//   float32 and bfloat16 (float accumulation) take these paths; float64 / float16 a direct loop
//   with the same formulas (csrc/activation.h), float64 so gradcheck runs through the kernel.
// Backward: the activation's derivative and the affine's gradients are one fused pass that
//   recomputes the convolution; the convolution's own gradients (x, weight) are ATen's
//   depthwise convolution_backward on that result.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../dwconv.h"
#include "../pointwise.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int L = kLanes;

// Per-channel affine (1 / 0 where not given), as float for the float kernels and as double for
// the float64 ones (gradcheck perturbs scale by 1e-6: float would round that away).
struct Affine {
  std::vector<float> scale, shift;
  std::vector<double> scale64, shift64;
  template <typename T> T sc(int64_t c) const { return T(sizeof(T) == 8 ? scale64[c] : scale[c]); }
  template <typename T> T sh(int64_t c) const { return T(sizeof(T) == 8 ? shift64[c] : shift[c]); }
};

Affine affine_of(const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                 int64_t OC) {
  Affine a;
  auto fill = [OC](const c10::optional<at::Tensor>& t, double dflt, std::vector<double>& d,
                   std::vector<float>& f) {
    d.assign(OC, dflt);
    if (t.has_value() && t->defined()) {
      const at::Tensor v = t->to(at::kDouble).contiguous();
      std::copy(v.const_data_ptr<double>(), v.const_data_ptr<double>() + OC, d.begin());
    }
    f.assign(d.begin(), d.end());
  };
  fill(scale, 1.0, a.scale64, a.scale);
  fill(shift, 0.0, a.shift64, a.shift);
  return a;
}

at::Tensor empty_output(const at::Tensor& x, const DwConvShape& s, at::ScalarType dtype) {
  return at::empty({s.N, s.OC, s.OH, s.OW}, x.options().dtype(dtype),
                   output_channels_last(x) ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous);
}

// ---------------------------------------------------------------------------- channels_last

// The weight vectors of one channel block [c0, c0+16), wt: [KH*KW][C] float weights. For K == 3
// the nine vectors live in registers (5x5 would spill them: its weights come from L1).
template <int K>
struct BlockWeights {
  static constexpr bool kRegs = K == 3;
  f32x16 reg[kRegs ? 9 : 1];
  const float* wt;
  int64_t C, KW, c0;
  FASTOPS_CPU_INLINE BlockWeights(const float* wt_, const DwConvShape& s, int64_t c0_)
      : wt(wt_), C(s.C), KW(K > 0 ? K : s.KW), c0(c0_) {
    if constexpr (kRegs) {
      for (int t = 0; t < 9; ++t) reg[t] = load16(wt + t * C + c0);
    }
  }
  FASTOPS_CPU_INLINE f32x16 operator()(int64_t kh, int64_t kw) const {
    if constexpr (kRegs) return reg[kh * 3 + kw];
    return load16(wt + (kh * KW + kw) * C + c0);
  }
};

// Output columns [lo, hi) are interior: every tap inside the input (iw0 >= 0 and
// iw0 + (KW-1)*DW < W, with iw0 = ow*SW - PW).
struct InteriorCols {
  int64_t lo, hi;
  explicit InteriorCols(const DwConvShape& s) {
    lo = std::min<int64_t>(s.OW, (s.PW + s.SW - 1) / s.SW);
    const int64_t last = s.W - 1 - (s.KW - 1) * s.DW + s.PW;  // largest iw0 + PW that fits
    hi = last < 0 ? lo : std::max<int64_t>(lo, std::min<int64_t>(s.OW, last / s.SW + 1));
  }
};

// One output row (n, oh) of the NHWC kernel, for channel block [c0, c0+16); m == 1.
// K > 0 fixes KH = KW = K at compile time (BlockWeights). Interior pixels (every tap inside the
// input) go four at a time: four independent accumulators hide the FMA latency and share each
// weight load; border pixels check their taps.
template <int K, Act A, typename E>
FASTOPS_CPU_INLINE void nhwc_row_block(const E* x, E* y, const float* wt, const float* sc,
                                       const float* sh, const DwConvShape& s, int64_t n, int64_t oh,
                                       int64_t c0) {
  const int64_t KH = K > 0 ? K : s.KH, KW = K > 0 ? K : s.KW;
  const BlockWeights<K> weight(wt, s, c0);
  const f32x16 scale = load16(sc + c0), shift = load16(sh + c0);
  const int64_t ih0 = oh * s.SH - s.PH;
  const int64_t C = s.C, row_stride = s.W * C;
  const E* xn = x + n * s.H * row_stride + c0;
  E* yrow = y + ((n * s.OH + oh) * s.OW) * C + c0;
  const InteriorCols cols(s);
  const int64_t lo = cols.lo, hi = cols.hi;
  // Border pixels, also four at a time: a tap that falls into the padding reads a zero vector
  // instead of the input (a pointer select), so the four chains stay branch-free.
  alignas(64) static const float kZeros[L] = {};
  const E* zeros = reinterpret_cast<const E*>(kZeros);
  auto border4 = [&](int64_t ow_begin, int64_t ow_end) FASTOPS_CPU_INLINE_LAMBDA {
    for (int64_t ow = ow_begin; ow < ow_end; ow += 4) {
      const int n4 = int(std::min<int64_t>(4, ow_end - ow));
      int64_t iw0[4];
      for (int j = 0; j < 4; ++j) iw0[j] = (ow + std::min(j, n4 - 1)) * s.SW - s.PW;
      f32x16 a[4] = {f32x16{}, f32x16{}, f32x16{}, f32x16{}};
      for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t ih = ih0 + kh * s.DH;
        if (ih < 0 || ih >= s.H) continue;
        const E* xr = xn + ih * row_stride;
        for (int64_t kw = 0; kw < KW; ++kw) {
          const f32x16 w = weight(kh, kw);
          for (int j = 0; j < 4; ++j) {
            const int64_t iw = iw0[j] + kw * s.DW;
            const E* src = (iw >= 0 && iw < s.W) ? xr + iw * C : zeros;
            a[j] += load16(src) * w;
          }
        }
      }
      for (int j = 0; j < n4; ++j) store16(yrow + (ow + j) * C, act_fwd<A>(a[j] * scale + shift));
    }
  };
  border4(0, lo);
  int64_t ow = lo;
  const int64_t step = s.SW * C;
  for (; ow + 4 <= hi; ow += 4) {
    f32x16 a0 = f32x16{}, a1 = f32x16{}, a2 = f32x16{}, a3 = f32x16{};
    for (int64_t kh = 0; kh < KH; ++kh) {
      const int64_t ih = ih0 + kh * s.DH;
      if (ih < 0 || ih >= s.H) continue;
      const E* xr = xn + ih * row_stride + (ow * s.SW - s.PW) * C;
      for (int64_t kw = 0; kw < KW; ++kw) {
        const f32x16 w = weight(kh, kw);
        const E* p = xr + kw * s.DW * C;
        a0 += load16(p) * w;
        a1 += load16(p + step) * w;
        a2 += load16(p + 2 * step) * w;
        a3 += load16(p + 3 * step) * w;
      }
    }
    store16(yrow + ow * C, act_fwd<A>(a0 * scale + shift));
    store16(yrow + (ow + 1) * C, act_fwd<A>(a1 * scale + shift));
    store16(yrow + (ow + 2) * C, act_fwd<A>(a2 * scale + shift));
    store16(yrow + (ow + 3) * C, act_fwd<A>(a3 * scale + shift));
  }
  border4(ow, s.OW);
}

// The same row block computed from a zero-padded copy of its KH input rows (`pad`: KH rows of
// W + 2*PW pixels x 16 floats, padding columns zero): no pixel is a border pixel, all go four
// at a time. Pays when many pixels would be border pixels (small maps, wide kernels).
template <int K, Act A, typename E>
FASTOPS_CPU_INLINE void nhwc_row_block_padded(const E* x, E* y, const float* wt, const float* sc,
                                              const float* sh, const DwConvShape& s, int64_t n,
                                              int64_t oh, int64_t c0, float* pad) {
  const int64_t KH = K > 0 ? K : s.KH, KW = K > 0 ? K : s.KW;
  const BlockWeights<K> weight(wt, s, c0);
  const f32x16 scale = load16(sc + c0), shift = load16(sh + c0);
  const int64_t C = s.C, row_stride = s.W * C, prow_len = (s.W + 2 * s.PW) * L;
  const int64_t ih0 = oh * s.SH - s.PH;
  const E* xn = x + n * s.H * row_stride + c0;
  E* yrow = y + ((n * s.OH + oh) * s.OW) * C + c0;
  bool valid[64];
  for (int64_t kh = 0; kh < KH; ++kh) {
    const int64_t ih = ih0 + kh * s.DH;
    valid[kh] = ih >= 0 && ih < s.H;
    if (!valid[kh]) continue;
    const E* src = xn + ih * row_stride;
    float* dst = pad + kh * prow_len + s.PW * L;
    for (int64_t iw = 0; iw < s.W; ++iw) store16(dst + iw * L, load16(src + iw * C));
  }
  const int64_t step = s.SW * L;
  for (int64_t ow = 0; ow < s.OW; ow += 4) {
    const int n4 = int(std::min<int64_t>(4, s.OW - ow));
    int64_t off[4];  // a partial last group repeats its last pixel (stays inside the buffer)
    for (int j = 0; j < 4; ++j) off[j] = (ow + std::min(j, n4 - 1)) * step;
    f32x16 a0 = f32x16{}, a1 = f32x16{}, a2 = f32x16{}, a3 = f32x16{};
    for (int64_t kh = 0; kh < KH; ++kh) {
      if (!valid[kh]) continue;
      const float* prow = pad + kh * prow_len;
      for (int64_t kw = 0; kw < KW; ++kw) {
        const f32x16 w = weight(kh, kw);
        const float* p = prow + kw * s.DW * L;
        a0 += load16(p + off[0]) * w;
        a1 += load16(p + off[1]) * w;
        a2 += load16(p + off[2]) * w;
        a3 += load16(p + off[3]) * w;
      }
    }
    const f32x16 a[4] = {a0, a1, a2, a3};
    for (int j = 0; j < n4; ++j) store16(yrow + (ow + j) * C, act_fwd<A>(a[j] * scale + shift));
  }
}

// Scalar version for the channels past the last full block of 16 (and any multiplier m).
template <Act A, typename E>
FASTOPS_CPU_INLINE void nhwc_row_scalar(const E* x, E* y, const float* wt, const float* sc,
                                        const float* sh, const DwConvShape& s, int64_t n, int64_t oh,
                                        int64_t oc_begin) {
  const int64_t ih0 = oh * s.SH - s.PH;
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    const int64_t iw0 = ow * s.SW - s.PW;
    for (int64_t oc = oc_begin; oc < s.OC; ++oc) {
      const int64_t c = oc / s.mult;
      float acc = 0.f;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t ih = ih0 + kh * s.DH;
        if (ih < 0 || ih >= s.H) continue;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t iw = iw0 + kw * s.DW;
          if (iw < 0 || iw >= s.W) continue;
          acc += widen(x[((n * s.H + ih) * s.W + iw) * s.C + c]) * wt[(kh * s.KW + kw) * s.OC + oc];
        }
      }
      narrow(y + ((n * s.OH + oh) * s.OW + ow) * s.OC + oc, act_fwd<A>(acc * sc[oc] + sh[oc]));
    }
  }
}

// Output rows [begin, end) of the channels_last kernel (r = n * OH + oh).
template <Act A, typename E>
FASTOPS_CPU_INLINE void nhwc_rows(const E* x, E* y, const float* wt, const float* sc,
                                  const float* sh, const DwConvShape& s, int64_t begin, int64_t end) {
  // m == 1 here (a multiplier runs the NCHW kernel). Channels go in blocks of 16; a tail of
  // C % 16 channels is covered by one more block ending at C, overlapping the previous one (the
  // overlapped channels are computed twice, to the same values). Fewer than 16 channels: scalar.
  const int64_t blocks = s.C >= L ? (s.C + L - 1) / L : 0;
  const bool k3 = s.KH == 3 && s.KW == 3, k5 = s.KH == 5 && s.KW == 5;
  // Padded rows when a quarter or more of the pixels would be border pixels (and the kernel is
  // not taller than the `valid` table).
  const InteriorCols cols(s);
  const bool padded = s.KH <= 64 && 4 * (cols.lo + s.OW - cols.hi) >= s.OW;
  std::vector<float> pad(padded ? s.KH * (s.W + 2 * s.PW) * L : 0, 0.f);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / s.OH, oh = r % s.OH;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = std::min(b * L, s.C - L);
      if (padded) {
        if (k3)
          nhwc_row_block_padded<3, A>(x, y, wt, sc, sh, s, n, oh, c0, pad.data());
        else if (k5)
          nhwc_row_block_padded<5, A>(x, y, wt, sc, sh, s, n, oh, c0, pad.data());
        else
          nhwc_row_block_padded<0, A>(x, y, wt, sc, sh, s, n, oh, c0, pad.data());
      } else if (k3) {
        nhwc_row_block<3, A>(x, y, wt, sc, sh, s, n, oh, c0);
      } else if (k5) {
        nhwc_row_block<5, A>(x, y, wt, sc, sh, s, n, oh, c0);
      } else {
        nhwc_row_block<0, A>(x, y, wt, sc, sh, s, n, oh, c0);
      }
    }
    if (blocks == 0) nhwc_row_scalar<A>(x, y, wt, sc, sh, s, n, oh, 0);
  }
}

// ---------------------------------------------------------------------------- NCHW

// Scratch plane: zero padding around the input plane, each padded row split into SW phases
// (phase p holds padded columns p, p + SW, p + 2*SW, ...), rows padded to whole vectors. Then
// the tap (kh, kw) of output vector [ow, ow+16) of row oh is the 16 floats at
//   row_base(oh) + tap[kh*KW + kw] + ow,
// one contiguous load whatever the stride and dilation.
struct PhasePlane {
  int64_t phases;     // = SW
  int64_t phase_len;  // floats per phase row (multiple of L, with slack for the last vector)
  int64_t row_step;   // floats from one output row's base to the next
  std::vector<int64_t> tap;
  std::vector<float> buf;

  void build(const DwConvShape& s) {
    phases = s.SW;
    const int64_t per_phase = (s.W + 2 * s.PW + s.SW - 1) / s.SW;
    // the last vector of a row reads up to (OW rounded up to L) + the largest tap offset
    const int64_t need = ((s.OW + L - 1) / L) * L + ((s.KW - 1) * s.DW) / s.SW + 1;
    phase_len = ((std::max(per_phase, need) + L - 1) / L) * L;
    row_step = s.SH * phases * phase_len;
    tap.resize(s.KH * s.KW);
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw)
        tap[kh * s.KW + kw] = (kh * s.DH * phases + (kw * s.DW) % s.SW) * phase_len + (kw * s.DW) / s.SW;
    buf.assign((s.H + 2 * s.PH) * phases * phase_len, 0.f);  // the padding stays zero
  }
  float* row(int64_t r, int64_t phase) { return buf.data() + (r * phases + phase) * phase_len; }
};

template <typename E>
FASTOPS_CPU_INLINE void fill_phase_plane(PhasePlane& p, const E* plane, const DwConvShape& s) {
  for (int64_t ih = 0; ih < s.H; ++ih) {
    const E* src = plane + ih * s.W;
    if (s.SW == 1) {
      float* dst = p.row(ih + s.PH, 0) + s.PW;
      for (int64_t iw = 0; iw < s.W; ++iw) dst[iw] = widen(src[iw]);
      continue;
    }
    for (int64_t ph = 0; ph < s.SW; ++ph) {  // padded column j*SW + ph is input column iw
      float* dst = p.row(ih + s.PH, ph);
      int64_t j = ph >= s.PW ? 0 : (s.PW - ph + s.SW - 1) / s.SW;
      for (int64_t iw = j * s.SW + ph - s.PW; iw < s.W; ++j, iw += s.SW) dst[j] = widen(src[iw]);
    }
  }
}

// One output plane. The (output row, 16-wide vector) pairs go four at a time: four independent
// accumulators share each broadcast weight, also when a row is narrower than one vector.
template <Act A, typename E>
FASTOPS_CPU_INLINE void nchw_plane(PhasePlane& p, E* out, const float* w, float scale, float shift,
                                   const DwConvShape& s) {
  const int64_t taps = s.KH * s.KW;
  const int64_t* tap = p.tap.data();
  const int64_t nvec = (s.OW + L - 1) / L, items = s.OH * nvec;
  for (int64_t i0 = 0; i0 < items; i0 += 4) {
    const int n = int(std::min<int64_t>(4, items - i0));
    const float* q[4];
    int64_t oh[4], ow[4];
    for (int j = 0; j < 4; ++j) {
      const int64_t i = i0 + std::min(j, n - 1);  // unused slots repeat the last item
      oh[j] = i / nvec, ow[j] = (i % nvec) * L;
      q[j] = p.buf.data() + oh[j] * p.row_step + ow[j];
    }
    f32x16 a0 = f32x16{}, a1 = f32x16{}, a2 = f32x16{}, a3 = f32x16{};
    for (int64_t t = 0; t < taps; ++t) {
      const float wv = w[t];
      const int64_t o = tap[t];
      a0 += load16(q[0] + o) * wv;
      a1 += load16(q[1] + o) * wv;
      a2 += load16(q[2] + o) * wv;
      a3 += load16(q[3] + o) * wv;
    }
    const f32x16 acc[4] = {a0, a1, a2, a3};
    for (int j = 0; j < n; ++j) {
      const f32x16 y = act_fwd<A>(acc[j] * scale + shift);
      E* dst = out + oh[j] * s.OW + ow[j];
      if (ow[j] + L <= s.OW) {
        store16(dst, y);
      } else {
        for (int64_t k = 0; k < s.OW - ow[j]; ++k) narrow(dst + k, y[k]);
      }
    }
  }
}

// Output planes [begin, end) of the NCHW kernel (t = n * OC + oc).
template <Act A, typename E>
FASTOPS_CPU_INLINE void nchw_planes(const E* x, E* y, const float* w, const float* sc,
                                    const float* sh, const DwConvShape& s, PhasePlane& plane,
                                    int64_t begin, int64_t end) {
  int64_t loaded = -1;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / s.OC, oc = t % s.OC;
    const int64_t src = n * s.C + oc / s.mult;
    if (src != loaded) {  // consecutive output channels of one input channel share the plane
      fill_phase_plane(plane, x + src * s.H * s.W, s);
      loaded = src;
    }
    nchw_plane<A>(plane, y + t * s.OH * s.OW, w + oc * s.KH * s.KW, sc[oc], sh[oc], s);
  }
}

// ---------------------------------------------------------------------------- entry points
// One multi-versioned function per layout and storage type, with the activation switched inside,
// so that every template above is inlined into, and compiled for, each instruction set.
#define FASTOPS_ACT_CASES(CALL)                                  \
  switch (act) {                                                 \
    case Act::None: CALL(Act::None); break;                      \
    case Act::ReLU: CALL(Act::ReLU); break;                      \
    case Act::ReLU6: CALL(Act::ReLU6); break;                    \
    case Act::Hardswish: CALL(Act::Hardswish); break;            \
    case Act::Hardsigmoid: CALL(Act::Hardsigmoid); break;        \
    case Act::Sigmoid: CALL(Act::Sigmoid); break;                \
    case Act::SiLU: CALL(Act::SiLU); break;                      \
  }

#define FASTOPS_NHWC(A) nhwc_rows<A>(x, y, wt, sc, sh, s, begin, end)
#define FASTOPS_NCHW(A) nchw_planes<A>(x, y, w, sc, sh, s, plane, begin, end)

FASTOPS_CPU_MULTIVERSION void nhwc_f32(const float* x, float* y, const float* wt, const float* sc,
                                       const float* sh, const DwConvShape& s, Act act,
                                       int64_t begin, int64_t end) {
  FASTOPS_ACT_CASES(FASTOPS_NHWC)
}
FASTOPS_CPU_MULTIVERSION void nhwc_bf16(const uint16_t* x, uint16_t* y, const float* wt,
                                        const float* sc, const float* sh, const DwConvShape& s,
                                        Act act, int64_t begin, int64_t end) {
  FASTOPS_ACT_CASES(FASTOPS_NHWC)
}
FASTOPS_CPU_MULTIVERSION void nchw_f32(const float* x, float* y, const float* w, const float* sc,
                                       const float* sh, const DwConvShape& s, Act act,
                                       PhasePlane& plane, int64_t begin, int64_t end) {
  FASTOPS_ACT_CASES(FASTOPS_NCHW)
}
FASTOPS_CPU_MULTIVERSION void nchw_bf16(const uint16_t* x, uint16_t* y, const float* w,
                                        const float* sc, const float* sh, const DwConvShape& s,
                                        Act act, PhasePlane& plane, int64_t begin, int64_t end) {
  FASTOPS_ACT_CASES(FASTOPS_NCHW)
}

#undef FASTOPS_NHWC
#undef FASTOPS_NCHW
#undef FASTOPS_ACT_CASES

void nhwc_forward(const at::Tensor& x, at::Tensor& y, const float* wt, const Affine& af,
                  const DwConvShape& s, Act act) {
  at::parallel_for(0, s.N * s.OH, 1, [&](int64_t begin, int64_t end) {
    if (x.scalar_type() == at::kFloat)
      nhwc_f32(x.const_data_ptr<float>(), y.mutable_data_ptr<float>(), wt, af.scale.data(),
               af.shift.data(), s, act, begin, end);
    else
      nhwc_bf16(reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>()),
                reinterpret_cast<uint16_t*>(y.mutable_data_ptr<at::BFloat16>()), wt,
                af.scale.data(), af.shift.data(), s, act, begin, end);
  });
}

void nchw_forward(const at::Tensor& x, at::Tensor& y, const float* w, const Affine& af,
                  const DwConvShape& s, Act act) {
  at::parallel_for(0, s.N * s.OC, 1, [&](int64_t begin, int64_t end) {
    PhasePlane plane;
    plane.build(s);
    if (x.scalar_type() == at::kFloat)
      nchw_f32(x.const_data_ptr<float>(), y.mutable_data_ptr<float>(), w, af.scale.data(),
               af.shift.data(), s, act, plane, begin, end);
    else
      nchw_bf16(reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>()),
                reinterpret_cast<uint16_t*>(y.mutable_data_ptr<at::BFloat16>()), w,
                af.scale.data(), af.shift.data(), s, act, plane, begin, end);
  });
}

// ---------------------------------------------------------------------------- generic (f64, f16)

template <Act A, typename scalar_t>
void generic_forward(const at::Tensor& xc, at::Tensor& yc, const at::Tensor& wc, const Affine& af,
                     const DwConvShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = xc.const_data_ptr<scalar_t>();
  const scalar_t* w = wc.const_data_ptr<scalar_t>();
  scalar_t* y = yc.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, s.N * s.OC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / s.OC, oc = t % s.OC, c = oc / s.mult;
      const scalar_t* plane = x + (n * s.C + c) * s.H * s.W;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          acc_t acc = 0;
          for (int64_t kh = 0; kh < s.KH; ++kh) {
            const int64_t ih = oh * s.SH - s.PH + kh * s.DH;
            if (ih < 0 || ih >= s.H) continue;
            for (int64_t kw = 0; kw < s.KW; ++kw) {
              const int64_t iw = ow * s.SW - s.PW + kw * s.DW;
              if (iw < 0 || iw >= s.W) continue;
              acc += acc_t(plane[ih * s.W + iw]) * acc_t(w[(oc * s.KH + kh) * s.KW + kw]);
            }
          }
          const acc_t u = acc * af.sc<acc_t>(oc) + af.sh<acc_t>(oc);
          y[((n * s.OC + oc) * s.OH + oh) * s.OW + ow] = scalar_t(act_fwd<A>(u));
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------- forward op

// y = act(dwconv(x) * scale + shift), in the layout of output_channels_last(x), dtype of x.
at::Tensor forward_impl(const at::Tensor& x, const at::Tensor& weight, const Affine& af,
                        const DwConvShape& s, Act act) {
  const bool cl = output_channels_last(x);
  at::Tensor y = empty_output(x, s, x.scalar_type());
  if (y.numel() == 0) return y;
  const auto st = x.scalar_type();
  if (st == at::kFloat || st == at::kBFloat16) {
    const at::Tensor w = weight.to(at::kFloat).contiguous();  // [OC, 1, KH, KW]
    const bool nhwc = cl && s.mult == 1;
    // channels_last with a multiplier runs the NCHW kernel on NCHW copies
    const at::Tensor xc = nhwc ? x.contiguous(at::MemoryFormat::ChannelsLast) : x.contiguous();
    at::Tensor yc = nhwc || !cl ? y : at::empty({s.N, s.OC, s.OH, s.OW}, y.options());
    if (nhwc) {
      const at::Tensor wt = w.view({s.OC, s.KH * s.KW}).t().contiguous();  // [KH*KW][C]
      nhwc_forward(xc, yc, wt.const_data_ptr<float>(), af, s, act);
    } else {
      nchw_forward(xc, yc, w.const_data_ptr<float>(), af, s, act);
    }
    if (!yc.is_same(y)) y.copy_(yc);
    return y;
  }
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor yc = cl ? at::empty({s.N, s.OC, s.OH, s.OW}, y.options()) : y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, st, "dwconv_bn_act", [&] {
    dispatch_act(act, [&](auto tag) {
      generic_forward<decltype(tag)::value, scalar_t>(xc, yc, wc, af, s);
    });
  });
  if (!yc.is_same(y)) y.copy_(yc);
  return y;
}

at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view act) {
  const char* op = "dwconv_bn_act";
  const DwConvShape s = check_dwconv(op, x, weight, scale, shift, stride, padding, dilation);
  const Act a = parse_act(op, std::string_view(act.data(), act.size()));
  return forward_impl(x, weight, affine_of(scale, shift, s.OC), s, a);
}

// ---------------------------------------------------------------------------- backward

// From z = dwconv(x) (float / double, NCHW or NHWC contiguous) and grad_out: gz = act'(u) * g *
// scale, and per-(row) partial sums of gu and gu * z, where u = z * scale + shift.
template <Act A, typename acc_t>
void affine_act_backward(const acc_t* z, const acc_t* g, acc_t* gz, const Affine& af,
                         const DwConvShape& s, bool nhwc, std::vector<double>& sum_gu,
                         std::vector<double>& sum_guz) {
  const int64_t rows = s.N * s.OH;  // NHWC: one task per (n, oh); NCHW: per (n, oc)
  const int64_t tasks = nhwc ? rows : s.N * s.OC;
  std::vector<double> part_gu(tasks * (nhwc ? s.OC : 1)), part_guz(part_gu.size());
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (nhwc) {
        double* pg = part_gu.data() + t * s.OC;
        double* pz = part_guz.data() + t * s.OC;
        for (int64_t i = t * s.OW * s.OC, ow = 0; ow < s.OW; ++ow) {
          for (int64_t oc = 0; oc < s.OC; ++oc, ++i) {
            const acc_t u = z[i] * af.sc<acc_t>(oc) + af.sh<acc_t>(oc);
            const acc_t gu = act_bwd<A>(g[i], u);
            gz[i] = gu * af.sc<acc_t>(oc);
            pg[oc] += gu;
            pz[oc] += gu * z[i];
          }
        }
      } else {
        const int64_t oc = t % s.OC, len = s.OH * s.OW;
        const acc_t sc = af.sc<acc_t>(oc), sh = af.sh<acc_t>(oc);
        double a = 0, b = 0;
        for (int64_t i = t * len; i < (t + 1) * len; ++i) {
          const acc_t gu = act_bwd<A>(g[i], z[i] * sc + sh);
          gz[i] = gu * sc;
          a += gu;
          b += gu * z[i];
        }
        part_gu[t] = a;
        part_guz[t] = b;
      }
    }
  });
  sum_gu.assign(s.OC, 0.0);
  sum_guz.assign(s.OC, 0.0);
  for (int64_t t = 0; t < tasks; ++t) {  // fixed order: deterministic
    if (nhwc) {
      for (int64_t oc = 0; oc < s.OC; ++oc) {
        sum_gu[oc] += part_gu[t * s.OC + oc];
        sum_guz[oc] += part_guz[t * s.OC + oc];
      }
    } else {
      sum_gu[t % s.OC] += part_gu[t];
      sum_guz[t % s.OC] += part_guz[t];
    }
  }
}

at::Tensor param_grad(const std::vector<double>& v, const c10::optional<at::Tensor>& like,
                      const at::Tensor& x) {
  at::Tensor out = at::empty({int64_t(v.size())}, x.options().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), out.mutable_data_ptr<double>());
  return out.to(like.has_value() && like->defined() ? like->scalar_type() : x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view act) {
  const char* op = "dwconv_bn_act_backward";
  const DwConvShape s = check_dwconv(op, x, weight, scale, shift, stride, padding, dilation);
  const Act a = parse_act(op, std::string_view(act.data(), act.size()));
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == s.N && grad_out.size(1) == s.OC &&
                        grad_out.size(2) == s.OH && grad_out.size(3) == s.OW,
                    "fastops.", op, ": argument 'grad_out' must have shape [", s.N, ", ", s.OC, ", ",
                    s.OH, ", ", s.OW, "], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), "fastops.", op,
                   ": argument 'grad_out' has dtype ", grad_out.scalar_type(), " but 'x' has dtype ",
                   x.scalar_type());
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xa = x.to(acc_type).contiguous(fmt);
  const at::Tensor wa = weight.to(acc_type).contiguous();
  const at::Tensor ga = grad_out.to(acc_type).contiguous(fmt);
  const Affine af = affine_of(scale, shift, s.OC);
  const Affine identity = affine_of(c10::nullopt, c10::nullopt, s.OC);
  const at::Tensor z = forward_impl(xa, wa, identity, s, Act::None).contiguous(fmt);
  at::Tensor gz = at::empty_like(z);
  std::vector<double> sum_gu, sum_guz;
  if (z.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "dwconv_bn_act_backward", [&] {
      dispatch_act(a, [&](auto tag) {
        affine_act_backward<decltype(tag)::value, scalar_t>(
            z.const_data_ptr<scalar_t>(), ga.const_data_ptr<scalar_t>(), gz.mutable_data_ptr<scalar_t>(),
            af, s, cl, sum_gu, sum_guz);
      });
    });
  } else {
    sum_gu.assign(s.OC, 0.0);
    sum_guz.assign(s.OC, 0.0);
  }
  at::Tensor grad_x, grad_w;
  if (x.numel() > 0 && gz.numel() > 0) {
    auto grads = at::convolution_backward(gz, xa, wa, c10::nullopt, stride, padding, dilation,
                                          /*transposed=*/false, /*output_padding=*/{0, 0},
                                          /*groups=*/s.C, {true, true, false});
    grad_x = std::get<0>(grads);
    grad_w = std::get<1>(grads);
  } else {
    grad_x = at::zeros_like(xa);
    grad_w = at::zeros_like(wa);
  }
  return {grad_x.to(x.scalar_type()).contiguous(fmt), grad_w.to(weight.scalar_type()).contiguous(),
          param_grad(sum_guz, scale, x), param_grad(sum_gu, shift, x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act);
  m.impl("dwconv_bn_act_backward", &dwconv_bn_act_backward);
}

}  // namespace cpu
}  // namespace fastops
