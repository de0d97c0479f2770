// CPU kernels of fastops::pwconv_bn_act and its backward (formulas: csrc/pwconv.h).
//
// Forward, float32: the pixels are cut into tiles whose input and 1x1-conv result fit in L2;
// each tile is one library GEMM per group (MKL's sgemm, single-threaded inside the tile loop,
// which runs the tiles in parallel), and the epilogue (affine, + residual, activation, the
// shuffled store) runs on the tile's result while it is in cache: the conv output is never
// written to memory.
//   channels_last: x is [pixels, C]; a tile is Pt pixels, z = x_tile @ W^T ([Pt, OC]); the
//     epilogue goes along each pixel's OC values (16 at a time); with a shuffle, the row is
//     finished in a small buffer and then written in shuffled order.
//   NCHW: x[n] is [C, HW]; a tile is HWt columns of one image, z = W @ x[n][:, tile]
//     ([OC, HWt]); the epilogue goes along each row, which a shuffle only sends to another
//     output channel.
// channels_last float32, ungrouped or with OC <= C (with a residual only before no activation or
// a ReLU): oneDNN's 1x1 convolution with the affine, residual and activation fused as post-ops,
// then a shuffle in place (onednn_pointwise).
// Other dtypes (float64 for gradcheck, bfloat16, float16), no BLAS, or the remaining
// channels_last cases with OC <= C (see pwconv_forward_into): ATen's convolution, then the same
// epilogue over the whole tensor.
// Backward: z recomputed by ATen's convolution; one fused pass gives gu = act'(u) * g (g read at
// its shuffled position), grad_residual = gu, gz = gu * scale and the per-channel sums of gu and
// gu * z; then grad_x and grad_weight from gz: GEMMs (conv1x1_grads) for ungrouped float32 /
// float64, ATen's convolution_backward otherwise. Without scale, shift, residual, activation and
// shuffle, gz is grad_out and the first two steps are skipped (the sums then come from grad_W).
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../pwconv.h"
#include "kernels.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int L = kLanes;

// The epilogue's parameters, in the accumulation type: scale / shift per conv channel.
template <typename T>
struct Epi {
  const T *scale, *shift;
  int64_t OC, G, K;  // shuffle: G groups of K channels (G = 1: none)
  Act act;
  // output channel of conv channel o: q with shuffle_source(q, G, K) == o
  int64_t dest(int64_t o) const { return (o % K) * G + o / K; }
};

// channels_last epilogue over `rows` pixels: z rows of OC values (ld ldz), residual / y rows of
// OC values (ld OC). buf: OC values of scratch (the shuffled case).
template <Act A, typename E, typename T>
FASTOPS_CPU_INLINE void epilogue_cl_act(const T* z, int64_t ldz, const E* res, E* y, int64_t rows, const Epi<T>& e,
                                        T* buf) {
  const int64_t OC = e.OC;
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * ldz;
    const E* rr = res ? res + r * OC : nullptr;
    E* yr = y + r * OC;
    if (e.G == 1) {
      int64_t o = 0;
      if constexpr (kSimd<E> && std::is_same_v<T, float>) {
        for (; o + L <= OC; o += L) {
          f32x16 u = load16(zr + o) * load16(e.scale + o) + load16(e.shift + o);
          if (rr) u += load16(rr + o);
          store16(yr + o, act_fwd<A>(u));
        }
      }
      for (; o < OC; ++o) put(yr + o, act_fwd<A>(T(zr[o] * e.scale[o] + e.shift[o] + (rr ? T(value(rr[o])) : T(0)))));
    } else {
      int64_t o = 0;
      if constexpr (kSimd<E> && std::is_same_v<T, float>) {
        for (; o + L <= OC; o += L) {
          f32x16 u = load16(zr + o) * load16(e.scale + o) + load16(e.shift + o);
          if (rr) u += load16(rr + o);
          store16(buf + o, act_fwd<A>(u));
        }
      }
      for (; o < OC; ++o) buf[o] = act_fwd<A>(T(zr[o] * e.scale[o] + e.shift[o] + (rr ? T(value(rr[o])) : T(0))));
      for (int64_t j = 0; j < e.K; ++j)
        for (int64_t i = 0; i < e.G; ++i) put(yr + j * e.G + i, buf[i * e.K + j]);
    }
  }
}

// NCHW epilogue over conv channels [0, OC) of one image and `cols` pixels: z row o at z + o*ldz,
// residual row o at res + o*ld, y row at y + dest(o)*ld.
template <Act A, typename E, typename T>
FASTOPS_CPU_INLINE void epilogue_nchw_act(const T* z, int64_t ldz, const E* res, E* y, int64_t ld, int64_t cols,
                                          const Epi<T>& e) {
  for (int64_t o = 0; o < e.OC; ++o) {
    const T* zr = z + o * ldz;
    const E* rr = res ? res + o * ld : nullptr;
    E* yr = y + e.dest(o) * ld;
    const T sc = e.scale[o], sh = e.shift[o];
    int64_t j = 0;
    if constexpr (kSimd<E> && std::is_same_v<T, float>) {
      const f32x16 scv = f32x16{} + sc, shv = f32x16{} + sh;
      for (; j + L <= cols; j += L) {
        f32x16 u = load16(zr + j) * scv + shv;
        if (rr) u += load16(rr + j);
        store16(yr + j, act_fwd<A>(u));
      }
    }
    for (; j < cols; ++j) put(yr + j, act_fwd<A>(T(zr[j] * sc + sh + (rr ? T(value(rr[j])) : T(0)))));
  }
}

template <typename E, typename T>
FASTOPS_CPU_INLINE void epilogue_cl(const T* z, int64_t ldz, const E* res, E* y, int64_t rows, const Epi<T>& e,
                                    T* buf) {
  const Act act = e.act;
#define FASTOPS_EPI(A) epilogue_cl_act<A>(z, ldz, res, y, rows, e, buf)
  FASTOPS_ACT_CASES(FASTOPS_EPI)
#undef FASTOPS_EPI
}

template <typename E, typename T>
FASTOPS_CPU_INLINE void epilogue_nchw(const T* z, int64_t ldz, const E* res, E* y, int64_t ld, int64_t cols,
                                      const Epi<T>& e) {
  const Act act = e.act;
#define FASTOPS_EPI(A) epilogue_nchw_act<A>(z, ldz, res, y, ld, cols, e)
  FASTOPS_ACT_CASES(FASTOPS_EPI)
#undef FASTOPS_EPI
}

// Multi-versioned entry points (simd.h), one per storage type.
#define FASTOPS_PW_ENTRIES(E, suffix)                                                                        \
  FASTOPS_CPU_MULTIVERSION void epi_cl_##suffix(const Acc<E>* z, int64_t ldz, const E* res, E* y, int64_t rows, \
                                                const Epi<Acc<E>>& e, Acc<E>* buf) {                         \
    epilogue_cl(z, ldz, res, y, rows, e, buf);                                                               \
  }                                                                                                          \
  FASTOPS_CPU_MULTIVERSION void epi_nchw_##suffix(const Acc<E>* z, int64_t ldz, const E* res, E* y, int64_t ld, \
                                                  int64_t cols, const Epi<Acc<E>>& e) {                      \
    epilogue_nchw(z, ldz, res, y, ld, cols, e);                                                              \
  }
FASTOPS_PW_ENTRIES(float, f32)
FASTOPS_PW_ENTRIES(uint16_t, bf16)
FASTOPS_PW_ENTRIES(at::Half, f16)
FASTOPS_PW_ENTRIES(double, f64)
#undef FASTOPS_PW_ENTRIES

template <typename E>
void epi_cl(const Acc<E>* z, int64_t ldz, const E* res, E* y, int64_t rows, const Epi<Acc<E>>& e, Acc<E>* buf) {
  if constexpr (std::is_same_v<E, float>) epi_cl_f32(z, ldz, res, y, rows, e, buf);
  else if constexpr (std::is_same_v<E, uint16_t>) epi_cl_bf16(z, ldz, res, y, rows, e, buf);
  else if constexpr (std::is_same_v<E, at::Half>) epi_cl_f16(z, ldz, res, y, rows, e, buf);
  else epi_cl_f64(z, ldz, res, y, rows, e, buf);
}

template <typename E>
void epi_nchw(const Acc<E>* z, int64_t ldz, const E* res, E* y, int64_t ld, int64_t cols, const Epi<Acc<E>>& e) {
  if constexpr (std::is_same_v<E, float>) epi_nchw_f32(z, ldz, res, y, ld, cols, e);
  else if constexpr (std::is_same_v<E, uint16_t>) epi_nchw_bf16(z, ldz, res, y, ld, cols, e);
  else if constexpr (std::is_same_v<E, at::Half>) epi_nchw_f16(z, ldz, res, y, ld, cols, e);
  else epi_nchw_f64(z, ldz, res, y, ld, cols, e);
}

at::MemoryFormat layout_of(bool cl) { return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous; }

// The 1x1 convolution by ATen, dense in the output layout, in the accumulation type.
at::Tensor conv_z(const at::Tensor& x, const at::Tensor& weight, int64_t groups, bool cl, at::ScalarType acc) {
  return at::convolution(x, weight, c10::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, groups)
      .to(acc)
      .contiguous(layout_of(cl));
}

// Input + result of one tile: in L2, and at least 256 pixels so that the GEMM's packing of the
// weight pays off (measured on 1x1 convs of 24-512 channels: 256-2048 pixels ran fastest).
constexpr int64_t kTileBytes = 1024 * 1024;

// sgemm's sizes and strides are int: the tiled paths take channel counts and planes below this.
constexpr int64_t kIntLimit = int64_t(1) << 30;

// Pixels per tile: input + result of a tile (per_pixel_floats a pixel) within kTileBytes, 256 to
// 2048 pixels, a multiple of 16; then evened out over the `extent` pixels it cuts (an image's
// plane in NCHW, all pixels in channels_last), so that the tiles, which run in parallel, are of
// about one size: 361 pixels (19x19) as 192 + 169 rather than 256 + 105.
int64_t even_tile(int64_t per_pixel_floats, int64_t extent) {
  const int64_t most = std::clamp<int64_t>(kTileBytes / int64_t(sizeof(float) * per_pixel_floats), 256, 2048) / 16 * 16;
  const int64_t tiles = std::max<int64_t>(1, (extent + most - 1) / most);
  return std::min(most, ((extent + tiles - 1) / tiles + 15) / 16 * 16);
}

// float32 with sgemm: tiles of pixels, GEMM + epilogue per tile, tiles in parallel.
void forward_tiled(const at::Tensor& x, const at::Tensor& w, const float* res, float* y, const PwShape& s, bool cl,
                   const Epi<float>& e) {
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const int64_t C = s.C, OC = s.OC, G = s.groups, Cg = s.Cg(), OCg = s.OCg(), HW = s.H * s.W;
  const int64_t tile = even_tile(C + OC, cl ? s.N * HW : HW);
  if (cl) {
    const int64_t P = s.N * HW, tiles = (P + tile - 1) / tile;
    at::parallel_for(0, tiles, 1, [&](int64_t b, int64_t end) {
      std::vector<float> z(tile * OC), buf(OC);
      for (int64_t t = b; t < end; ++t) {
        const int64_t p0 = t * tile, rows = std::min(tile, P - p0);
        for (int64_t g = 0; g < G; ++g)  // z[:, g*OCg..] = x[p0.., g*Cg..] @ W_g^T
          gemm_rowmajor(false, true, rows, OCg, Cg, xp + p0 * C + g * Cg, C, wp + g * OCg * Cg, Cg, z.data() + g * OCg,
                        OC);
        epi_cl<float>(z.data(), OC, res ? res + p0 * OC : nullptr, y + p0 * OC, rows, e, buf.data());
      }
    });
    return;
  }
  const int64_t per_image = (HW + tile - 1) / tile, tiles = s.N * per_image;
  at::parallel_for(0, tiles, 1, [&](int64_t b, int64_t end) {
    std::vector<float> z(OC * std::min(tile, HW));
    for (int64_t t = b; t < end; ++t) {
      const int64_t n = t / per_image, j0 = (t % per_image) * tile, cols = std::min(tile, HW - j0);
      for (int64_t g = 0; g < G; ++g)  // z[g*OCg.., :] = W_g @ x[n][g*Cg.., j0..]
        gemm_rowmajor(false, false, OCg, cols, Cg, wp + g * OCg * Cg, Cg, xp + (n * C + g * Cg) * HW + j0, HW,
                      z.data() + g * OCg * cols, cols);
      epi_nchw<float>(z.data(), cols, res ? res + n * OC * HW + j0 : nullptr, y + n * OC * HW + j0, HW, cols, e);
    }
  });
}

}  // namespace

at::Tensor param_vector(const c10::optional<at::Tensor>& t, int64_t n, double fill, at::ScalarType acc) {
  if (t.has_value() && t->defined()) return t->to(acc).contiguous();
  return at::full({n}, fill, at::TensorOptions().dtype(acc));
}

void gemm_rowmajor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float* C, int64_t ldc, float beta) {
  if (!sgemm_) {  // ATen's mm on the same memory
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const auto view = [&](const float* p, int64_t rows, int64_t cols, int64_t ld, bool t) {
      const at::Tensor v = at::from_blob(const_cast<float*>(p), {t ? cols : rows, t ? rows : cols}, {ld, 1}, f32);
      return t ? v.t() : v;
    };
    at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, f32);
    if (beta == 0.f)
      at::mm_out(c, view(A, M, K, lda, ta), view(B, K, N, ldb, tb));
    else
      c.addmm_(view(A, M, K, lda, ta), view(B, K, N, ldb, tb), beta, 1.0);
    return;
  }
  const int m = int(N), n = int(M), k = int(K), la = int(ldb), lb = int(lda), lc = int(ldc);
  const float one = 1.f;
  const char tA = tb ? 'T' : 'N', tB = ta ? 'T' : 'N';
  sgemm_(&tA, &tB, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
}

void pwconv_epilogue_cl_f32(const float* z, int64_t ldz, const float* res, float* y, int64_t rows, int64_t OC,
                            const float* scale, const float* shift, Act act) {
  epi_cl_f32(z, ldz, res, y, rows, Epi<float>{scale, shift, OC, 1, OC, act}, nullptr);
}

void pwconv_epilogue_nchw_f32(const float* z, int64_t ldz, float* y, int64_t ld, int64_t cols, int64_t OC,
                              const float* scale, const float* shift, Act act) {
  epi_nchw_f32(z, ldz, nullptr, y, ld, cols, Epi<float>{scale, shift, OC, 1, OC, act});
}

// The forward into y ([N, OC, H, W], dense in the layout of output_channels_last(x)), arguments
// already checked (csrc/cpu/kernels.h).
void pwconv_forward_into(const at::Tensor& x_, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, const PwShape& s, Act a,
                         const c10::optional<at::Tensor>& residual, at::Tensor& y) {
  const int64_t groups = s.groups;
  // y's layout decides (the op's: output_channels_last of its x; separable's step path passes
  // its depthwise result, which with one channel is dense in both layouts whichever y has)
  const bool cl = y.is_contiguous(at::MemoryFormat::ChannelsLast) && !y.is_contiguous();
  const at::Tensor x = x_.contiguous(layout_of(cl));
  if (y.numel() == 0) return;
  const bool has_res = residual.has_value() && residual->defined();
  const at::Tensor res = has_res ? residual->contiguous(layout_of(cl)) : at::Tensor();
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor sc = param_vector(scale, s.OC, 1.0, acc), sh = param_vector(shift, s.OC, 0.0, acc);
  const int64_t G = s.shuffle, HW = s.H * s.W;
  dispatch_storage("pwconv_bn_act", x.scalar_type(), [&](auto tag) {
    using E = decltype(tag);
    using T = Acc<E>;
    const Epi<T> e{sc.data_ptr<T>(), sh.data_ptr<T>(), s.OC, G, s.OC / G, a};
    const E* rp = has_res ? reinterpret_cast<const E*>(res.data_ptr()) : nullptr;
    E* yp = reinterpret_cast<E*>(y.data_ptr());
    if constexpr (std::is_same_v<E, float>) {
      // channels_last with no more outputs than inputs: oneDNN's whole-tensor 1x1 conv beats
      // sgemm on tiles (skinny [pixels, OC] products), and its result is the smaller tensor, so
      // the epilogue's extra pass over it is cheap (measured: 144->24, 240->60 g3, 128->128,
      // 512->512 ran 5-20% faster that way; 24->144, 60->240 g3 and every NCHW case slower)
      const bool tiles = !(cl && s.OC <= s.C);
      if (sgemm_ && tiles && s.C < kIntLimit && s.OC < kIntLimit) {
        forward_tiled(x, weight.contiguous(), rp, yp, s, cl, e);
        return;
      }
    }
    const at::Tensor z = conv_z(x, weight, groups, cl, acc);
    const T* zp = z.data_ptr<T>();
    if (cl) {
      at::parallel_for(0, s.N * HW, std::max<int64_t>(1, kPointwiseGrain / s.OC), [&](int64_t b, int64_t end) {
        std::vector<T> buf(s.OC);
        epi_cl<E>(zp + b * s.OC, s.OC, rp ? rp + b * s.OC : nullptr, yp + b * s.OC, end - b, e, buf.data());
      });
    } else {
      at::parallel_for(0, s.N, 1, [&](int64_t b, int64_t end) {
        for (int64_t n = b; n < end; ++n)
          epi_nchw<E>(zp + n * s.OC * HW, HW, rp ? rp + n * s.OC * HW : nullptr, yp + n * s.OC * HW, HW, HW, e);
      });
    }
  });
}

at::Tensor param_grad(const at::Tensor& t, const c10::optional<at::Tensor>& p, const at::Tensor& x) {
  return t.to(p.has_value() && p->defined() ? p->scalar_type() : x.scalar_type());
}

at::Tensor param_grad(const std::vector<double>& v, const c10::optional<at::Tensor>& p, const at::Tensor& x) {
  at::Tensor t = at::empty({int64_t(v.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), t.mutable_data_ptr<double>());
  return param_grad(t, p, x);
}

std::pair<at::Tensor, at::Tensor> plain_conv_affine_sums(const at::Tensor& w, const at::Tensor& grad_w,
                                                         const at::Tensor& g) {
  const int64_t OC = w.size(0);
  const at::Tensor sum_gz = w.to(at::kDouble).reshape({OC, -1}).mul(grad_w.to(at::kDouble).reshape({OC, -1})).sum(1);
  return {sum_gz, g.sum({0, 2, 3}).to(at::kDouble)};  // (asking ATen for double sums converted g first)
}

namespace {

// channels_last float32, ungrouped or with no more outputs than inputs (with a residual:
// activation none or ReLU, the post-ops oneDNN fuses after an add): oneDNN's 1x1 convolution with
// the affine folded into its weights and bias and the residual add and activation as post-ops,
// the call torch.compile with freezing makes (mkldnn::_convolution_pointwise); a shuffle is then
// done in place, on L1-sized blocks of pixels. Against the tiled sgemm path (the op, N=8, inputs
// from memory, interleaved): 24 -> 144 + ReLU6 at 56x56 1.35x, 144 -> 24 + x 1.06x, 128 -> 128 +
// ReLU6 1.31x; grouped 60 -> 240 g3 + x + ReLU 0.90x, so grouped convs with more outputs stay
// tiled. Against ATen's conv + a separate epilogue, 240 -> 60 g3 + ReLU + shuffle: 0.83 -> 0.72 ms.
// Empty where that does not apply or this torch has no oneDNN.
c10::optional<at::Tensor> onednn_pointwise(const at::Tensor& x, const at::Tensor& weight,
                                           const c10::optional<at::Tensor>& scale,
                                           const c10::optional<at::Tensor>& shift, const PwShape& s, Act a,
                                           const c10::optional<at::Tensor>& residual) {
  const bool has_res = residual.has_value() && residual->defined();
  if (!output_channels_last(x) || x.scalar_type() != at::kFloat || (s.groups != 1 && s.OC > s.C) ||
      s.N * s.H * s.W == 0 || (has_res && a != Act::None && a != Act::ReLU) || !at::hasMKLDNN() ||
      !at::globalContext().userEnabledMkldnn())
    return c10::nullopt;
  static const auto unary = c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", ""});
  static const auto binary = c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", "binary"});
  const auto& handle = has_res ? binary : unary;
  if (!handle.has_value()) return c10::nullopt;
  static const char* const attrs[] = {"none", "relu", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "swish"};
  at::Tensor w = weight.to(at::kFloat);
  if (scale.has_value() && scale->defined()) w = w.mul(scale->to(at::kFloat).view({-1, 1, 1, 1}));
  const c10::IValue bias = shift.has_value() && shift->defined() ? c10::IValue(shift->to(at::kFloat).contiguous())
                                                                 : c10::IValue();
  const std::vector<int64_t> zero{0, 0}, one{1, 1};
  c10::List<c10::optional<at::Scalar>> scalars;
  if (a == Act::ReLU6) scalars = c10::List<c10::optional<at::Scalar>>({at::Scalar(0.0), at::Scalar(6.0)});
  torch::jit::Stack stack{x.contiguous(at::MemoryFormat::ChannelsLast)};
  if (has_res) stack.emplace_back(residual->to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast));
  stack.insert(stack.end(), {w.contiguous(), bias, zero, one, one, s.groups});
  if (has_res)  // binary_attr, alpha, unary_attr, unary_scalars, unary_algorithm
    stack.insert(stack.end(), {"add", at::Scalar(1.0), a == Act::ReLU ? c10::IValue("relu") : c10::IValue(),
                               c10::List<c10::optional<at::Scalar>>(), c10::IValue()});
  else  // attr, scalars, algorithm
    stack.insert(stack.end(), {attrs[int(a)], scalars, c10::IValue()});
  handle->callBoxed(&stack);
  // channels_last like x (oneDNN answers in NCHW for an x of width 1 whose last stride is 1)
  at::Tensor y = stack.back().toTensor().contiguous(at::MemoryFormat::ChannelsLast);
  if (s.shuffle > 1) shuffle_pixels_inplace_f32(y.data_ptr<float>(), s.N * s.H * s.W, s.shuffle, s.OC / s.shuffle);
  return y;
}

at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, int64_t groups, c10::string_view act,
                         const c10::optional<at::Tensor>& residual, int64_t shuffle_groups) {
  const char* op = "pwconv_bn_act";
  const PwShape s = check_pwconv(op, x, weight, scale, shift, groups, residual, shuffle_groups);
  const Act a = parse_act(op, act);
  if (auto y = onednn_pointwise(x, weight, scale, shift, s, a, residual)) return *y;
  at::Tensor y = at::empty({s.N, s.OC, s.H, s.W}, x.options(), layout_of(output_channels_last(x)));
  pwconv_forward_into(x, weight, scale, shift, s, a, residual, y);
  return y;
}

// The backward's fused pass, along one run of n values that share a layout: z, res, gr, gz at
// stride 1, g (already at the conv channel's position) at stride 1; per-element parameters
// sc / sh (channels_last: the run is a pixel's channels) or one value broadcast (NCHW: the run
// is part of a plane, sc_step = 0). gu = act'(u) * g, u = z * sc + sh (+ res); writes gr = gu
// (when there is a residual: gr is null without one), gz = gu * sc and adds gu, gu * z into the
// float accumulators a1, a2 (same stepping as sc).
template <Act A, typename E, typename T>
FASTOPS_CPU_INLINE void backward_run_act(const T* z, const E* g, const E* res, E* gr, T* gz, int64_t n, const T* sc,
                                         const T* sh, int64_t step, T* a1, T* a2) {
  int64_t i = 0;
  if constexpr (kSimd<E> && std::is_same_v<T, float>) {
    f32x16 s1 = f32x16{}, s2 = f32x16{};
    for (; i + L <= n; i += L) {
      const f32x16 scv = step ? load16(sc + i) : f32x16{} + sc[0];
      const f32x16 shv = step ? load16(sh + i) : f32x16{} + sh[0];
      const f32x16 zv = load16(z + i);
      f32x16 u = zv * scv + shv;
      if (res) u += load16(res + i);
      const f32x16 gu = act_bwd<A>(load16(g + i), u);
      if (gr) store16(gr + i, gu);
      store16(gz + i, gu * scv);
      if (step) {
        store16(a1 + i, load16(a1 + i) + gu);
        store16(a2 + i, load16(a2 + i) + gu * zv);
      } else {
        s1 += gu, s2 += gu * zv;
      }
    }
    if (!step)
      for (int l = 0; l < L; ++l) a1[0] += s1[l], a2[0] += s2[l];
  }
  for (; i < n; ++i) {
    const T c = sc[step ? i : 0], b = sh[step ? i : 0];
    const T u = z[i] * c + b + (res ? T(value(res[i])) : T(0));
    const T gu = act_bwd<A>(T(value(g[i])), u);
    if (gr) put(gr + i, gu);
    gz[i] = gu * c;
    a1[step ? i : 0] += gu, a2[step ? i : 0] += gu * z[i];
  }
}

template <typename E, typename T>
FASTOPS_CPU_INLINE void backward_run(Act act, const T* z, const E* g, const E* res, E* gr, T* gz, int64_t n,
                                     const T* sc, const T* sh, int64_t step, T* a1, T* a2) {
#define FASTOPS_RUN(A) backward_run_act<A>(z, g, res, gr, gz, n, sc, sh, step, a1, a2)
  FASTOPS_ACT_CASES(FASTOPS_RUN)
#undef FASTOPS_RUN
}

#define FASTOPS_PW_BWD_ENTRY(E, suffix)                                                                          \
  FASTOPS_CPU_MULTIVERSION void bwd_run_##suffix(Act act, const Acc<E>* z, const E* g, const E* res, E* gr,        \
                                                 Acc<E>* gz, int64_t n, const Acc<E>* sc, const Acc<E>* sh,        \
                                                 int64_t step, Acc<E>* a1, Acc<E>* a2) {                           \
    backward_run(act, z, g, res, gr, gz, n, sc, sh, step, a1, a2);                                               \
  }
FASTOPS_PW_BWD_ENTRY(float, f32)
FASTOPS_PW_BWD_ENTRY(uint16_t, bf16)
FASTOPS_PW_BWD_ENTRY(at::Half, f16)
FASTOPS_PW_BWD_ENTRY(double, f64)
#undef FASTOPS_PW_BWD_ENTRY

template <typename E>
void bwd_run(Act act, const Acc<E>* z, const E* g, const E* res, E* gr, Acc<E>* gz, int64_t n, const Acc<E>* sc,
             const Acc<E>* sh, int64_t step, Acc<E>* a1, Acc<E>* a2) {
  if constexpr (std::is_same_v<E, float>) bwd_run_f32(act, z, g, res, gr, gz, n, sc, sh, step, a1, a2);
  else if constexpr (std::is_same_v<E, uint16_t>) bwd_run_bf16(act, z, g, res, gr, gz, n, sc, sh, step, a1, a2);
  else if constexpr (std::is_same_v<E, at::Half>) bwd_run_f16(act, z, g, res, gr, gz, n, sc, sh, step, a1, a2);
  else bwd_run_f64(act, z, g, res, gr, gz, n, sc, sh, step, a1, a2);
}

constexpr int64_t kSumChunk = 256;  // values per accumulator summed in the accumulation type, then in double

// The fused pass along one NCHW run of `len` values of conv channel o (z, res, gr and gz at the
// run's start, g at the same place in the plane of o's shuffled position): adds the run's sums
// of gu and gu * z into d1 and d2, kSumChunk vectors at a time in the accumulation type.
template <typename E, typename T>
void pass_plane_run(const T* z, const E* g, const E* res, E* gr, T* gz, int64_t len, const Epi<T>& e, int64_t o,
                    double& d1, double& d2) {
  for (int64_t j = 0; j < len; j += kSumChunk * L) {
    const int64_t n = std::min(len - j, kSumChunk * L);
    T a1 = 0, a2 = 0;
    bwd_run<E>(e.act, z + j, g + j, res ? res + j : nullptr, gr ? gr + j : nullptr, gz + j, n, e.scale + o,
               e.shift + o, 0, &a1, &a2);
    d1 += a1, d2 += a2;
  }
}

// The fused pass over `rows` channels_last pixels (rows of OC values from z, g, res, gr and gz
// on), each shuffled g row first gathered into conv-channel order (dest[o]: conv channel o's
// output channel; grow: OC values of scratch): adds the per-channel sums of gu and gu * z into
// d1 and d2 [OC], kSumChunk pixels at a time in the accumulation type (a1, a2: OC values of
// scratch).
template <typename E, typename T>
void pass_pixel_rows(const T* z, const E* g, const E* res, E* gr, T* gz, int64_t rows, const Epi<T>& e,
                     const int64_t* dest, E* grow, T* a1, T* a2, double* d1, double* d2) {
  const int64_t OC = e.OC;
  for (int64_t q0 = 0; q0 < rows; q0 += kSumChunk) {
    std::fill(a1, a1 + OC, T(0));
    std::fill(a2, a2 + OC, T(0));
    for (int64_t q = q0; q < std::min(rows, q0 + kSumChunk); ++q) {
      const E* gq = g + q * OC;
      if (e.G > 1) {
        for (int64_t o = 0; o < OC; ++o) grow[o] = gq[dest[o]];
        gq = grow;
      }
      bwd_run<E>(e.act, z + q * OC, gq, res ? res + q * OC : nullptr, gr ? gr + q * OC : nullptr, gz + q * OC, OC,
                 e.scale, e.shift, 1, a1, a2);
    }
    for (int64_t o = 0; o < OC; ++o) d1[o] += a1[o], d2[o] += a2[o];
  }
}

// The backward's fused pass over all (pixel, conv channel) pairs: from z, g (shuffled) and the
// residual, gu = act'(u) * g, gr = gu, gz = gu * scale; per-channel sums of gu and gu * z.
// NCHW: channels in parallel, each along its N planes (g's plane of the channel's shuffled
// position). channels_last: chunks of pixels in parallel, each with per-channel partial sums
// merged in order; a shuffled g row is first gathered into conv-channel order.
template <typename E, typename T>
void backward_pass(const T* z, const E* g, const E* res, E* gr, T* gz, const PwShape& s, bool cl, const Epi<T>& e,
                   double* sum_gu, double* sum_guz) {
  const int64_t OC = s.OC, HW = s.H * s.W, P = s.N * HW;
  std::vector<int64_t> dest(OC);
  for (int64_t o = 0; o < OC; ++o) dest[o] = e.dest(o);
  if (!cl) {
    at::parallel_for(0, OC, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        double d1 = 0, d2 = 0;
        for (int64_t n = 0; n < s.N; ++n) {
          const int64_t zi = (n * OC + o) * HW;
          pass_plane_run<E>(z + zi, g + (n * OC + dest[o]) * HW, res ? res + zi : nullptr, gr ? gr + zi : nullptr,
                            gz + zi, HW, e, o, d1, d2);
        }
        sum_gu[o] = d1, sum_guz[o] = d2;
      }
    });
    return;
  }
  const int64_t rows = std::max<int64_t>(kSumChunk, kPointwiseGrain / OC), chunks = (P + rows - 1) / rows;
  std::vector<double> part(2 * chunks * OC, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t end) {
    std::vector<T> a1(OC), a2(OC);
    std::vector<E> grow(OC);
    for (int64_t t = b; t < end; ++t) {
      double* d1 = part.data() + 2 * t * OC;
      const int64_t p0 = t * rows, p = p0 * OC;
      pass_pixel_rows<E>(z + p, g + p, res ? res + p : nullptr, gr ? gr + p : nullptr, gz + p,
                         std::min(P, p0 + rows) - p0, e, dest.data(), grow.data(), a1.data(), a2.data(), d1, d1 + OC);
    }
  });
  for (int64_t t = 0; t < chunks; ++t)
    for (int64_t o = 0; o < OC; ++o) sum_gu[o] += part[2 * t * OC + o], sum_guz[o] += part[(2 * t + 1) * OC + o];
}

// grad_x and grad_weight of an ungrouped 1x1 convolution from gz (float / double, laid out as x)
// as GEMMs: channels_last, [pixels, C] and [pixels, OC] matrices, grad_x = gz @ W and grad_w =
// gz^T @ x; NCHW, per image grad_x[n] = W^T @ gz[n] and grad_w += gz[n] @ x[n]^T. ATen's
// convolution_backward (oneDNN) took 2x as long in NCHW (MobileNet V1's 128 -> 128 at 56x56).
std::tuple<at::Tensor, at::Tensor> conv1x1_grads(const at::Tensor& gz, const at::Tensor& x, const at::Tensor& weight,
                                                 const PwShape& s, bool cl) {
  const at::Tensor w = weight.to(gz.scalar_type()).reshape({s.OC, s.C});
  const int64_t HW = s.H * s.W;
  at::Tensor gx, gw;
  if (cl) {
    const at::Tensor x2 = x.permute({0, 2, 3, 1}).reshape({-1, s.C}), g2 = gz.permute({0, 2, 3, 1}).reshape({-1, s.OC});
    gx = at::mm(g2, w).view({s.N, s.H, s.W, s.C}).permute({0, 3, 1, 2});
    gw = at::mm(g2.t(), x2);
  } else {  // image by image into the outputs (matmul / bmm copied the operands: 16 ms there)
    const at::Tensor x3 = x.reshape({s.N, s.C, HW}), g3 = gz.reshape({s.N, s.OC, HW}), wt = w.t();
    gx = at::empty({s.N, s.C, HW}, gz.options());
    gw = at::zeros({s.OC, s.C}, gz.options());
    for (int64_t n = 0; n < s.N; ++n) {
      at::Tensor gxn = gx.select(0, n);
      at::mm_out(gxn, wt, g3.select(0, n));
      gw.addmm_(g3.select(0, n), x3.select(0, n).t());
    }
    gx = gx.view({s.N, s.C, s.H, s.W});
  }
  return {gx.to(x.scalar_type()), gw.reshape(weight.sizes()).to(weight.scalar_type())};
}

// float32, ungrouped, with sgemm: the whole backward in tiles of pixels, each tile's z (one
// GEMM), fused pass (gu, gz, grad_residual, the sums) and GEMMs for grad_x and grad_weight run
// while the tile is in cache, so neither z nor gz is written to memory (the recomputed z took
// oneDNN's whole-tensor conv, gz another tensor written and read twice). The backward op alone,
// N=8, separate processes alternated, medians (ms), tiles against the whole-tensor path:
// 144 -> 24 + residual at 56x56 3.9-4.4 / 4.3-4.5 channels_last, 4.1-4.2 / 5.2-5.5 NCHW;
// 24 -> 144 + ReLU6 3.8-4.3 / 5.0-5.2, 3.7-4.2 / 6.0-6.8; 128 -> 128 11.2-11.8 / 12.4-13.2,
// 12.1-12.2 / 14.1-15.3; 512 -> 512 at 14x14 9.0-9.7 / 9.3-9.5; 728 -> 728 at 19x19 NCHW
// 34.5-35.4 / 35.2-36.6. The tiles are dealt to at most `threads` parts in order; each part
// keeps its own grad_weight ([OC, C], sgemm with beta 1) and double sums, added in part order
// after.
//   channels_last: tile = Pt pixels, z = x_t W^T [Pt, OC], gx_t = gz W, gw += gz^T x_t;
//   NCHW: tile = HWt columns of one image, z = W x_t [OC, HWt], gx_t = W^T gz, gw += gz x_t^T.
// The tiles of pixels the tiled backwards walk (cl: `tile` pixels of [pixels, C]; NCHW: `tile`
// columns of one image), dealt to at most `threads` parts in order; each part keeps its own
// grad_weight ([OC, C], the GEMMs add into it with beta 1 after the part's first tile), and the
// parts are added in part order after. body(part, t0, t1, gw_part) runs tiles [t0, t1) of a part.
struct Tiles {
  int64_t tile, per_image, count, parts;
  Tiles(const PwShape& s, bool cl, int64_t per_pixel_floats)
      : tile(even_tile(per_pixel_floats, cl ? s.N * s.H * s.W : s.H * s.W)),
        per_image(cl ? 0 : (s.H * s.W + tile - 1) / tile),
        count(cl ? (s.N * s.H * s.W + tile - 1) / tile : s.N * per_image),
        parts(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count))) {}
};

template <typename Body>
at::Tensor over_tile_parts(const Tiles& tiles, const PwShape& s, const at::Tensor& weight, Body body) {
  const int64_t OC = s.OC, C = s.C, parts = tiles.parts;
  std::vector<float> gw_parts(parts * OC * C);
  at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
    for (int64_t part = part_begin; part < part_end; ++part)
      body(part, tiles.count * part / parts, tiles.count * (part + 1) / parts, gw_parts.data() + part * OC * C);
  });
  at::Tensor gw = at::empty({OC, C, 1, 1}, weight.options().dtype(at::kFloat));
  float* gwp = gw.mutable_data_ptr<float>();
  std::copy(gw_parts.begin(), gw_parts.begin() + OC * C, gwp);
  for (int64_t part = 1; part < parts; ++part)
    for (int64_t i = 0; i < OC * C; ++i) gwp[i] += gw_parts[part * OC * C + i];
  return gw;
}

std::tuple<at::Tensor, at::Tensor> tiled_backward_f32(const at::Tensor& x, const at::Tensor& g, const float* res,
                                                      const at::Tensor& weight, const PwShape& s, bool cl,
                                                      const Epi<float>& e, at::Tensor& gr, double* sum_gu,
                                                      double* sum_guz) {
  const int64_t C = s.C, OC = s.OC, HW = s.H * s.W, P = s.N * HW;
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const float *xp = x.const_data_ptr<float>(), *gp = g.const_data_ptr<float>(), *wp = w.const_data_ptr<float>();
  float* grp = res != nullptr ? gr.mutable_data_ptr<float>() : nullptr;  // no grad_residual without a residual
  at::Tensor gx = at::empty({s.N, C, s.H, s.W}, x.options(), layout_of(cl));
  float* gxp = gx.mutable_data_ptr<float>();
  const Tiles tiles(s, cl, C + 2 * OC);  // x_t, z and gz in kTileBytes
  const int64_t tile = tiles.tile, per_image = tiles.per_image, parts = tiles.parts;
  std::vector<double> sum_parts(2 * parts * OC, 0.0);
  std::vector<int64_t> dest(OC);
  for (int64_t o = 0; o < OC; ++o) dest[o] = e.dest(o);
  at::Tensor gw = over_tile_parts(tiles, s, weight, [&](int64_t part, int64_t t0, int64_t t1, float* gw_part) {
    std::vector<float> z(tile * OC), gz(tile * OC), grow(OC), a1(OC), a2(OC);
    double* d1 = sum_parts.data() + 2 * part * OC;
    double* d2 = d1 + OC;
    for (int64_t t = t0; t < t1; ++t) {
      const float beta = t == t0 ? 0.f : 1.f;
      if (cl) {
        const int64_t p0 = t * tile, rows = std::min(tile, P - p0);
        const float* xt = xp + p0 * C;
        gemm_rowmajor(false, true, rows, OC, C, xt, C, wp, C, z.data(), OC);
        pass_pixel_rows<float>(z.data(), gp + p0 * OC, res ? res + p0 * OC : nullptr, grp ? grp + p0 * OC : nullptr,
                               gz.data(), rows, e, dest.data(), grow.data(), a1.data(), a2.data(), d1, d2);
        gemm_rowmajor(false, false, rows, C, OC, gz.data(), OC, wp, C, gxp + p0 * C, C);
        gemm_rowmajor(true, false, OC, C, rows, gz.data(), OC, xt, C, gw_part, C, beta);
      } else {
        const int64_t n = t / per_image, j0 = (t % per_image) * tile, cols = std::min(tile, HW - j0);
        const float* xt = xp + n * C * HW + j0;
        gemm_rowmajor(false, false, OC, cols, C, wp, C, xt, HW, z.data(), cols);
        for (int64_t o = 0; o < OC; ++o) {
          const int64_t row = (n * OC + o) * HW + j0;
          pass_plane_run<float>(z.data() + o * cols, gp + (n * OC + dest[o]) * HW + j0, res ? res + row : nullptr,
                                grp ? grp + row : nullptr, gz.data() + o * cols, cols, e, o, d1[o], d2[o]);
        }
        gemm_rowmajor(true, false, C, cols, OC, wp, C, gz.data(), cols, gxp + n * C * HW + j0, HW);
        gemm_rowmajor(false, true, OC, C, cols, gz.data(), cols, xt, HW, gw_part, C, beta);
      }
    }
  });
  for (int64_t part = 0; part < parts; ++part)
    for (int64_t o = 0; o < OC; ++o)
      sum_gu[o] += sum_parts[2 * part * OC + o], sum_guz[o] += sum_parts[(2 * part + 1) * OC + o];
  return {gx, gw.to(weight.scalar_type())};
}

// The plain convolution's gradients, float32, ungrouped, by the same tiles: grad_x_t and the
// part's grad_weight from each tile of g while it is in cache (per-image GEMMs over whole
// images, conv1x1_grads, read g twice from memory and ran each GEMM on both threads).
std::tuple<at::Tensor, at::Tensor> tiled_plain_grads_f32(const at::Tensor& g, const at::Tensor& x,
                                                         const at::Tensor& weight, const PwShape& s, bool cl) {
  const int64_t C = s.C, OC = s.OC, HW = s.H * s.W, P = s.N * HW;
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const float *xp = x.const_data_ptr<float>(), *gp = g.const_data_ptr<float>(), *wp = w.const_data_ptr<float>();
  at::Tensor gx = at::empty({s.N, C, s.H, s.W}, x.options(), layout_of(cl));
  float* gxp = gx.mutable_data_ptr<float>();
  const Tiles tiles(s, cl, 2 * C + OC);  // x_t, g_t and gx_t in kTileBytes
  const int64_t tile = tiles.tile, per_image = tiles.per_image;
  at::Tensor gw = over_tile_parts(tiles, s, weight, [&](int64_t part, int64_t t0, int64_t t1, float* gw_part) {
    for (int64_t t = t0; t < t1; ++t) {
      const float beta = t == t0 ? 0.f : 1.f;
      if (cl) {
        const int64_t p0 = t * tile, rows = std::min(tile, P - p0);
        const float *xt = xp + p0 * C, *gt = gp + p0 * OC;
        gemm_rowmajor(false, false, rows, C, OC, gt, OC, wp, C, gxp + p0 * C, C);
        gemm_rowmajor(true, false, OC, C, rows, gt, OC, xt, C, gw_part, C, beta);
      } else {
        const int64_t n = t / per_image, j0 = (t % per_image) * tile, cols = std::min(tile, HW - j0);
        const float *xt = xp + n * C * HW + j0, *gt = gp + n * OC * HW + j0;
        gemm_rowmajor(true, false, C, cols, OC, wp, C, gt, HW, gxp + n * C * HW + j0, HW);
        gemm_rowmajor(false, true, OC, C, cols, gt, HW, xt, HW, gw_part, C, beta);
      }
    }
  });
  return {gx, gw.to(weight.scalar_type())};
}

// grad_x and grad_weight of the plain 1x1 convolution from g = grad_out (x and g dense in the
// layout cl): GEMMs for ungrouped float32 / float64, ATen's convolution_backward otherwise.
std::tuple<at::Tensor, at::Tensor> plain_grads(const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
                                               const PwShape& s, bool cl) {
  at::Tensor gx, gw;
  // float32 on maps of 28x28 or more: by tiles (tiled_plain_grads_f32). N=8, ms, medians of 35
  // calls in separate processes, tiles / per image: NCHW 128 -> 128 at 56x56 7.1-7.4 / 7.8-8.0,
  // 24 -> 144 2.7-2.8 / 3.2-3.4, 32 -> 64 at 112x112 4.3-4.7 / 7.5-8.1, 256 -> 256 at 28x28
  // 6.0-6.4 / 6.3; channels_last 128 -> 128 6.3-6.4 / 7.5, 144 -> 24 1.9-2.1 / 2.3-2.9. On
  // smaller maps the whole-tensor GEMMs: 512 at 14x14 6.4-6.5 either way, 960 -> 160 at 7x7
  // channels_last 1.25 / 0.88.
  if (s.groups == 1 && x.scalar_type() == at::kFloat && sgemm_ && s.N > 0 && s.H * s.W >= 28 * 28 &&
      s.C < kIntLimit && s.OC < kIntLimit && s.H * s.W < kIntLimit)
    std::tie(gx, gw) = tiled_plain_grads_f32(g, x, weight, s, cl);
  else if (s.groups == 1 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble))
    std::tie(gx, gw) = conv1x1_grads(g, x, weight, s, cl);
  else
    std::tie(gx, gw, std::ignore) = at::convolution_backward(g, x, weight, c10::nullopt, {1, 1}, {0, 0}, {1, 1}, false,
                                                             {0, 0}, s.groups, {true, true, false});
  return {gx.contiguous(layout_of(cl)), gw.contiguous()};
}

// The plain convolution's backward alone (pwconv_backward in csrc/fastops.cpp): no sums, no
// copy of grad_out as the residual's gradient (MobileNet V1's 128 -> 128 at 56x56, NCHW: 1 ms a
// training step of a DepthwiseSeparable block).
std::tuple<at::Tensor, at::Tensor> pwconv_backward(const at::Tensor& grad_out, const at::Tensor& x_,
                                                   const at::Tensor& weight, int64_t groups) {
  const char* op = "pwconv_backward";
  const PwShape s = check_pwconv(op, x_, weight, c10::nullopt, c10::nullopt, groups, c10::nullopt, 1);
  check_pwconv_grad_out(op, grad_out, x_, s);
  const bool cl = output_channels_last(x_);
  return plain_grads(grad_out.contiguous(layout_of(cl)), x_.contiguous(layout_of(cl)), weight, s, cl);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pwconv_bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& x_, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& shift, int64_t groups, c10::string_view act,
    const c10::optional<at::Tensor>& residual, int64_t shuffle_groups) {
  const char* op = "pwconv_bn_act_backward";
  const PwShape s = check_pwconv(op, x_, weight, scale, shift, groups, residual, shuffle_groups);
  check_pwconv_grad_out(op, grad_out, x_, s);
  const Act a = parse_act(op, act);
  const bool cl = output_channels_last(x_);
  const at::Tensor x = x_.contiguous(layout_of(cl)), g = grad_out.contiguous(layout_of(cl));
  const bool has_res = residual.has_value() && residual->defined();
  const at::Tensor res = has_res ? residual->contiguous(layout_of(cl)) : at::Tensor();
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool gemm_grads = groups == 1 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
  const at::Tensor sc = param_vector(scale, s.OC, 1.0, acc), sh = param_vector(shift, s.OC, 0.0, acc);
  // No activation and no shuffle (the plain convolution; MobileNet's projections, 144 -> 24 +
  // residual): gu = grad_out, so neither the recomputed z nor the fused pass is needed:
  // grad_x = (scale * W)^T g, grad_weight = scale * G with G = g x^T, grad_scale[o] = sum_p g z
  // = sum_k W[o, k] G[o, k], grad_shift = sum g, grad_residual = g. The op alone, N=8, float32,
  // medians of 40 calls in separate processes, ms, this / the tiles below: 144 -> 24 + residual
  // at 56x56 2.35-2.64 / 3.69-4.27 channels_last, 2.70-2.94 / 3.89-4.32 NCHW; 128 -> 128 at 56x56
  // 7.9 / 10.2-10.6 and 8.3-8.7 / 10.9-12.1; 960 -> 160 at 7x7 1.2 / 1.9 channels_last; 576 -> 96
  // at 14x14 1.75-1.79 / 2.13-2.23 NCHW.
  if (gemm_grads && a == Act::None && s.shuffle == 1) {
    const auto [gx, G] = plain_grads(g, x, weight.to(acc).mul(sc.view({-1, 1, 1, 1})), s, cl);  // G: weight-free
    const auto [sum_gz, sum_g] = plain_conv_affine_sums(weight, G, g);
    const at::Tensor gw = G.to(acc).mul(sc.view({-1, 1, 1, 1})).to(weight.scalar_type());
    return {gx, gw, param_grad(sum_gz, scale, x), param_grad(sum_g, shift, x),
            has_res ? g.clone(layout_of(cl)) : no_grad_residual(x)};
  }
  if (x.scalar_type() == at::kFloat && groups == 1 && sgemm_ && s.N * s.H * s.W > 0 && s.C < kIntLimit &&
      s.OC < kIntLimit && s.H * s.W < kIntLimit) {
    at::Tensor gr = has_res ? at::empty({s.N, s.OC, s.H, s.W}, x.options(), layout_of(cl)) : no_grad_residual(x);
    std::vector<double> sum_gu(s.OC, 0.0), sum_guz(s.OC, 0.0);
    const Epi<float> e{sc.data_ptr<float>(), sh.data_ptr<float>(), s.OC, s.shuffle, s.OC / s.shuffle, a};
    const auto [gx, gw] = tiled_backward_f32(x, g, has_res ? res.const_data_ptr<float>() : nullptr, weight, s, cl, e,
                                             gr, sum_gu.data(), sum_guz.data());
    return {gx, gw, param_grad(sum_guz, scale, x), param_grad(sum_gu, shift, x), gr};
  }
  const at::Tensor z = conv_z(x, weight, groups, cl, acc);
  at::Tensor gr = has_res ? at::empty({s.N, s.OC, s.H, s.W}, x.options(), layout_of(cl)) : no_grad_residual(x);
  at::Tensor gz = at::empty_like(z);
  std::vector<double> sum_gu(s.OC, 0.0), sum_guz(s.OC, 0.0);
  dispatch_storage(op, x.scalar_type(), [&](auto tag) {
    using E = decltype(tag);
    using T = Acc<E>;
    const Epi<T> e{sc.data_ptr<T>(), sh.data_ptr<T>(), s.OC, s.shuffle, s.OC / s.shuffle, a};
    const E* rp = has_res ? reinterpret_cast<const E*>(res.data_ptr()) : nullptr;
    backward_pass<E, T>(z.data_ptr<T>(), reinterpret_cast<const E*>(g.data_ptr()), rp,
                        has_res ? reinterpret_cast<E*>(gr.data_ptr()) : nullptr, gz.data_ptr<T>(), s, cl, e,
                        sum_gu.data(), sum_guz.data());
  });
  at::Tensor gx, gw;
  if (gemm_grads) {
    std::tie(gx, gw) = conv1x1_grads(gz, x, weight, s, cl);
  } else {
    std::tie(gx, gw, std::ignore) =
        at::convolution_backward(gz.to(x.scalar_type()), x, weight, c10::nullopt, {1, 1}, {0, 0}, {1, 1}, false,
                                 {0, 0}, groups, {true, true, false});
  }
  return {gx.contiguous(layout_of(cl)), gw.contiguous(), param_grad(sum_guz, scale, x), param_grad(sum_gu, shift, x),
          gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("pwconv_bn_act", &pwconv_bn_act);
  m.impl("pwconv_bn_act_backward", &pwconv_bn_act_backward);
  m.impl("pwconv_backward", &pwconv_backward);
}

}  // namespace cpu
}  // namespace fastops
