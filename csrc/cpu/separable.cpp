// CPU kernels of fastops::separable_conv_bn_act and its backward (csrc/separable.h).
//
// Forward, channels_last float32 with an odd square kernel, padding k // 2, unit dilation and
// multiplier 1 (Xception's and MobileNet V1's convs): the inverted-residual engine
// (block_forward_f32, csrc/cpu/inverted_residual.cpp) without its expansion, each thread taking
// a band of output rows: the band's depthwise rows into an L2-sized buffer, then sgemm + the
// affine and activation into y. Against the step-wise path below (N=8, inputs from memory,
// interleaved): 128 -> 128 at 56x56 1.3x, the others within a few percent. NCHW float32, same
// shapes, bands of at least kMinBandPixels pixels: the same bands, each band's input rows
// transposed into a channels_last buffer first and the GEMM writing the output planes' columns
// (forward_nchw_by_bands).
// Otherwise a few images at a time: the depthwise result of the step (fastops::dwconv_bn_act's
// CPU kernel, no affine, no activation; at most kStepBytes, at least one image) stays in the
// cache while the pointwise conv with its epilogue (pwconv_bn_act's tiled GEMM + affine +
// activation) reads it and writes the step's output. The whole depthwise result is never
// written to memory; each step runs on all cores.
// Backward: the depthwise result is recomputed, then pwconv_bn_act_backward and
// dwconv_bn_act_backward (their CPU kernels) chain the gradients.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <tuple>
#include <vector>

#include "../separable.h"
#include "kernels.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

using OptT = c10::optional<at::Tensor>;

// The depthwise result of one step of images: enough pixels for the pointwise GEMM's tiles to
// run at full speed, small enough to stay in the last-level cache until the GEMM reads it.
constexpr int64_t kStepBytes = 4 << 20;
constexpr int L = kLanes;

at::Tensor dwconv(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::dwconv_bn_act", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&,
                                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view)>();
  return op.call(x, w, c10::nullopt, c10::nullopt, stride, padding, dilation, "none");
}

// The shapes the inverted-residual engine takes (its depthwise step pads k // 2 on every side).
bool by_bands(const at::Tensor& x, const SeparableShape& s) {
  const DwConvShape& d = s.dw;
  return x.scalar_type() == at::kFloat && d.mult == 1 && d.KH == d.KW && d.KH % 2 == 1 && d.PH == d.KH / 2 &&
         d.PW == d.KW / 2 && d.DH == 1 && d.DW == 1 && d.SH == d.SW;
}

// Bytes of depthwise rows (channels_last) or input rows (NCHW) one band may take: inside L2.
constexpr int64_t kBandBytes = 384 << 10;

// Output rows per band of the channels_last path: the band's depthwise rows (rows x OW x C
// floats) within kBandBytes, then spread evenly over the image's bands (14 rows: 7 + 7, not
// 13 + 1). Sized by the depthwise rows rather than the input rows, as the inverted-residual
// engine sizes its own: a stride-2 band then has 4x the pixels, and the GEMM on its rows runs at
// a better rate (sgemm, 64 -> 128 channels, one thread: 222 GF/s on 336 pixels, 256 on 1456).
// 64 -> 128 at 112x112 stride 2, N=8: 3.4 -> 2.7-3.0 ms; 128 -> 128 at 56x56 (11 -> 13 rows),
// 512 at 14x14 and 728 at 19x19 within 4%.
int64_t band_rows(const SeparableShape& s) {
  const DwConvShape& d = s.dw;
  const int64_t row_bytes = d.OW * d.C * int64_t(sizeof(float));
  const int64_t rows = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(row_bytes, 1), 1, d.OH);
  const int64_t bands = (d.OH + rows - 1) / rows;
  return (d.OH + bands - 1) / bands;
}
// The NCHW path's output rows per band: its input rows ((band - 1) * S + K), which it transposes
// into a buffer, within kBandBytes. (Sized like the channels_last bands, 64 -> 128 at 112x112
// stride 2 ran 3.8 -> 5.3 ms, 128 -> 128 at 56x56 4.3 -> 4.4-4.9.)
int64_t nchw_band_rows(const SeparableShape& s) {
  const DwConvShape& d = s.dw;
  const int64_t row_bytes = d.W * d.C * int64_t(sizeof(float));
  return std::clamp<int64_t>((kBandBytes / std::max<int64_t>(row_bytes, 1) - d.KH) / d.SH + 1, 1, d.OH);
}
int64_t nchw_band_pixels(const SeparableShape& s) { return nchw_band_rows(s) * s.dw.OW; }
// Below this many pixels a band's GEMM (W @ d^T into strided output rows) ran slower than the
// step-wise path's tiles: 728 -> 728 at 19x19 (76-pixel bands) 16.7 -> 20.1 ms, 512 -> 512 at
// 14x14 (154) 4.5 -> 4.7; 64 -> 128 at 112x112 stride 2 (336) 5.9 -> 4.1 ms, 128 -> 128 at
// 56x56 (616) 6.7 -> 5.0 (N=8, inputs from memory, one run each).
constexpr int64_t kMinBandPixels = 256;

// out[p * C + c] = x[c * plane + p] for pixels p < npix and channels c < C: NCHW rows (plane:
// one channel's stride) as channels_last pixels, 16 channels at a time (simd.h's
// planes_to_pixels; the last channel block overlaps the one before when C % 16 != 0).
FASTOPS_CPU_MULTIVERSION void planes_to_pixels_f32(const float* x, int64_t plane, int64_t C, int64_t npix,
                                                    float* out) {
  if (C < L) {
    for (int64_t p = 0; p < npix; ++p)
      for (int64_t c = 0; c < C; ++c) out[p * C + c] = x[c * plane + p];
    return;
  }
  for (int64_t c = 0; c < C; c += L) {
    const int64_t c0 = std::min(c, C - L);
    planes_to_pixels(x + c0 * plane, plane, npix, out + c0, C);
  }
}

// What both band paths pass their kernels, float32: the depthwise weights by tap ([K*K][C]), with
// unit scale and zero shift (the depthwise step has no affine), the pointwise weight [OC, C] and
// the op's scale and shift [OC].
struct BandParams {
  std::vector<float> wt, ones, zeros;
  at::Tensor w3, s3, b3;
  BandParams(const at::Tensor& dw_weight, const at::Tensor& pw_weight, const OptT& scale, const OptT& shift,
             const SeparableShape& s)
      : wt(dwconv_weights_by_tap_f32(dw_weight)), ones(s.dw.C, 1.f), zeros(s.dw.C, 0.f),
        w3(pw_weight.to(at::kFloat).contiguous()), s3(param_vector(scale, s.OC, 1.0, at::kFloat)),
        b3(param_vector(shift, s.OC, 0.0, at::kFloat)) {}
};

// y (NCHW, dense) = act(pointwise(depthwise(x)) * scale + shift) for NCHW float32 x, by bands
// of output rows as the engine goes: a band's input rows transposed into a channels_last buffer,
// its depthwise rows by dwconv_bn_act's channels_last kernel, then y[n][:, band] = W @ d^T
// (sgemm straight into the band's columns of every output plane) and the affine + activation
// there. Taken when a band has at least kMinBandPixels pixels.
void forward_nchw_by_bands(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
                           const OptT& scale, const OptT& shift, const SeparableShape& s, Act act, at::Tensor& y) {
  const DwConvShape& d = s.dw;
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, OH = d.OH, OW = d.OW, K = d.KH, S = d.SH, P = K / 2;
  const int64_t OC = s.OC, HW = H * W, OHW = OH * OW;
  const at::Tensor xc = x.contiguous();
  const BandParams p(dw_weight, pw_weight, scale, shift, s);
  const float *xp = xc.const_data_ptr<float>(), *w3p = p.w3.const_data_ptr<float>();
  const float *s3p = p.s3.const_data_ptr<float>(), *b3p = p.b3.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const int64_t band = nchw_band_rows(s);
  // fewer images than threads: each image's rows split into parts
  const int64_t threads = at::get_num_threads();
  const int64_t parts = std::min<int64_t>(OH, N >= threads ? 1 : (threads + N - 1) / N);
  const int64_t rows_per_part = (OH + parts - 1) / parts;
  const int64_t max_in_rows = std::min<int64_t>(H, (band - 1) * S + K);
  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    const std::unique_ptr<float[]> in(new float[max_in_rows * W * C]), dbuf(new float[band * OW * C]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / parts, part = t % parts;
      const int64_t oa = part * rows_per_part, ob = std::min(OH, oa + rows_per_part);
      for (int64_t o = oa; o < ob; o += band) {
        const int64_t o1 = std::min(ob, o + band);
        const int64_t lo = std::max<int64_t>(0, o * S - P), hi = std::min<int64_t>(H, (o1 - 1) * S - P + K);
        planes_to_pixels_f32(xp + n * C * HW + lo * W, HW, C, (hi - lo) * W, in.get());
        // the band's input rows as an image of their own, its top padding what is left of P
        const DwConvShape ds = dw_rows_shape(1, C, hi - lo, W, K, S, lo - (o * S - P), o1 - o, OW);
        dwconv_nhwc_rows_f32(in.get(), dbuf.get(), p.wt.data(), p.ones.data(), p.zeros.data(), ds, Act::None, 0,
                             o1 - o);
        const int64_t M = (o1 - o) * OW;
        float* yb = yp + n * OC * OHW + o * OW;
        gemm_rowmajor(false, true, OC, M, C, w3p, C, dbuf.get(), C, yb, OHW);
        pwconv_epilogue_nchw_f32(yb, OHW, yb, OHW, M, OC, s3p, b3p, act);
      }
    }
  });
}

// y (channels_last, dense) = act(pointwise(depthwise(x)) * scale + shift) by the engine: the
// depthwise step with unit scale, zero shift and no activation; the projection's epilogue is
// the op's affine and activation.
void forward_by_bands(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight, const OptT& scale,
                      const OptT& shift, const SeparableShape& s, Act act, at::Tensor& y) {
  const DwConvShape& d = s.dw;
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const BandParams p(dw_weight, pw_weight, scale, shift, s);
  BlockArgs a{};
  a.x = xc.const_data_ptr<float>(), a.ldx = d.C, a.N = d.N, a.C = d.C, a.H = d.H, a.W = d.W, a.E = d.C;
  a.O = s.OC, a.K = d.KH, a.S = d.SH;
  a.w2t = p.wt.data(), a.s2 = p.ones.data(), a.b2 = p.zeros.data();
  a.w3 = p.w3.const_data_ptr<float>(), a.s3 = p.s3.const_data_ptr<float>(), a.b3 = p.b3.const_data_ptr<float>();
  a.act1 = Act::None, a.act2 = Act::None, a.act3 = act;
  a.out = BlockOut::Plain;
  a.y = y.mutable_data_ptr<float>();
  a.band_rows = band_rows(s);
  block_forward_f32(a);
}

at::Tensor separable_conv_bn_act(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
                                 const OptT& scale, const OptT& shift, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view act) {
  const char* op = "separable_conv_bn_act";
  const SeparableShape s = check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation);
  const Act a = parse_act(op, act);
  const bool cl = output_channels_last(x);
  at::Tensor y = at::empty({s.dw.N, s.OC, s.dw.OH, s.dw.OW}, x.options(),
                           cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  const bool nchw_bands = nchw_band_pixels(s) >= kMinBandPixels && s.dw.OH * s.dw.OW < (int64_t(1) << 30);
  if (by_bands(x, s) && (cl || nchw_bands)) {
    if (cl)
      forward_by_bands(x, dw_weight, pw_weight, scale, shift, s, a, y);
    else
      forward_nchw_by_bands(x, dw_weight, pw_weight, scale, shift, s, a, y);
    return y;
  }
  // images per step: their depthwise result within kStepBytes (at least one image)
  const int64_t image_bytes = s.dw.OC * s.dw.OH * s.dw.OW * int64_t(x.element_size());
  const int64_t step = std::clamp<int64_t>(kStepBytes / std::max<int64_t>(image_bytes, 1), 1, s.dw.N);
  for (int64_t n = 0; n < s.dw.N; n += step) {
    const int64_t count = std::min(step, s.dw.N - n);
    const at::Tensor d = dwconv(x.narrow(0, n, count), dw_weight, stride, padding, dilation);
    at::Tensor yn = y.narrow(0, n, count);
    const PwShape pw{count, s.dw.OC, s.dw.OH, s.dw.OW, s.OC, 1, 1};
    pwconv_forward_into(d, pw_weight, scale, shift, pw, a, c10::nullopt, yn);
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> separable_conv_bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
    const OptT& scale, const OptT& shift, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view act) {
  const char* op = "separable_conv_bn_act_backward";
  const SeparableShape s = check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation);
  parse_act(op, act);
  check_same_kind(op, "grad_out", grad_out, "x", x);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == s.dw.N && grad_out.size(1) == s.OC &&
                        grad_out.size(2) == s.dw.OH && grad_out.size(3) == s.dw.OW,
                    "fastops.", op, ": argument 'grad_out' must have shape [", s.dw.N, ", ", s.OC, ", ", s.dw.OH,
                    ", ", s.dw.OW, "], got ", grad_out.sizes());
  static const auto pw_bwd =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastops::pwconv_bn_act_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, int64_t,
              c10::string_view, const OptT&, int64_t)>();
  static const auto dw_bwd =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastops::dwconv_bn_act_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, at::IntArrayRef,
              at::IntArrayRef, at::IntArrayRef, c10::string_view)>();
  const at::Tensor d = dwconv(x, dw_weight, stride, padding, dilation);
  const auto [gd, gpw, gs, gb, unused] = pw_bwd.call(grad_out, d, pw_weight, scale, shift, 1, act, c10::nullopt, 1);
  const auto [gx, gdw, unused_s, unused_b] =
      dw_bwd.call(gd, x, dw_weight, c10::nullopt, c10::nullopt, stride, padding, dilation, "none");
  return {gx, gdw, gpw, gs, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("separable_conv_bn_act", &separable_conv_bn_act);
  m.impl("separable_conv_bn_act_backward", &separable_conv_bn_act_backward);
}

}  // namespace cpu
}  // namespace fastops
