// CPU kernel of fastops::inverted_residual: MobileNet V2's / V3's inverted residual block, in
// inference (BatchNorms folded into scale / shift):
//   e = act(expand(x) * s1 + b1)          1x1 conv, C -> E channels (without w1: e = x, E = C)
//   d = act(dwconv_k(e, stride) * s2 + b2) depthwise k x k, padding k // 2
//   [d = d * hardsigmoid(fc2(relu(fc1(mean_hw(d)))))]  MobileNet V3's squeeze-excite, optional
//   y = project(d) * s3 + b3 [+ x]         1x1 conv, E -> O channels, no activation
// in one parallel region, float32 channels_last. Each task runs one image (or, when there are
// fewer images than threads, part of one) band by band: a band's expanded rows (sgemm on the
// band's pixels, then the affine + activation while the tile is hot) and its depthwise rows
// (dwconv_bn_act's channels_last kernel) live in per-thread buffers sized for the L2 cache,
// and the projection (sgemm + affine [+ residual]) writes the band's output rows; images small
// enough go several to a task, whole. The expanded
// and depthwise tensors, 4-6x the block's input and output, are never written to memory.
// Expanded rows the next band's depthwise needs again (k - stride of them) are kept, not
// recomputed. With squeeze-excite a task keeps its image's depthwise rows until they are pooled,
// and multiplies the gate into those rows or into the projection's weights, whichever is
// smaller. Other dtypes, layouts and devices: the
// composition of fastops' ops (fastops/ops.py).
// The engine, block_forward_f32 (csrc/cpu/kernels.h), takes each step's activation, the input
// rows' stride and where the projection goes as arguments: it also runs ShuffleNet V2's unit
// (csrc/cpu/shuffle_v2_block.cpp).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <vector>

#include "../dwconv.h"
#include "kernels.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

// Bytes of expanded rows one band may take: with the band's depthwise rows, well inside L2.
// (MobileNet V2 / V3-Large, N=8 and N=1, 2 cores: 384 KiB and 768 KiB within 1-4% of each other,
// 192 KiB 3-10% slower at N=8, 1536 KiB 3-8% slower at N=1.)
constexpr int64_t kBandBytes = 384 << 10;
// Bytes of one image's rows (in, out and in between) above which images go one per task.
constexpr int64_t kGroupBytes = 512 << 10;

// Row-major C[M, N] = A[M, K] @ B[N, K]^T (B a weight, [out, in]; A's rows lda apart).
void gemm_abt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, float* C, int64_t ldc) {
  gemm_rowmajor(false, true, M, N, K, A, lda, B, K, C, ldc);
}

// y[m, c] = act(y[m, c] * sc[c] + sh[c] (+ res[m * C + c])) in place, rows of C values.
void epilogue(float* y, int64_t M, int64_t C, const float* sc, const float* sh, Act act, const float* res) {
  pwconv_epilogue_cl_f32(y, C, res, y, M, C, sc, sh, act);
}

at::Tensor vec(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// A task's buffers: kept by each thread between calls (grown when a call needs more, never
// zero-filled again) up to kKeptBytes each, so that a block does not allocate and clear ~1 MiB
// per thread and call (memset was ~1.5% of MobileNet V2's inference); larger ones are made for
// the call.
constexpr int64_t kKeptBytes = 4 << 20;
struct Scratch {
  enum Slot { Expanded, Depthwise, Projected, Weights, Slots };
  std::vector<float> own[Slots];
  float* get(Slot slot, int64_t n) {
    static thread_local std::vector<float> kept[Slots];
    std::vector<float>& v = n * int64_t(sizeof(float)) <= kKeptBytes ? kept[slot] : own[slot];
    if (int64_t(v.size()) < n) v.resize(n);
    return v.data();
  }
};

// mean[c] = the mean over `pixels` rows of E values of d[p * E + c].
FASTOPS_CPU_MULTIVERSION void mean_rows(const float* d, int64_t pixels, int64_t E, float* mean) {
  std::fill(mean, mean + E, 0.f);
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t c = 0; c < E; ++c) mean[c] += d[p * E + c];
  for (int64_t c = 0; c < E; ++c) mean[c] /= float(pixels);
}

// d[p * E + c] *= gate[c] for `pixels` rows of E values.
FASTOPS_CPU_MULTIVERSION void scale_rows(float* d, int64_t pixels, int64_t E, const float* gate) {
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t c = 0; c < E; ++c) d[p * E + c] *= gate[c];
}

at::Tensor inverted_residual(const at::Tensor& x, const c10::optional<at::Tensor>& w1_,
                             const c10::optional<at::Tensor>& s1_, const c10::optional<at::Tensor>& b1_,
                             const at::Tensor& w2, const at::Tensor& s2, const at::Tensor& b2, const at::Tensor& w3,
                             const at::Tensor& s3, const at::Tensor& b3, int64_t stride, c10::string_view act_,
                             bool residual, const c10::optional<at::Tensor>& se_w1,
                             const c10::optional<at::Tensor>& se_b1, const c10::optional<at::Tensor>& se_w2,
                             const c10::optional<at::Tensor>& se_b2) {
  const char* op = "inverted_residual";
  const Act act = parse_act(op, std::string_view(act_.data(), act_.size()));
  TORCH_CHECK_VALUE(x.dim() == 4, "fastops.", op, ": argument 'x' must be 4-D [N, C, H, W], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "fastops.", op, ": argument 'x' must be float32 on CPU, got ",
                   x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // no expansion (MobileNet V2's first block, V3's with as many expanded channels as inputs):
  // the depthwise step reads x itself, E = C
  const auto given = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const bool expand = given(w1_);
  TORCH_CHECK_VALUE(given(s1_) == expand && given(b1_) == expand, "fastops.", op,
                    ": arguments 'w1', 's1' and 'b1' go together (all three, or none for a block without expansion)");
  const at::Tensor w1 = expand ? *w1_ : at::Tensor(), s1 = expand ? *s1_ : at::Tensor();
  const at::Tensor b1 = expand ? *b1_ : at::Tensor();
  TORCH_CHECK_VALUE(!expand || (w1.dim() == 4 && w1.size(1) == C && w1.size(2) == 1 && w1.size(3) == 1), "fastops.",
                    op, ": argument 'w1' must have shape [E, ", C, ", 1, 1], got ", expand ? w1.sizes() : x.sizes());
  const int64_t E = expand ? w1.size(0) : C;
  TORCH_CHECK_VALUE(w2.dim() == 4 && w2.size(0) == E && w2.size(1) == 1 && w2.size(2) == w2.size(3) &&
                        w2.size(2) % 2 == 1,
                    "fastops.", op, ": argument 'w2' must have shape [", E, ", 1, k, k] with k odd, got ",
                    w2.sizes());
  TORCH_CHECK_VALUE(w3.dim() == 4 && w3.size(1) == E && w3.size(2) == 1 && w3.size(3) == 1, "fastops.", op,
                    ": argument 'w3' must have shape [O, ", E, ", 1, 1], got ", w3.sizes());
  const int64_t O = w3.size(0), K = w2.size(2), P = K / 2;
  TORCH_CHECK_VALUE(stride >= 1, "fastops.", op, ": argument 'stride' must be >= 1, got ", stride);
  const int64_t S = stride, OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
  const struct { const at::Tensor* t; const char* name; int64_t n; } vecs[] = {
      {&s1, "s1", E}, {&b1, "b1", E}, {&s2, "s2", E}, {&b2, "b2", E}, {&s3, "s3", O}, {&b3, "b3", O}};
  for (const auto* v = vecs + (expand ? 0 : 2); v != std::end(vecs); ++v)  // s1, b1 only with the expansion
    TORCH_CHECK_VALUE(v->t->dim() == 1 && v->t->size(0) == v->n, "fastops.", op, ": argument '", v->name,
                      "' must have shape [", v->n, "], got ", v->t->sizes());
  TORCH_CHECK_VALUE(!residual || (S == 1 && O == C), "fastops.", op,
                    ": residual=True needs stride 1 and as many output channels as input channels, got stride ",
                    S, ", ", C, " -> ", O, " channels");
  const bool se = se_w1.has_value() && se_w1->defined();
  int64_t SQ = 0;
  if (se) {
    TORCH_CHECK_VALUE(se_b1.has_value() && se_w2.has_value() && se_b2.has_value() && se_b1->defined() &&
                          se_w2->defined() && se_b2->defined(),
                      "fastops.", op, ": arguments 'se_w1', 'se_b1', 'se_w2' and 'se_b2' go together");
    SQ = se_w1->size(0);
    TORCH_CHECK_VALUE(se_w1->numel() == SQ * E && se_w1->size(1) == E, "fastops.", op,
                      ": argument 'se_w1' must have shape [S, ", E, "] or [S, ", E, ", 1, 1], got ", se_w1->sizes());
    TORCH_CHECK_VALUE(se_w2->size(0) == E && se_w2->numel() == E * SQ && se_w2->size(1) == SQ, "fastops.", op,
                      ": argument 'se_w2' must have shape [", E, ", ", SQ, "] or [", E, ", ", SQ,
                      ", 1, 1], got ", se_w2->sizes());
    TORCH_CHECK_VALUE(se_b1->dim() == 1 && se_b1->size(0) == SQ, "fastops.", op, ": argument 'se_b1' must have shape [",
                      SQ, "], got ", se_b1->sizes());
    TORCH_CHECK_VALUE(se_b2->dim() == 1 && se_b2->size(0) == E, "fastops.", op, ": argument 'se_b2' must have shape [",
                      E, "], got ", se_b2->sizes());
  }

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({N, O, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const at::Tensor w1c = expand ? w1.to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor w3c = w3.to(at::kFloat).contiguous();
  const std::vector<float> w2t = dwconv_weights_by_tap_f32(w2);  // [K*K][E]
  const at::Tensor s1c = expand ? vec(s1) : at::Tensor(), b1c = expand ? vec(b1) : at::Tensor();
  const at::Tensor s2c = vec(s2), b2c = vec(b2), s3c = vec(s3), b3c = vec(b3);
  const at::Tensor sw1 = se ? se_w1->to(at::kFloat).reshape({SQ, E}).contiguous() : at::Tensor();
  const at::Tensor sw2 = se ? se_w2->to(at::kFloat).reshape({E, SQ}).contiguous() : at::Tensor();
  const at::Tensor sb1 = se ? vec(*se_b1) : at::Tensor(), sb2 = se ? vec(*se_b2) : at::Tensor();
  const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; };
  const float* xp = xc.const_data_ptr<float>();
  block_forward_f32({xp, C, N, C, H, W, E, O, K, S, ptr(w1c), ptr(s1c), ptr(b1c), w2t.data(), ptr(s2c), ptr(b2c),
                     ptr(w3c), ptr(s3c), ptr(b3c), act, act, Act::None, SQ, ptr(sw1), ptr(sb1), ptr(sw2), ptr(sb2),
                     residual ? BlockOut::Residual : BlockOut::Plain, residual ? xp : nullptr, C,
                     y.mutable_data_ptr<float>()});
  return y;
}

}  // namespace

void block_forward_f32(const BlockArgs& a) {
  const int64_t N = a.N, C = a.C, H = a.H, W = a.W, E = a.E, O = a.O, K = a.K, S = a.S, P = K / 2;
  const int64_t OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1, ldx = a.ldx;
  const bool expand = a.w1 != nullptr, se = a.SQ > 0, interleave = a.out == BlockOut::Interleave;
  TORCH_INTERNAL_ASSERT((expand || ldx == C) && (a.out != BlockOut::Residual || (S == 1 && O == C && a.ldpass == O)));
  const int64_t ldy = interleave ? 2 * O : O;
  const float* xp = a.x;

  // The depthwise step's shape for `images` images of `rows` expanded rows each (a whole image,
  // or the band's rows as an image of their own, its top padding `pad_top`), `out_rows` rows out.
  const auto dw_shape = [&](int64_t images, int64_t rows, int64_t pad_top, int64_t out_rows) {
    return dw_rows_shape(images, E, rows, W, K, S, pad_top, out_rows, OW);
  };
  // M pixel rows from x (pixel i0 onwards) expanded into e: [pixels, C] @ w1^T, affine, activation
  const auto expand_rows = [&](int64_t i0, int64_t M, float* e) {
    gemm_abt(M, E, C, xp + i0 * ldx, ldx, a.w1, e, E);
    epilogue(e, M, E, a.s1, a.b1, a.act1, nullptr);
  };
  // M depthwise rows d (output pixels i0 onwards) projected with w3 (a.w3, or one with the gate
  // folded in) into y; Interleave: through `scratch` (M x O), then woven with the pass rows
  const auto project = [&](const float* d, int64_t M, const float* w3, int64_t i0, float* scratch) {
    float* p = interleave ? scratch : a.y + i0 * O;
    gemm_abt(M, O, E, d, E, w3, p, O);
    epilogue(p, M, O, a.s3, a.b3, a.act3, a.out == BlockOut::Residual ? a.pass + i0 * O : nullptr);
    if (interleave) interleave_rows_f32(a.pass + i0 * a.ldpass, a.ldpass, p, O, a.y + i0 * ldy, M, O);
  };
  // squeeze-excite's gate of one image's depthwise rows d (`pixels` rows of E values); pooled
  // [E], hidden [SQ]: scratch
  const auto se_gate = [&](const float* d, int64_t pixels, float* pooled, float* hidden, float* gate) {
    mean_rows(d, pixels, E, pooled);
    gemm_abt(1, a.SQ, E, pooled, E, a.sw1, hidden, a.SQ);
    for (int64_t j = 0; j < a.SQ; ++j) hidden[j] = std::max(hidden[j] + a.sb1[j], 0.f);
    gemm_abt(1, E, a.SQ, hidden, a.SQ, a.sw2, gate, E);
    for (int64_t c = 0; c < E; ++c) gate[c] = act_fwd<Act::Hardsigmoid>(gate[c] + a.sb2[c]);
  };
  // output rows per band: the caller's, or the band's expanded rows ((band - 1) * S + K of them)
  // within kBandBytes
  const int64_t row_bytes = W * E * int64_t(sizeof(float));
  const int64_t band = a.band_rows > 0 ? std::min(a.band_rows, OH) : std::clamp<int64_t>(
      (kBandBytes / std::max<int64_t>(row_bytes, 1) - K) / S + 1, 1, OH);
  const int64_t threads = at::get_num_threads();
  // Small images (7x7 at the end of the network): several whole images per task, so that the
  // GEMMs have more than a handful of rows and share one packing of the weights, as long as
  // every thread still gets a task. (14x14 images ran faster one per task: MobileNet V2, N=8.)
  // With squeeze-excite each image's depthwise rows are scaled by its gate before the group's
  // one projection. (MobileNet V3-Large's 7x7 blocks, features.14 / 15, 160 -> 960 -> 160, 5x5,
  // N=8, interleaved against the per-layer modules: 0.91-0.93x one image per task with the gate
  // folded into the weights, 1.14-1.22x four images per task.)
  // Not when one image's rows in and out, with its expanded, depthwise (and, to be woven,
  // projected) rows, pass kGroupBytes: ShuffleNet V2's stride-1 units, N=8, interleaved, 116
  // channels at 28x28 (1.2 MiB an image) 0.93 -> 0.84 ms one image per task, 232 at 14x14
  // (0.6 MiB) 0.58 ms either way; 464 at 7x7 (0.3 MiB) 0.49 ms four images per task, 0.57 one.
  const int64_t image_bytes = H * W * E * int64_t(sizeof(float));
  const int64_t image_set = (H * W * (ldx + E) + OH * OW * (E + ldy + (interleave ? O : 0))) * int64_t(sizeof(float));
  const int64_t group = 2 * image_bytes > kBandBytes || image_set > kGroupBytes ? 1 : std::clamp<int64_t>(
      2 * kBandBytes / std::max<int64_t>(image_bytes, 1), 1, (N + threads - 1) / threads);
  if (group > 1) {
    at::parallel_for(0, (N + group - 1) / group, 1, [&](int64_t begin, int64_t end) {
      Scratch scratch;
      float* ebuf = expand ? scratch.get(Scratch::Expanded, group * H * W * E) : nullptr;
      float* dbuf = scratch.get(Scratch::Depthwise, group * OH * OW * E);
      float* pbuf = interleave ? scratch.get(Scratch::Projected, group * OH * OW * O) : nullptr;
      std::vector<float> pooled(se ? E : 0), hidden(a.SQ), gate(se ? E : 0);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n0 = t * group, g = std::min(N, n0 + group) - n0;
        const float* e = xp + n0 * H * W * ldx;
        if (expand) {
          expand_rows(n0 * H * W, g * H * W, ebuf);
          e = ebuf;
        }
        const DwConvShape ds = dw_shape(g, H, P, OH);
        dwconv_nhwc_rows_f32(e, dbuf, a.w2t, a.s2, a.b2, ds, a.act2, 0, g * OH);
        for (int64_t i = 0; se && i < g; ++i) {
          float* d = dbuf + i * OH * OW * E;
          se_gate(d, OH * OW, pooled.data(), hidden.data(), gate.data());
          scale_rows(d, OH * OW, E, gate.data());
        }
        project(dbuf, g * OH * OW, a.w3, n0 * OH * OW, pbuf);
      }
    });
    return;
  }
  // fewer images than threads: split each image's rows into parts (the part boundary's halo rows
  // are computed twice); not with squeeze-excite, which pools the whole image before projecting
  const int64_t parts = se ? 1 : std::min<int64_t>(OH, N >= threads ? 1 : (threads + N - 1) / N);
  const int64_t rows_per_part = (OH + parts - 1) / parts;
  const int64_t max_in_rows = std::min<int64_t>(H, (band - 1) * S + K);

  at::parallel_for(0, N * parts, 1, [&](int64_t begin, int64_t end) {
    // squeeze-excite: the image's depthwise rows all kept (dbuf), pooled, the gate multiplied
    // into them or into the projection's weights (w3g), then one projection of the whole image
    const int64_t d_rows = se ? OH : band;
    Scratch scratch;
    float* ebuf = expand ? scratch.get(Scratch::Expanded, max_in_rows * W * E) : nullptr;
    float* dbuf = scratch.get(Scratch::Depthwise, d_rows * OW * E);
    float* pbuf = interleave ? scratch.get(Scratch::Projected, d_rows * OW * O) : nullptr;
    float* w3g = se && OH * OW > O ? scratch.get(Scratch::Weights, O * E) : nullptr;
    std::vector<float> pooled(se ? E : 0), hidden(a.SQ), gate(se ? E : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / parts, part = t % parts;
      const int64_t oa = part * rows_per_part, ob = std::min(OH, oa + rows_per_part);
      int64_t e_lo = 0, e_hi = 0;  // expanded rows [e_lo, e_hi) of image n are in ebuf
      for (int64_t o = oa; o < ob; o += band) {
        const int64_t o1 = std::min(ob, o + band);
        const int64_t lo = std::max<int64_t>(0, o * S - P), hi = std::min<int64_t>(H, (o1 - 1) * S - P + K);
        int64_t keep = 0;
        if (expand && e_lo <= lo && lo < e_hi) {
          keep = std::min(e_hi, hi) - lo;
          std::memmove(ebuf, ebuf + (lo - e_lo) * W * E, keep * W * E * sizeof(float));
        }
        if (expand && hi > lo + keep)  // expand the rows not kept
          expand_rows((n * H + lo + keep) * W, (hi - lo - keep) * W, ebuf + keep * W * E);
        e_lo = lo, e_hi = hi;
        // the band's depthwise rows, from the expanded rows [lo, hi) (without expansion, x's
        // rows, read in place) as an image of their own
        const DwConvShape ds = dw_shape(1, hi - lo, lo - (o * S - P), o1 - o);
        float* d = se ? dbuf + o * OW * E : dbuf;
        const float* e = expand ? ebuf : xp + ((n * H + lo) * W) * C;
        dwconv_nhwc_rows_f32(e, d, a.w2t, a.s2, a.b2, ds, a.act2, 0, ds.OH);
        if (!se) project(dbuf, (o1 - o) * OW, a.w3, (n * OH + o) * OW, pbuf);
      }
      if (!se) continue;
      const int64_t pixels = OH * OW;
      se_gate(dbuf, pixels, pooled.data(), hidden.data(), gate.data());
      // the gate into whichever is smaller: the image's depthwise rows or the weights
      const float* w3 = a.w3;
      if (pixels <= O) {
        scale_rows(dbuf, pixels, E, gate.data());
      } else {
        for (int64_t o = 0; o < O; ++o)
          for (int64_t c = 0; c < E; ++c) w3g[o * E + c] = a.w3[o * E + c] * gate[c];
        w3 = w3g;
      }
      project(dbuf, pixels, w3, n * pixels, pbuf);
    }
  });
}

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("inverted_residual", &inverted_residual); }

}  // namespace cpu
}  // namespace fastops
