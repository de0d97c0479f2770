// CPU kernel of fastops::stem_conv_bn_act: a network's first layer, a dense convolution of an
// image with few channels (RGB), the folded BatchNorm and activation, and optionally the max
// pool that follows it (ShuffleNet, ResNet / ResNeXt):
//   z = act(conv2d(x, weight, stride, padding) * scale[o] + shift[o])
//   y = max_pool2d(z, pool_kernel, pool_stride, pool_padding)   (pool_kernel 1x1: y = z)
// float32, channels_last out (x of any layout is read channels_last). Direct convolution: each
// output pixel's channels are vectors of 16, a block of 4-8 pixels x up to 4 vectors of
// accumulators stays in registers while the kernel's K*K*C taps are broadcast into it (weights
// [K*K*C][OC padded to 16]); the affine runs before the store, the activation over the row
// while it is in L1. With a pool, each task keeps the conv rows its pooled rows need in a small
// ring (L1/L2) and writes only the pooled rows: the conv output, 4x the pooled one at stride 2,
// never reaches memory.
// (oneDNN's convolution with 3 input channels runs far from the FMA peak, and ATen's max pool
// also writes the indices.)
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../dwconv.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int L = kLanes;

struct StemShape {
  int64_t N, C, H, W, OC, OCP, KH, KW, SH, SW, PH, PW, OH, OW;  // conv; OCP: OC rounded up to L
  int64_t QKH, QKW, QSH, QSW, QPH, QPW, QH, QW;                  // pool (QKH = QKW = 1: none)
  bool pool;
};

// Output pixels [ow0, ow0 + np) of a conv row, channels [c0, c0 + V * L), times the scale plus
// the shift, into out[ow * OCP + c]: PB x V accumulators in registers, each tap's V weight
// vectors shared by the PB pixels (np == PB when Full, so that the loops carry no per-pixel
// test). `rows` are the kernel's input rows with zero columns around them (null: a padding
// row, zeros). The activation is a pass of its own over the row (act_row), while the row is in
// L1: as a template argument here it multiplied this function's copies by seven and the
// build's time by minutes, for no measurable gain.
template <int V, int PB, bool Full>
FASTOPS_CPU_INLINE void conv_block(const StemShape& s, const float* const* rows, const float* wt, int64_t c0,
                                   int64_t ow0, int64_t np, const f32x16 (&scale)[V], const f32x16 (&shift)[V],
                                   float* out) {
  const int64_t step = s.SW * s.C, taps = s.KW * s.C;
  f32x16 acc[PB][V];
  unroll<PB>([&](auto p) FASTOPS_CPU_INLINE_LAMBDA {
    unroll<V>([&](auto v) FASTOPS_CPU_INLINE_LAMBDA { acc[p][v] = f32x16{}; });
  });
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    if (rows[kh] == nullptr) continue;
    const float* r = rows[kh] + ow0 * step;
    const float* w = wt + kh * taps * s.OCP + c0;
    for (int64_t t = 0; t < taps; ++t, w += s.OCP) {  // tap (kw, c) of pixel p at r[p * step + kw * C + c]
      f32x16 wv[V];
      unroll<V>([&](auto v) FASTOPS_CPU_INLINE_LAMBDA { wv[v] = load16(w + v * L); });
      unroll<PB>([&](auto p) FASTOPS_CPU_INLINE_LAMBDA {
        if (Full || p < np) {
          // vector * scalar: GCC broadcasts the scalar from memory (0 + x or x - 0 as a vector
          // cost an add, or a lane-by-lane build, in this multi-versioned code)
          const float xs = r[p * step + t];
          unroll<V>([&](auto v) FASTOPS_CPU_INLINE_LAMBDA { acc[p][v] += wv[v] * xs; });
        }
      });
    }
  }
  unroll<PB>([&](auto p) FASTOPS_CPU_INLINE_LAMBDA {
    if (Full || p < np)
      unroll<V>([&](auto v) FASTOPS_CPU_INLINE_LAMBDA {
        store16(out + (ow0 + p) * s.OCP + c0 + v * L, acc[p][v] * scale[v] + shift[v]);
      });
  });
}

// A conv row's channels [c0, c0 + V * L) into out[ow * OCP + c].
template <int V, int PB>
FASTOPS_CPU_INLINE void conv_row_channels(const StemShape& s, const float* const* rows, const float* wt,
                                          const float* sc, const float* sh, int64_t c0, float* out) {
  f32x16 scale[V], shift[V];
  unroll<V>([&](auto v) FASTOPS_CPU_INLINE_LAMBDA {
    scale[v] = load16(sc + c0 + v * L), shift[v] = load16(sh + c0 + v * L);
  });
  int64_t ow0 = 0;
  for (; ow0 + PB <= s.OW; ow0 += PB) conv_block<V, PB, true>(s, rows, wt, c0, ow0, PB, scale, shift, out);
  if (ow0 < s.OW) conv_block<V, PB, false>(s, rows, wt, c0, ow0, s.OW - ow0, scale, shift, out);
}

// A whole conv row (scale and shift applied, no activation yet) into out[ow * OCP + c].
FASTOPS_CPU_INLINE void conv_row_affine(const StemShape& s, const float* const* rows, const float* wt,
                                        const float* sc, const float* sh, float* out) {
  for (int64_t c0 = 0; c0 < s.OCP; c0 += 4 * L) {
    switch (std::min<int64_t>(4, (s.OCP - c0) / L)) {
      case 1: conv_row_channels<1, 8>(s, rows, wt, sc, sh, c0, out); break;
      case 2: conv_row_channels<2, 6>(s, rows, wt, sc, sh, c0, out); break;
      case 3: conv_row_channels<3, 4>(s, rows, wt, sc, sh, c0, out); break;
      default: conv_row_channels<4, 4>(s, rows, wt, sc, sh, c0, out); break;
    }
  }
}

// The activation over n values (a multiple of 16) in place.
template <Act A>
FASTOPS_CPU_INLINE void act_row(float* z, int64_t n) {
  if constexpr (A != Act::None)
    for (int64_t c = 0; c < n; c += L) store16(z + c, act_fwd<A>(load16(z + c)));
}

// Max pooling compares with one `>` (v > m ? v : m), which drops a NaN: each conv row is checked
// for values that are not finite (the sum of z - z over the row is NaN), and a pooled row whose
// window holds such a row is pooled again value by value, keeping NaN as max_pool2d does. (A
// compare for NaN, or an OR of two compares, in the vector loops makes GCC select lane by lane
// for AVX-512F: 5-7 ms instead of 0.1 ms for a 112x112 pool.)
FASTOPS_CPU_INLINE f32x16 max16(f32x16 m, f32x16 v) { return v > m ? v : m; }

FASTOPS_CPU_INLINE bool all_finite(const float* z, int64_t n) {
  f32x16 acc{};
  for (int64_t c = 0; c < n; c += L) {
    const f32x16 v = load16(z + c);
    acc += v - v;
  }
  return !std::isnan(hsum(acc));
}

// Output rows [begin, end) of r = n * rows + row (pooled rows with a pool, else conv rows).
FASTOPS_CPU_MULTIVERSION void stem_rows(const StemShape& s, const float* x, const float* wt, const float* sc,
                                        const float* sh, Act act, float* y, int64_t begin, int64_t end) {
  const int64_t C = s.C, WP = s.W + 2 * s.PW, ring = s.pool ? s.QKH : 1;
  std::vector<float> xpad(s.KH * WP * C, 0.f), conv(ring * s.OW * s.OCP), vmax(s.pool ? s.OW * s.OCP : 0);
  std::vector<int64_t> held(ring, -1);  // the conv row (n * OH + oh) each ring slot holds
  std::vector<char> finite(ring, 1);     // and whether its values are all finite
  std::vector<const float*> rows(s.KH);
  // conv row oh of image n into `out` (a y row), or by default into ring slot (n * OH + oh) %
  // ring unless it is there already
  const auto conv_row = [&](int64_t n, int64_t oh, float* out = nullptr) FASTOPS_CPU_INLINE_LAMBDA -> const float* {
    const int64_t id = n * s.OH + oh, slot = id % ring;
    if (out == nullptr) {
      out = conv.data() + slot * s.OW * s.OCP;
      if (held[slot] == id) return out;
      held[slot] = id;
    }
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.SH - s.PH + kh;
      rows[kh] = nullptr;
      if (ih < 0 || ih >= s.H) continue;
      float* dst = xpad.data() + kh * WP * C;
      std::memcpy(dst + s.PW * C, x + (n * s.H + ih) * s.W * C, s.W * C * sizeof(float));
      rows[kh] = dst;
    }
    conv_row_affine(s, rows.data(), wt, sc, sh, out);
#define FASTOPS_STEM_ACT(A) act_row<A>(out, s.OW * s.OCP)
    FASTOPS_ACT_CASES(FASTOPS_STEM_ACT)
#undef FASTOPS_STEM_ACT
    if (s.pool) finite[slot] = all_finite(out, s.OW * s.OCP);
    return out;
  };
  // `pixels` values of OCP channels into a y row of OC channels, 16 at a time
  const auto put_row = [&](const float* src, int64_t pixels, float* dst) FASTOPS_CPU_INLINE_LAMBDA {
    for (int64_t p = 0; p < pixels; ++p) {
      int64_t c = 0;
      for (; c + L <= s.OC; c += L) store16(dst + p * s.OC + c, load16(src + p * s.OCP + c));
      for (; c < s.OC; ++c) dst[p * s.OC + c] = src[p * s.OCP + c];
    }
  };
  for (int64_t r = begin; r < end; ++r) {
    if (!s.pool) {  // OC a multiple of 16: straight into y
      const int64_t n = r / s.OH, oh = r % s.OH;
      if (s.OC == s.OCP)
        conv_row(n, oh, y + r * s.OW * s.OC);
      else
        put_row(conv_row(n, oh), s.OW, y + r * s.OW * s.OC);
      continue;
    }
    const int64_t n = r / s.QH, qh = r % s.QH;
    const int64_t h0 = std::max<int64_t>(0, qh * s.QSH - s.QPH), h1 = std::min(s.OH, qh * s.QSH - s.QPH + s.QKH);
    float* vm = vmax.data();
    const int64_t row_len = s.OW * s.OCP;
    bool nan_free = true;
    for (int64_t oh = h0; oh < h1; ++oh) {  // the window's rows, most of them kept from the last pooled row
      const float* z = conv_row(n, oh);
      nan_free = nan_free && finite[(n * s.OH + oh) % ring];
      if (oh == h0)
        std::memcpy(vm, z, row_len * sizeof(float));
      else
        for (int64_t c = 0; c < row_len; c += L) store16(vm + c, max16(load16(vm + c), load16(z + c)));
    }
    if (!nan_free) {  // again, value by value, NaN kept (the window's rows are all in the ring)
      for (int64_t c = 0; c < row_len; ++c) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t oh = h0; oh < h1; ++oh) {
          const float v = conv[((n * s.OH + oh) % ring) * s.OW * s.OCP + c];
          if (v > m || std::isnan(v)) m = v;
        }
        vm[c] = m;
      }
    }
    float* yr = y + r * s.QW * s.OC;
    for (int64_t qw = 0; qw < s.QW; ++qw) {
      const int64_t w0 = std::max<int64_t>(0, qw * s.QSW - s.QPW), w1 = std::min(s.OW, qw * s.QSW - s.QPW + s.QKW);
      float* out = yr + qw * s.OC;
      for (int64_t c = 0; c < s.OCP; c += L) {
        f32x16 m = load16(vm + w0 * s.OCP + c);
        for (int64_t ow = w0 + 1; ow < w1; ++ow) m = max16(m, load16(vm + ow * s.OCP + c));
        if (c + L <= s.OC) {
          store16(out + c, m);
        } else {
          float lanes[L];
          store16(lanes, m);
          for (int64_t j = 0; c + j < s.OC; ++j) out[c + j] = lanes[j];
        }
      }
      for (int64_t c = 0; !nan_free && c < s.OC; ++c) {  // NaN kept
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t ow = w0; ow < w1; ++ow) {
          const float v = vm[ow * s.OCP + c];
          if (v > m || std::isnan(v)) m = v;
        }
        out[c] = m;
      }
    }
  }
}

at::Tensor stem_conv_bn_act(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                            const c10::optional<at::Tensor>& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                            c10::string_view act_, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                            at::IntArrayRef pool_padding) {
  const char* op = "stem_conv_bn_act";
  const Act act = parse_act(op, std::string_view(act_.data(), act_.size()));
  TORCH_CHECK_VALUE(x.dim() == 4, "fastops.", op, ": argument 'x' must be 4-D [N, C, H, W], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "fastops.", op, ": argument 'x' must be float32 on CPU, got ",
                   x.scalar_type());
  const auto pair = [&](at::IntArrayRef v, const char* name, int64_t least) {
    TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= least && v[1] >= least, "fastops.", op, ": argument '", name,
                      "' must be 2 ints >= ", least, ", got ", v);
  };
  pair(stride, "stride", 1), pair(padding, "padding", 0);
  pair(pool_kernel, "pool_kernel", 1), pair(pool_stride, "pool_stride", 1), pair(pool_padding, "pool_padding", 0);
  StemShape s{};
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == s.C, "fastops.", op, ": argument 'weight' must have shape [OC, ",
                    s.C, ", kh, kw], got ", weight.sizes());
  s.OC = weight.size(0), s.OCP = (s.OC + L - 1) / L * L, s.KH = weight.size(2), s.KW = weight.size(3);
  s.SH = stride[0], s.SW = stride[1], s.PH = padding[0], s.PW = padding[1];
  for (const auto& [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}})
    TORCH_CHECK_VALUE(!t->has_value() || !(*t)->defined() || ((*t)->dim() == 1 && (*t)->size(0) == s.OC), "fastops.",
                      op, ": argument '", name, "' must have shape [", s.OC, "], got ", (*t)->sizes());
  TORCH_CHECK_VALUE(s.H + 2 * s.PH >= s.KH && s.W + 2 * s.PW >= s.KW, "fastops.", op, ": the kernel (", s.KH, "x", s.KW,
                    ") is larger than the padded input (", s.H + 2 * s.PH, "x", s.W + 2 * s.PW, ")");
  s.OH = (s.H + 2 * s.PH - s.KH) / s.SH + 1, s.OW = (s.W + 2 * s.PW - s.KW) / s.SW + 1;
  s.QKH = pool_kernel[0], s.QKW = pool_kernel[1], s.QSH = pool_stride[0], s.QSW = pool_stride[1];
  s.QPH = pool_padding[0], s.QPW = pool_padding[1];
  TORCH_CHECK_VALUE(2 * s.QPH <= s.QKH && 2 * s.QPW <= s.QKW, "fastops.", op,
                    ": argument 'pool_padding' must be at most half of 'pool_kernel', got ", pool_padding, " and ",
                    pool_kernel);
  s.pool = !(s.QKH == 1 && s.QKW == 1 && s.QSH == 1 && s.QSW == 1);
  TORCH_CHECK_VALUE(s.OH + 2 * s.QPH >= s.QKH && s.OW + 2 * s.QPW >= s.QKW, "fastops.", op, ": the pool window (",
                    s.QKH, "x", s.QKW, ") is larger than the padded conv output (", s.OH + 2 * s.QPH, "x",
                    s.OW + 2 * s.QPW, ")");
  s.QH = (s.OH + 2 * s.QPH - s.QKH) / s.QSH + 1, s.QW = (s.OW + 2 * s.QPW - s.QKW) / s.QSW + 1;

  const int64_t out_h = s.pool ? s.QH : s.OH, out_w = s.pool ? s.QW : s.OW;
  at::Tensor y = at::empty({s.N, s.OC, out_h, out_w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  // weights [KH][KW][C][OCP] (zeros past OC), scale / shift padded to OCP
  const at::Tensor wc = weight.to(at::kFloat).permute({2, 3, 1, 0}).contiguous();
  std::vector<float> wt(s.KH * s.KW * s.C * s.OCP, 0.f), sc(s.OCP, 1.f), sh(s.OCP, 0.f);
  const float* wp = wc.const_data_ptr<float>();
  for (int64_t t = 0; t < s.KH * s.KW * s.C; ++t) std::memcpy(wt.data() + t * s.OCP, wp + t * s.OC, s.OC * sizeof(float));
  for (const auto& [t, v] : {std::pair{&scale, &sc}, std::pair{&shift, &sh}})
    if (t->has_value() && (*t)->defined()) {
      const at::Tensor tc = (*t)->to(at::kFloat).contiguous();
      std::memcpy(v->data(), tc.const_data_ptr<float>(), s.OC * sizeof(float));
    }
  const float* xp = xc.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // each thread a run of consecutive output rows (it recomputes the conv rows its first pooled
  // row shares with the previous run's last: pool_kernel - pool_stride of them)
  at::parallel_for(0, s.N * out_h, 1, [&](int64_t begin, int64_t end) {
    stem_rows(s, xp, wt.data(), sc.data(), sh.data(), act, yp, begin, end);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("stem_conv_bn_act", &stem_conv_bn_act); }

}  // namespace cpu
}  // namespace fastops
