// CPU kernel of fastops::shuffle_v2_block: ShuffleNet V2's stride-1 unit, in inference
// (BatchNorms folded into scale / shift):
//   x1, x2 = x.chunk(2, dim=1)                 C = 2 B channels
//   e = act(conv1x1(x2, w1) * s1 + b1)         B -> E channels
//   d = dwconv_k(e, stride 1, padding k // 2) * s2 + b2   (no activation)
//   b = act(conv1x1(d, w3) * s3 + b3)          E -> B channels
//   y = concat_shuffle(x1, b): y[2i] = x1[i], y[2i + 1] = b[i]
// in one parallel region, float32 channels_last, by inverted_residual's engine
// (block_forward_f32, csrc/cpu/inverted_residual.cpp): x2's rows are read in place from x (no
// copy of the split half), e and d live in per-thread buffers sized for the L2 cache and never
// reach memory, and the branch's rows are woven with x1's straight into the output, so the
// concat + shuffle costs no pass of its own. Other dtypes, layouts and devices: the composition
// of fastops' ops (fastops/ops.py).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "kernels.h"

namespace fastops {
namespace cpu {
namespace {

at::Tensor shuffle_v2_block(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& s1, const at::Tensor& b1,
                            const at::Tensor& w2, const at::Tensor& s2, const at::Tensor& b2, const at::Tensor& w3,
                            const at::Tensor& s3, const at::Tensor& b3, c10::string_view act_) {
  const char* op = "shuffle_v2_block";
  const Act act = parse_act(op, std::string_view(act_.data(), act_.size()));
  TORCH_CHECK_VALUE(x.dim() == 4, "fastops.", op, ": argument 'x' must be 4-D [N, C, H, W], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "fastops.", op, ": argument 'x' must be float32 on CPU, got ",
                   x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), B = C / 2;
  TORCH_CHECK_VALUE(C % 2 == 0, "fastops.", op, ": argument 'x' must have an even number of channels (split in two "
                    "halves), got ", C);
  TORCH_CHECK_VALUE(w1.dim() == 4 && w1.size(1) == B && w1.size(2) == 1 && w1.size(3) == 1, "fastops.", op,
                    ": argument 'w1' must have shape [E, ", B, ", 1, 1], got ", w1.sizes());
  const int64_t E = w1.size(0);
  TORCH_CHECK_VALUE(w2.dim() == 4 && w2.size(0) == E && w2.size(1) == 1 && w2.size(2) == w2.size(3) &&
                        w2.size(2) % 2 == 1,
                    "fastops.", op, ": argument 'w2' must have shape [", E, ", 1, k, k] with k odd, got ",
                    w2.sizes());
  TORCH_CHECK_VALUE(w3.dim() == 4 && w3.size(0) == B && w3.size(1) == E && w3.size(2) == 1 && w3.size(3) == 1,
                    "fastops.", op, ": argument 'w3' must have shape [", B, ", ", E, ", 1, 1], got ", w3.sizes());
  const struct { const at::Tensor* t; const char* name; int64_t n; } vecs[] = {
      {&s1, "s1", E}, {&b1, "b1", E}, {&s2, "s2", E}, {&b2, "b2", E}, {&s3, "s3", B}, {&b3, "b3", B}};
  for (const auto& v : vecs)
    TORCH_CHECK_VALUE(v.t->dim() == 1 && v.t->size(0) == v.n, "fastops.", op, ": argument '", v.name,
                      "' must have shape [", v.n, "], got ", v.t->sizes());

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({N, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const at::Tensor w1c = f32(w1), w3c = f32(w3), s1c = f32(s1), b1c = f32(b1), s2c = f32(s2), b2c = f32(b2);
  const at::Tensor s3c = f32(s3), b3c = f32(b3);
  const std::vector<float> w2t = dwconv_weights_by_tap_f32(w2);  // [k*k][E]
  const float* xp = xc.const_data_ptr<float>();
  const auto p = [](const at::Tensor& t) { return t.const_data_ptr<float>(); };
  // the engine reads x2 (channels B.. of each pixel, rows C apart) and weaves in x1 (channels ..B)
  block_forward_f32({xp + B, C, N, B, H, W, E, B, w2.size(2), 1, p(w1c), p(s1c), p(b1c), w2t.data(), p(s2c),
                     p(b2c), p(w3c), p(s3c), p(b3c), act, Act::None, act, 0, nullptr, nullptr, nullptr, nullptr,
                     BlockOut::Interleave, xp, C, y.mutable_data_ptr<float>()});
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("shuffle_v2_block", &shuffle_v2_block); }

}  // namespace cpu
}  // namespace fastops
