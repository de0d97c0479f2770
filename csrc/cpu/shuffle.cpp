// CPU kernels of fastops::channel_shuffle, concat_shuffle and concat_shuffle_backward (the channel
// map: csrc/shuffle.h).
//
// All three are one transpose: the channels of a pixel (channels_last) or of an image (NCHW),
// read as A input rows of B channels, are written as B output rows of A channels,
//   out_row[b][a] = in_row[a][b],
// where each row is a pointer of its own, so that rows may live in different tensors:
//   channel_shuffle(x, G):         A = G, B = C/G; in rows x + a*B, out rows y + b*A
//   concat_shuffle(a, b), Ca = Cb: A = 2, B = Ca;  in rows a, b;   out rows y + 2*k
//   its backward, split = C/2:     A = C/2, B = 2; in rows g + 2*a; out rows grad_a, grad_b
// A "unit" is one value (channels_last: rows are runs of channels of one pixel, units are
// copied one by one, the pixels in parallel) or one H*W plane (NCHW: planes are copied with
// memcpy, the (image, plane) pairs in parallel). Inputs are first made dense in the output's
// layout (csrc/pointwise.h). concat_shuffle with unequal halves (a row would straddle a and b)
// goes through cat + channel_shuffle: same answer, one more pass.
#include <ATen/Parallel.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "../shuffle.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

at::Tensor empty_in_layout(at::IntArrayRef sizes, const at::Tensor& like, bool channels_last) {
  return at::empty(sizes, like.options(),
                   channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

// `t` dense in the given layout (itself when it already is).
at::Tensor dense(const at::Tensor& t, bool channels_last) {
  return t.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

// One side of the transpose: row r of pixel/image p starts at base[r] + p * stride (bytes).
struct Rows {
  std::vector<const char*> in;
  std::vector<char*> out;
  int64_t in_stride, out_stride;  // bytes from one pixel (channels_last) / image (NCHW) to the next
};

// o[b * A + a] = in[a][b] for b < B, A known at compile time.
template <typename T, int A>
inline void gather_rows(const T* const* in, T* o, int64_t B) {
  const T* r[A];
  for (int a = 0; a < A; ++a) r[a] = in[a];
  for (int64_t b = 0; b < B; ++b)
    for (int a = 0; a < A; ++a) o[b * A + a] = r[a][b];
}

// channels_last: `count` pixels, units of one value of type T (any 2-, 4- or 8-byte dtype).
// Two layouts have loops of their own: interleaving two rows into one run (A = 2, output rows
// consecutive pairs) and its inverse (B = 2, input rows consecutive pairs).
template <typename T>
void transpose_pixels(const Rows& r, int64_t A, int64_t B, int64_t count) {
  const int64_t t = sizeof(T);
  bool out_dense = true;  // out row b at out row 0 + b * A: one run of A * B values
  for (int64_t b = 1; b < B; ++b) out_dense = out_dense && r.out[b] == r.out[0] + b * A * t;
  bool split = B == 2;  // in row a at in row 0 + 2 * a: pairs to split into two rows
  for (int64_t a = 1; a < A; ++a) split = split && r.in[a] == r.in[0] + 2 * a * t;
  at::parallel_for(0, count, std::max<int64_t>(1, kPointwiseGrain / (A * B)), [&](int64_t begin, int64_t end) {
    std::vector<const T*> in(A);
    for (int64_t p = begin; p < end; ++p) {
      const auto in_row = [&](int64_t a) { return reinterpret_cast<const T*>(r.in[a] + p * r.in_stride); };
      const auto out_row = [&](int64_t b) { return reinterpret_cast<T*>(r.out[b] + p * r.out_stride); };
      if (A == 2 && out_dense) {
        const T *i0 = in_row(0), *i1 = in_row(1);
        T* o = out_row(0);
        for (int64_t b = 0; b < B; ++b) o[2 * b] = i0[b], o[2 * b + 1] = i1[b];
      } else if (split) {
        const T* i = in_row(0);
        T *o0 = out_row(0), *o1 = out_row(1);
        for (int64_t a = 0; a < A; ++a) o0[a] = i[2 * a], o1[a] = i[2 * a + 1];
      } else if (out_dense && (A == 3 || A == 4 || A == 8)) {  // ShuffleNet V1's group counts
        for (int64_t a = 0; a < A; ++a) in[a] = in_row(a);
        T* o = out_row(0);
        if (A == 3) gather_rows<T, 3>(in.data(), o, B);
        if (A == 4) gather_rows<T, 4>(in.data(), o, B);
        if (A == 8) gather_rows<T, 8>(in.data(), o, B);
      } else {
        for (int64_t a = 0; a < A; ++a) in[a] = in_row(a);
        for (int64_t b = 0; b < B; ++b) {
          T* o = out_row(b);
          for (int64_t a = 0; a < A; ++a) o[a] = in[a][b];
        }
      }
    }
  });
}

// NCHW: `count` images, units of one plane of `plane` bytes.
void transpose_planes(const Rows& r, int64_t A, int64_t B, int64_t count, int64_t plane) {
  at::parallel_for(0, count * B * A, std::max<int64_t>(1, kPointwiseGrain * 4 / std::max<int64_t>(plane, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i) {
                       const int64_t p = i / (A * B), b = (i / A) % B, a = i % A;
                       std::memcpy(r.out[b] + p * r.out_stride + a * plane,
                                   r.in[a] + p * r.in_stride + b * plane, plane);
                     }
                   });
}

// Runs the transpose; rows' offsets are in units (values or planes), converted to bytes here.
void transpose(const std::vector<std::pair<const char*, int64_t>>& in_rows, int64_t in_stride_units,
               const std::vector<std::pair<char*, int64_t>>& out_rows, int64_t out_stride_units,
               int64_t A, int64_t B, int64_t N, int64_t HW, int64_t esize, bool channels_last) {
  const int64_t unit = channels_last ? esize : esize * HW;
  Rows r;
  for (const auto& [p, off] : in_rows) r.in.push_back(p + off * unit);
  for (const auto& [p, off] : out_rows) r.out.push_back(p + off * unit);
  r.in_stride = in_stride_units * unit;
  r.out_stride = out_stride_units * unit;
  if (N * HW * A * B == 0) return;
  if (!channels_last) return transpose_planes(r, A, B, N, unit);
  const int64_t count = N * HW;
  switch (esize) {
    case 2: return transpose_pixels<uint16_t>(r, A, B, count);
    case 4: return transpose_pixels<uint32_t>(r, A, B, count);
    case 8: return transpose_pixels<uint64_t>(r, A, B, count);
    default: TORCH_CHECK(false, "fastops.channel_shuffle: unsupported element size ", esize);
  }
}

const char* bytes(const at::Tensor& t) { return static_cast<const char*>(t.data_ptr()); }
char* bytes(at::Tensor& t) { return static_cast<char*>(t.data_ptr()); }

at::Tensor channel_shuffle(const at::Tensor& x_, int64_t groups) {
  check_channel_shuffle("channel_shuffle", x_, groups);
  const bool cl = output_channels_last(x_);
  const at::Tensor x = dense(x_, cl);
  at::Tensor y = empty_in_layout(x.sizes(), x, cl);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), G = groups, K = C / G;
  // in channels_last, channel c of pixel p is at p*C + c; in NCHW, plane c of image n at n*C + c
  std::vector<std::pair<const char*, int64_t>> in;
  std::vector<std::pair<char*, int64_t>> out;
  for (int64_t a = 0; a < G; ++a) in.emplace_back(bytes(x), a * K);
  for (int64_t b = 0; b < K; ++b) out.emplace_back(bytes(y), b * G);
  transpose(in, C, out, C, G, K, N, HW, x.element_size(), cl);
  return y;
}

at::Tensor concat_shuffle(const at::Tensor& a_, const at::Tensor& b_) {
  check_concat_shuffle("concat_shuffle", a_, b_);
  const int64_t Ca = a_.size(1), Cb = b_.size(1);
  const bool cl = output_channels_last(a_);
  if (Ca != Cb) return channel_shuffle(at::cat({dense(a_, cl), dense(b_, cl)}, 1), 2);
  const at::Tensor a = dense(a_, cl), b = dense(b_, cl);
  const int64_t N = a.size(0), HW = a.size(2) * a.size(3), C = 2 * Ca;
  at::Tensor y = empty_in_layout({N, C, a.size(2), a.size(3)}, a, cl);
  std::vector<std::pair<char*, int64_t>> out;
  for (int64_t k = 0; k < Ca; ++k) out.emplace_back(bytes(y), 2 * k);
  transpose({{bytes(a), 0}, {bytes(b), 0}}, Ca, out, C, 2, Ca, N, HW, a.element_size(), cl);
  return y;
}

std::tuple<at::Tensor, at::Tensor> concat_shuffle_backward(const at::Tensor& g_, int64_t split) {
  check_concat_shuffle_backward("concat_shuffle_backward", g_, split);
  const bool cl = output_channels_last(g_);
  const int64_t C = g_.size(1), K = C / 2;
  if (split != K) {
    const at::Tensor g = channel_shuffle(g_, K);
    return {dense(g.narrow(1, 0, split), cl), dense(g.narrow(1, split, C - split), cl)};
  }
  const at::Tensor g = dense(g_, cl);
  const int64_t N = g.size(0), HW = g.size(2) * g.size(3);
  at::Tensor ga = empty_in_layout({N, K, g.size(2), g.size(3)}, g, cl);
  at::Tensor gb = empty_in_layout({N, K, g.size(2), g.size(3)}, g, cl);
  std::vector<std::pair<const char*, int64_t>> in;
  for (int64_t a = 0; a < K; ++a) in.emplace_back(bytes(g), 2 * a);
  transpose(in, C, {{bytes(ga), 0}, {bytes(gb), 0}}, K, K, 2, N, HW, g.element_size(), cl);
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("channel_shuffle", &channel_shuffle);
  m.impl("concat_shuffle", &concat_shuffle);
  m.impl("concat_shuffle_backward", &concat_shuffle_backward);
}

}  // namespace cpu
}  // namespace fastops
