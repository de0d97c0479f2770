// CPU kernels that other CPU ops reuse (declared here, defined in their family's file).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <utility>
#include <vector>

#include "../dwconv.h"
#include "../pwconv.h"

// Fortran BLAS sgemm, exported by libtorch_cpu when it links MKL or OpenBLAS. Weak, so that a
// torch without it still loads fastops (with a null sgemm_ pwconv_bn_act takes the ATen path, and
// gemm_rowmajor multiplies with ATen's mm).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace fastops {
namespace cpu {

// pwconv_bn_act's forward into y ([N, OC, H, W], dense in the layout of output_channels_last(x)),
// the arguments already checked (csrc/cpu/pwconv.cpp).
void pwconv_forward_into(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, const PwShape& s, Act act,
                         const c10::optional<at::Tensor>& residual, at::Tensor& y);

// A scale or shift (1-D, n values) as a contiguous vector of type acc, or n copies of `fill` where
// it is not given (csrc/cpu/pwconv.cpp).
at::Tensor param_vector(const c10::optional<at::Tensor>& t, int64_t n, double fill, at::ScalarType acc);

// Row-major C[M, N] = A[M, K] @ B[K, N] (+ beta * C), A and B transposed as flagged (lda / ldb /
// ldc: row strides of the matrices as stored), with sgemm (csrc/cpu/pwconv.cpp).
void gemm_rowmajor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float* C, int64_t ldc, float beta = 0.f);

// pwconv_bn_act's channels_last float32 epilogue (no shuffle) over `rows` pixels:
// y[r, o] = act(z[r * ldz + o] * scale[o] + shift[o] (+ res[r * OC + o])); y rows of OC values,
// y may be z when ldz == OC (csrc/cpu/pwconv.cpp).
void pwconv_epilogue_cl_f32(const float* z, int64_t ldz, const float* res, float* y, int64_t rows, int64_t OC,
                            const float* scale, const float* shift, Act act);

// The same over conv channels o < OC of NCHW rows (no residual, no shuffle): y[o * ld + j] =
// act(z[o * ldz + j] * scale[o] + shift[o]) for j < cols; y may be z when ldz == ld.
void pwconv_epilogue_nchw_f32(const float* z, int64_t ldz, float* y, int64_t ld, int64_t cols, int64_t OC,
                              const float* scale, const float* shift, Act act);

// A scale's or shift's gradient (one value per output channel) in the dtype of that parameter
// p, or of x where it was not given: the ops return both gradients either way
// (csrc/cpu/pwconv.cpp, for pwconv_bn_act and dwconv_bn_act).
at::Tensor param_grad(const at::Tensor& t, const c10::optional<at::Tensor>& p, const at::Tensor& x);
at::Tensor param_grad(const std::vector<double>& v, const c10::optional<at::Tensor>& p, const at::Tensor& x);

// The plain convolution's (no scale, shift or activation: its gz is grad_out g itself) scale and
// shift gradients, the per-channel sums of g * z and of g, as double [OC]: sum_p g[o, p] z[o, p]
// = sum_k w[o, k] grad_w[o, k], so z need not be recomputed (csrc/cpu/pwconv.cpp).
std::pair<at::Tensor, at::Tensor> plain_conv_affine_sums(const at::Tensor& w, const at::Tensor& grad_w,
                                                         const at::Tensor& g);

// The shape dwconv_nhwc_rows_f32 takes for `images` images of `rows` input rows (a band's rows
// as an image of their own, its top padding `pad_top`), C channels, W wide, a K x K kernel at
// stride S with padding K / 2 at the sides, `out_rows` x OW out: the bands of the
// inverted-residual engine and of separable_conv_bn_act's NCHW path.
inline DwConvShape dw_rows_shape(int64_t images, int64_t C, int64_t rows, int64_t W, int64_t K, int64_t S,
                                 int64_t pad_top, int64_t out_rows, int64_t OW) {
  DwConvShape ds{};
  ds.N = images, ds.C = C, ds.H = rows, ds.W = W, ds.OC = C, ds.mult = 1, ds.KH = K, ds.KW = K;
  ds.SH = S, ds.SW = S, ds.PH = pad_top, ds.PW = K / 2, ds.DH = 1, ds.DW = 1, ds.OH = out_rows, ds.OW = OW;
  return ds;
}

// A depthwise weight [C, 1, KH, KW] as float32 [KH * KW][C], the layout dwconv_nhwc_rows_f32 reads
// (csrc/cpu/dwconv.cpp).
std::vector<float> dwconv_weights_by_tap_f32(const at::Tensor& weight);

// dwconv_bn_act's channels_last float32 kernel on output rows [begin, end) of r = n * OH + oh:
// x dense [N, H, W, C], y dense [N, OH, OW, C], wt [KH * KW][C], sc / sh [C] (csrc/cpu/dwconv.cpp).
// Multiplier 1 only (s.OC == s.C).
void dwconv_nhwc_rows_f32(const float* x, float* y, const float* wt, const float* sc, const float* sh,
                          const DwConvShape& s, Act act, int64_t begin, int64_t end);

// o[r * 2B + 2i] = a[r * lda + i], o[r * 2B + 2i + 1] = b[r * ldb + i] for `rows` rows of B
// values: concat_shuffle's interleave of two rows (csrc/cpu/shuffle.cpp).
void interleave_rows_f32(const float* a, int64_t lda, const float* b, int64_t ldb, float* o, int64_t rows, int64_t B);

// channel_shuffle(y, G) in place over `rows` dense channels_last pixels of G * K float32 values
// (K channels per group): pixel row o[k * G + g] = o[g * K + k] (csrc/cpu/shuffle.cpp).
void shuffle_pixels_inplace_f32(float* y, int64_t rows, int64_t G, int64_t K);

// Where a block's projection goes (block_forward_f32): y = p; y = p + pass (the residual,
// stride 1, O == C, pass rows of O values); or y[2i] = pass[i], y[2i + 1] = p[i] (ShuffleNet
// V2's concat + shuffle of the other branch's output and this one's, y rows of 2 O values).
// pass rows are indexed by output pixel.
enum class BlockOut { Plain, Residual, Interleave };

// An inverted-residual-shaped block, float32 channels_last, BatchNorms folded, arguments already
// checked (csrc/cpu/inverted_residual.cpp): e = act1(x @ w1^T * s1 + b1) (no w1: e = x, E = C),
// d = act2(dwconv_k(e, stride S, padding K / 2) * s2 + b2), [d *= squeeze-excite gate of d],
// p = act3(d @ w3^T * s3 + b3), written to y as `out` says. The E-channel tensors are never
// written to memory.
struct BlockArgs {
  const float* x;  // pixel i's C input channels at x + i * ldx (ldx == C without w1)
  int64_t ldx, N, C, H, W, E, O, K, S;
  const float *w1, *s1, *b1;   // [E, C], [E], [E]; w1 null: no expansion
  const float *w2t, *s2, *b2;  // [K * K][E] (dwconv_weights_by_tap_f32), [E], [E]
  const float *w3, *s3, *b3;   // [O, E], [O], [O]
  Act act1, act2, act3;
  int64_t SQ;  // squeeze-excite's hidden channels, 0 without: relu, hardsigmoid gate
  const float *sw1, *sb1, *sw2, *sb2;  // [SQ, E], [SQ], [E, SQ], [E]
  BlockOut out;
  const float* pass;  // Residual / Interleave: output pixel i's other values at pass + i * ldpass
  int64_t ldpass;
  float* y;  // [N, OH, OW, O] (Interleave: 2 O)
  int64_t band_rows = 0;  // output rows per band; 0: the engine's (expanded rows within L2)
};
void block_forward_f32(const BlockArgs& a);

}  // namespace cpu
}  // namespace fastops
