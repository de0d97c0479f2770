// CPU kernel of fastops::shuffle_v2_block: ShuffleNet V2's unit, in inference (BatchNorms
// folded into scale / shift). Stride 1:
//   x1, x2 = x.chunk(2, dim=1)                 C = 2 B channels
//   e = act(conv1x1(x2, w1) * s1 + b1)         B -> E channels
//   d = dwconv_k(e, stride 1, padding k // 2) * s2 + b2   (no activation)
//   b = act(conv1x1(d, w3) * s3 + b3)          E -> B channels
//   y = concat_shuffle(x1, b): y[2i] = x1[i], y[2i + 1] = b[i]
// Stride S > 1 (the unit that halves the map): no split; branch2 as above on the whole of x
// (w1 [E, C], the depthwise conv with stride S), and in x1's place branch1:
//   x1 = act(conv1x1(dwconv_k(x, w4, stride S) * s4 + b4, w5) * s5 + b5)   C -> B channels
// Each branch is one run of inverted_residual's engine (block_forward_f32,
// csrc/cpu/inverted_residual.cpp), float32 channels_last: x2's rows are read in place from x
// (no copy of the split half), e and d live in per-thread buffers sized for the L2 cache and
// never reach memory, and branch2's rows are woven with x1's straight into the output, so the
// concat + shuffle costs no pass of its own (stride S writes branch1's output, a quarter of
// x's size at S = 2, once). Other dtypes, layouts and devices: the composition of fastops' ops
// (fastops/ops.py).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "kernels.h"

namespace fastops {
namespace cpu {
namespace {

at::Tensor shuffle_v2_block(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& s1, const at::Tensor& b1,
                            const at::Tensor& w2, const at::Tensor& s2, const at::Tensor& b2, const at::Tensor& w3,
                            const at::Tensor& s3, const at::Tensor& b3, c10::string_view act_, int64_t stride,
                            const c10::optional<at::Tensor>& w4_, const c10::optional<at::Tensor>& s4_,
                            const c10::optional<at::Tensor>& b4_, const c10::optional<at::Tensor>& w5_,
                            const c10::optional<at::Tensor>& s5_, const c10::optional<at::Tensor>& b5_) {
  const char* op = "shuffle_v2_block";
  const Act act = parse_act(op, std::string_view(act_.data(), act_.size()));
  TORCH_CHECK_VALUE(x.dim() == 4, "fastops.", op, ": argument 'x' must be 4-D [N, C, H, W], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "fastops.", op, ": argument 'x' must be float32 on CPU, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(stride >= 1, "fastops.", op, ": argument 'stride' must be >= 1, got ", stride);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), S = stride;
  TORCH_CHECK_VALUE(H >= 1 && W >= 1, "fastops.", op, ": argument 'x' must have at least one row and column (the ",
                    "depthwise kernels are larger than an empty map however padded), got ", H, "x", W);
  const auto given = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const bool branch1 = given(w4_);
  TORCH_CHECK_VALUE(given(s4_) == branch1 && given(b4_) == branch1 && given(w5_) == branch1 &&
                        given(s5_) == branch1 && given(b5_) == branch1 && branch1 == (S > 1),
                    "fastops.", op, ": arguments 'w4', 's4', 'b4', 'w5', 's5' and 'b5' (branch1) are given together, ",
                    "exactly when stride > 1, got stride ", S);
  TORCH_CHECK_VALUE(S > 1 || C % 2 == 0, "fastops.", op, ": argument 'x' must have an even number of channels ",
                    "(split in two halves), got ", C);
  const int64_t CI = S > 1 ? C : C / 2;  // branch2's input channels
  TORCH_CHECK_VALUE(w1.dim() == 4 && w1.size(1) == CI && w1.size(2) == 1 && w1.size(3) == 1, "fastops.", op,
                    ": argument 'w1' must have shape [E, ", CI, ", 1, 1], got ", w1.sizes());
  const int64_t E = w1.size(0);
  const auto check_dw = [&](const at::Tensor& w, const char* name, int64_t c) {
    TORCH_CHECK_VALUE(w.dim() == 4 && w.size(0) == c && w.size(1) == 1 && w.size(2) == w.size(3) && w.size(2) % 2 == 1,
                      "fastops.", op, ": argument '", name, "' must have shape [", c, ", 1, k, k] with k odd, got ",
                      w.sizes());
  };
  check_dw(w2, "w2", E);
  const int64_t B = S > 1 ? w3.size(0) : C / 2;  // each branch's output channels
  TORCH_CHECK_VALUE(w3.dim() == 4 && w3.size(0) == B && w3.size(1) == E && w3.size(2) == 1 && w3.size(3) == 1,
                    "fastops.", op, ": argument 'w3' must have shape [", B, ", ", E, ", 1, 1], got ", w3.sizes());
  std::vector<std::tuple<const at::Tensor*, const char*, int64_t>> vecs = {
      {&s1, "s1", E}, {&b1, "b1", E}, {&s2, "s2", E}, {&b2, "b2", E}, {&s3, "s3", B}, {&b3, "b3", B}};
  if (branch1) {
    check_dw(*w4_, "w4", C);
    const at::Tensor& w5 = *w5_;
    TORCH_CHECK_VALUE(w5.dim() == 4 && w5.size(0) == B && w5.size(1) == C && w5.size(2) == 1 && w5.size(3) == 1,
                      "fastops.", op, ": argument 'w5' must have shape [", B, ", ", C, ", 1, 1], got ", w5.sizes());
    vecs.insert(vecs.end(), {{&*s4_, "s4", C}, {&*b4_, "b4", C}, {&*s5_, "s5", B}, {&*b5_, "b5", B}});
  }
  for (const auto& [t, name, n] : vecs)
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n, "fastops.", op, ": argument '", name, "' must have shape [",
                      n, "], got ", t->sizes());
  // odd kernels, padding k // 2: both branches' maps are (size - 1) / S + 1
  const int64_t K2 = w2.size(2), K4 = branch1 ? w4_->size(2) : K2, OH = (H - 1) / S + 1, OW = (W - 1) / S + 1;

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({N, 2 * B, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const at::Tensor w1c = f32(w1), w3c = f32(w3), s1c = f32(s1), b1c = f32(b1), s2c = f32(s2), b2c = f32(b2);
  const at::Tensor s3c = f32(s3), b3c = f32(b3);
  const std::vector<float> w2t = dwconv_weights_by_tap_f32(w2);  // [k*k][E]
  const float* xp = xc.const_data_ptr<float>();
  const auto p = [](const at::Tensor& t) { return t.const_data_ptr<float>(); };
  // x1: the first half of x's channels in place (stride 1), or branch1's output
  const float* x1 = xp;
  int64_t ld1 = C;
  at::Tensor y1;
  if (branch1) {
    y1 = at::empty({N, OH, OW, B}, x.options());
    const at::Tensor w5c = f32(*w5_), s4c = f32(*s4_), b4c = f32(*b4_), s5c = f32(*s5_), b5c = f32(*b5_);
    const std::vector<float> w4t = dwconv_weights_by_tap_f32(*w4_);
    block_forward_f32({xp, C, N, C, H, W, C, B, K4, S, nullptr, nullptr, nullptr, w4t.data(), p(s4c), p(b4c),
                       p(w5c), p(s5c), p(b5c), act, Act::None, act, 0, nullptr, nullptr, nullptr, nullptr,
                       BlockOut::Plain, nullptr, 0, y1.mutable_data_ptr<float>()});
    x1 = y1.const_data_ptr<float>(), ld1 = B;
  }
  // branch2 reads x2 (channels C - CI.. of each pixel, rows C apart) and weaves in x1
  block_forward_f32({xp + (C - CI), C, N, CI, H, W, E, B, K2, S, p(w1c), p(s1c), p(b1c), w2t.data(), p(s2c),
                     p(b2c), p(w3c), p(s3c), p(b3c), act, Act::None, act, 0, nullptr, nullptr, nullptr, nullptr,
                     BlockOut::Interleave, x1, ld1, y.mutable_data_ptr<float>()});
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("shuffle_v2_block", &shuffle_v2_block); }

}  // namespace cpu
}  // namespace fastops
