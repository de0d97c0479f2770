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
// Other dtypes (float64 for gradcheck, bfloat16, float16), or no BLAS: ATen's convolution, then
// the same epilogue over the whole tensor.
// Backward: z recomputed by ATen's convolution; one fused pass gives gu = act'(u) * g (g read at
// its shuffled position), grad_residual = gu, gz = gu * scale and the per-channel sums of gu and
// gu * z; then ATen's convolution_backward of gz gives grad_x and grad_weight.
#include <ATen/Parallel.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../pwconv.h"
#include "kernels.h"
#include "simd.h"

// Fortran BLAS sgemm, exported by libtorch_cpu when it links MKL or OpenBLAS. Weak, so that a
// torch without it still loads fastops (the forward then takes the ATen path).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace fastops {
namespace cpu {
namespace {

constexpr int L = kLanes;

FASTOPS_CPU_INLINE float value(float v) { return v; }
FASTOPS_CPU_INLINE float value(uint16_t v) { return widen(v); }
FASTOPS_CPU_INLINE float value(at::Half v) { return float(v); }
FASTOPS_CPU_INLINE double value(double v) { return v; }
FASTOPS_CPU_INLINE void put(float* p, float v) { *p = v; }
FASTOPS_CPU_INLINE void put(uint16_t* p, float v) { narrow(p, v); }
FASTOPS_CPU_INLINE void put(at::Half* p, float v) { *p = at::Half(v); }
FASTOPS_CPU_INLINE void put(double* p, double v) { *p = v; }

template <typename E>
constexpr bool kSimd = std::is_same_v<E, float> || std::is_same_v<E, uint16_t>;
template <typename E>
using Acc = std::conditional_t<std::is_same_v<E, double>, double, float>;

// Row-major C[M, N] = A[M, K] @ B[K, N] (transposes as flagged) with sgemm (column-major).
void gemm_rowmajor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float* C, int64_t ldc) {
  const int m = int(N), n = int(M), k = int(K), la = int(ldb), lb = int(lda), lc = int(ldc);
  const float one = 1.f, zero = 0.f;
  const char tA = tb ? 'T' : 'N', tB = ta ? 'T' : 'N';
  sgemm_(&tA, &tB, &m, &n, &k, &one, B, &la, A, &lb, &zero, C, &lc);
}

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

template <typename F>
void dispatch_storage(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(uint16_t{});
    case at::kHalf: return f(at::Half{});
    case at::kDouble: return f(double{});
    default: TORCH_CHECK_TYPE(false, "fastops.pwconv_bn_act: unsupported dtype ", t);
  }
}

at::MemoryFormat layout_of(bool cl) { return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous; }

// scale / shift as contiguous vectors of the accumulation type (1 / 0 where not given).
at::Tensor param(const c10::optional<at::Tensor>& t, int64_t n, double fill, at::ScalarType acc) {
  if (t.has_value() && t->defined()) return t->to(acc).contiguous();
  return at::full({n}, fill, at::TensorOptions().dtype(acc));
}

// The 1x1 convolution by ATen, dense in the output layout, in the accumulation type.
at::Tensor conv_z(const at::Tensor& x, const at::Tensor& weight, int64_t groups, bool cl, at::ScalarType acc) {
  return at::convolution(x, weight, c10::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, groups)
      .to(acc)
      .contiguous(layout_of(cl));
}

constexpr int64_t kTileBytes = 512 * 1024;  // input + result of one tile: well inside L2

// float32 with sgemm: tiles of pixels, GEMM + epilogue per tile, tiles in parallel.
void forward_tiled(const at::Tensor& x, const at::Tensor& w, const float* res, float* y, const PwShape& s, bool cl,
                   const Epi<float>& e) {
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const int64_t C = s.C, OC = s.OC, G = s.groups, Cg = s.Cg(), OCg = s.OCg(), HW = s.H * s.W;
  const int64_t tile = std::max<int64_t>(16, kTileBytes / int64_t(sizeof(float) * (C + OC)) / 16 * 16);
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

// The forward into y ([N, OC, H, W], dense in the layout of output_channels_last(x)), arguments
// already checked (csrc/cpu/kernels.h).
void pwconv_forward_into(const at::Tensor& x_, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, const PwShape& s, Act a,
                         const c10::optional<at::Tensor>& residual, at::Tensor& y) {
  const int64_t groups = s.groups;
  const bool cl = output_channels_last(x_);
  const at::Tensor x = x_.contiguous(layout_of(cl));
  if (y.numel() == 0) return;
  const bool has_res = residual.has_value() && residual->defined();
  const at::Tensor res = has_res ? residual->contiguous(layout_of(cl)) : at::Tensor();
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor sc = param(scale, s.OC, 1.0, acc), sh = param(shift, s.OC, 0.0, acc);
  const int64_t G = s.shuffle, HW = s.H * s.W;
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using E = decltype(tag);
    using T = Acc<E>;
    const Epi<T> e{sc.data_ptr<T>(), sh.data_ptr<T>(), s.OC, G, s.OC / G, a};
    const E* rp = has_res ? reinterpret_cast<const E*>(res.data_ptr()) : nullptr;
    E* yp = reinterpret_cast<E*>(y.data_ptr());
    if constexpr (std::is_same_v<E, float>) {
      if (sgemm_ && s.C < (int64_t(1) << 30) && s.OC < (int64_t(1) << 30)) {
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

namespace {

at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, int64_t groups, c10::string_view act,
                         const c10::optional<at::Tensor>& residual, int64_t shuffle_groups) {
  const char* op = "pwconv_bn_act";
  const PwShape s = check_pwconv(op, x, weight, scale, shift, groups, residual, shuffle_groups);
  const Act a = parse_act(op, act);
  at::Tensor y = at::empty({s.N, s.OC, s.H, s.W}, x.options(), layout_of(output_channels_last(x)));
  pwconv_forward_into(x, weight, scale, shift, s, a, residual, y);
  return y;
}

// The backward's fused pass over all (pixel, conv channel) pairs: from z, g (shuffled) and the
// residual, gu = act'(u) * g, gr = gu, gz = gu * scale; per-channel sums of gu and gu * z.
// channels_last: chunks of pixels in parallel, each with per-channel partial sums merged in
// order; NCHW: channels in parallel, each along its N planes.
template <Act A, typename E, typename T>
void backward_pass_act(const T* z, const E* g, const E* res, E* gr, T* gz, const PwShape& s, bool cl,
                       const Epi<T>& e, double* sum_gu, double* sum_guz) {
  const int64_t OC = s.OC, HW = s.H * s.W, P = s.N * HW;
  std::vector<int64_t> dest(OC);
  for (int64_t o = 0; o < OC; ++o) dest[o] = e.dest(o);
  // element (pixel p, conv channel o): index zi of o in z / res / gr / gz, gi of dest(o) in g
  const auto run = [&](int64_t zi, int64_t gi, int64_t o, double& a1, double& a2) {
    const T u = z[zi] * e.scale[o] + e.shift[o] + (res ? T(value(res[zi])) : T(0));
    const T gu = act_bwd<A>(T(value(g[gi])), u);
    put(gr + zi, gu);
    gz[zi] = gu * e.scale[o];
    a1 += gu, a2 += double(gu) * z[zi];
  };
  if (!cl) {
    at::parallel_for(0, OC, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t q = dest[o];
        double a1 = 0, a2 = 0;
        for (int64_t n = 0; n < s.N; ++n)
          for (int64_t j = 0; j < HW; ++j) run((n * OC + o) * HW + j, (n * OC + q) * HW + j, o, a1, a2);
        sum_gu[o] = a1, sum_guz[o] = a2;
      }
    });
    return;
  }
  const int64_t rows = std::max<int64_t>(64, kPointwiseGrain / OC), chunks = (P + rows - 1) / rows;
  std::vector<double> part(2 * chunks * OC, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t end) {
    for (int64_t t = b; t < end; ++t) {
      double* a1 = part.data() + 2 * t * OC;
      double* a2 = a1 + OC;
      for (int64_t p = t * rows; p < std::min(P, (t + 1) * rows); ++p)
        for (int64_t o = 0; o < OC; ++o) run(p * OC + o, p * OC + dest[o], o, a1[o], a2[o]);
    }
  });
  for (int64_t t = 0; t < chunks; ++t)
    for (int64_t o = 0; o < OC; ++o) sum_gu[o] += part[2 * t * OC + o], sum_guz[o] += part[(2 * t + 1) * OC + o];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pwconv_bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& x_, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& shift, int64_t groups, c10::string_view act,
    const c10::optional<at::Tensor>& residual, int64_t shuffle_groups) {
  const char* op = "pwconv_bn_act_backward";
  const PwShape s = check_pwconv(op, x_, weight, scale, shift, groups, residual, shuffle_groups);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == s.N && grad_out.size(1) == s.OC &&
                        grad_out.size(2) == s.H && grad_out.size(3) == s.W,
                    "fastops.", op, ": argument 'grad_out' must have shape [", s.N, ", ", s.OC, ", ", s.H, ", ", s.W,
                    "], got ", grad_out.sizes());
  check_same_kind(op, "grad_out", grad_out, "x", x_);
  const Act a = parse_act(op, act);
  const bool cl = output_channels_last(x_);
  const at::Tensor x = x_.contiguous(layout_of(cl)), g = grad_out.contiguous(layout_of(cl));
  const bool has_res = residual.has_value() && residual->defined();
  const at::Tensor res = has_res ? residual->contiguous(layout_of(cl)) : at::Tensor();
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor sc = param(scale, s.OC, 1.0, acc), sh = param(shift, s.OC, 0.0, acc);
  const at::Tensor z = conv_z(x, weight, groups, cl, acc);
  at::Tensor gr = at::empty({s.N, s.OC, s.H, s.W}, x.options(), layout_of(cl));
  at::Tensor gz = at::empty_like(z);
  std::vector<double> sum_gu(s.OC, 0.0), sum_guz(s.OC, 0.0);
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using E = decltype(tag);
    using T = Acc<E>;
    const Epi<T> e{sc.data_ptr<T>(), sh.data_ptr<T>(), s.OC, s.shuffle, s.OC / s.shuffle, a};
    const E* rp = has_res ? reinterpret_cast<const E*>(res.data_ptr()) : nullptr;
    dispatch_act(a, [&](auto act_tag) {
      constexpr Act A = decltype(act_tag)::value;
      backward_pass_act<A, E, T>(z.data_ptr<T>(), reinterpret_cast<const E*>(g.data_ptr()), rp,
                                 reinterpret_cast<E*>(gr.data_ptr()), gz.data_ptr<T>(), s, cl, e, sum_gu.data(),
                                 sum_guz.data());
    });
  });
  const auto [gx, gw, unused] =
      at::convolution_backward(gz.to(x.scalar_type()), x, weight, c10::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0},
                               groups, {true, true, false});
  const auto vec = [&](const std::vector<double>& v, const c10::optional<at::Tensor>& p) {
    at::Tensor t = at::empty({s.OC}, at::TensorOptions().dtype(at::kDouble));
    std::copy(v.begin(), v.end(), t.data_ptr<double>());
    return t.to(p.has_value() && p->defined() ? p->scalar_type() : x.scalar_type());
  };
  return {gx.contiguous(layout_of(cl)), gw.contiguous(), vec(sum_guz, scale), vec(sum_gu, shift), gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("pwconv_bn_act", &pwconv_bn_act);
  m.impl("pwconv_bn_act_backward", &pwconv_bn_act_backward);
}

}  // namespace cpu
}  // namespace fastops
