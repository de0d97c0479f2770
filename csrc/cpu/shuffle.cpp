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

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <tuple>
#include <vector>

#include "../shuffle.h"
#include "kernels.h"
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

// One side of the transpose: in row a of pixel/image p starts at in[a] + p * in_stride[a], out
// row b at out[b] + p * out_stride (bytes; strides from one pixel (channels_last) / image (NCHW)
// to the next; input rows may come from tensors of different strides).
struct Rows {
  std::vector<const char*> in;
  std::vector<int64_t> in_stride;
  std::vector<char*> out;
  int64_t out_stride;
};

// o[b * A + a] = in[a][b] for b < B, A known at compile time.
template <typename T, int A>
FASTOPS_CPU_INLINE void gather_rows(const T* const* in, T* o, int64_t B) {
  const T* r[A];
  for (int a = 0; a < A; ++a) r[a] = in[a];
  for (int64_t b = 0; b < B; ++b)
    for (int a = 0; a < A; ++a) o[b * A + a] = r[a][b];
}

// o[3 b + a] = r_a[b] for 32-bit values, 16 b at a time: each run of 16 outputs is two
// two-source permutes (r_0 / r_1 into place, then r_2's), ShuffleNet V1's 3-group shuffle.
FASTOPS_CPU_INLINE void interleave3_u32(const uint32_t* r0, const uint32_t* r1, const uint32_t* r2, uint32_t* o,
                                        int64_t B) {
  // output k of a block: first[k] takes r_0 / r_1 elements (indices < 16 / >= 16), then[k] keeps
  // those and takes r_2's (indices >= 16); generated from e -> (e / 3, e % 3)
  const u32x16 first[3] = {{0, 16, 0, 1, 17, 0, 2, 18, 0, 3, 19, 0, 4, 20, 0, 5},
                           {21, 0, 6, 22, 0, 7, 23, 0, 8, 24, 0, 9, 25, 0, 10, 26},
                           {0, 11, 27, 0, 12, 28, 0, 13, 29, 0, 14, 30, 0, 15, 31, 0}};
  const u32x16 then[3] = {{0, 1, 16, 3, 4, 17, 6, 7, 18, 9, 10, 19, 12, 13, 20, 15},
                          {0, 21, 2, 3, 22, 5, 6, 23, 8, 9, 24, 11, 12, 25, 14, 15},
                          {26, 1, 2, 27, 4, 5, 28, 7, 8, 29, 10, 11, 30, 13, 14, 31}};
  int64_t b = 0;
  for (; b + kLanes <= B; b += kLanes) {
    u32x16 v0, v1, v2;
    std::memcpy(&v0, r0 + b, sizeof(v0));
    std::memcpy(&v1, r1 + b, sizeof(v1));
    std::memcpy(&v2, r2 + b, sizeof(v2));
    for (int k = 0; k < 3; ++k) {
      const u32x16 out = __builtin_shuffle(__builtin_shuffle(v0, v1, first[k]), v2, then[k]);
      std::memcpy(o + 3 * b + kLanes * k, &out, sizeof(out));
    }
  }
  for (; b < B; ++b) o[3 * b] = r0[b], o[3 * b + 1] = r1[b], o[3 * b + 2] = r2[b];
}

// o[2 b + a] = r_a[b] (interleave two rows) and its inverse r_a[b] = i[2 b + a] (split pairs),
// for 32-bit values: 16 b at a time through two-source permutes. A row of 16 or more whose
// length is not a multiple of 16 ends with one more step on its last 16 b, which writes some
// outputs a second time, with the same values: ShuffleNet V2's 58-, 116- and 232-channel halves
// would otherwise end in 10, 4 and 8 single-value steps (its 28x28 unit's weave 0.37 ms with
// them, one thread).
FASTOPS_CPU_INLINE void interleave2_u32(const uint32_t* r0, const uint32_t* r1, uint32_t* o, int64_t B) {
  const u32x16 lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
  const u32x16 hi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const auto step = [&](int64_t b) FASTOPS_CPU_INLINE_LAMBDA {
    u32x16 v0, v1;
    std::memcpy(&v0, r0 + b, sizeof(v0));
    std::memcpy(&v1, r1 + b, sizeof(v1));
    const u32x16 a = __builtin_shuffle(v0, v1, lo), c = __builtin_shuffle(v0, v1, hi);
    std::memcpy(o + 2 * b, &a, sizeof(a));
    std::memcpy(o + 2 * b + kLanes, &c, sizeof(c));
  };
  int64_t b = 0;
  for (; b + kLanes <= B; b += kLanes) step(b);
  if (b < B && B >= kLanes) return step(B - kLanes);
  for (; b < B; ++b) o[2 * b] = r0[b], o[2 * b + 1] = r1[b];
}

FASTOPS_CPU_INLINE void split2_u32(const uint32_t* i, uint32_t* o0, uint32_t* o1, int64_t A) {
  const u32x16 even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const u32x16 odd = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  const auto step = [&](int64_t a) FASTOPS_CPU_INLINE_LAMBDA {
    u32x16 v0, v1;
    std::memcpy(&v0, i + 2 * a, sizeof(v0));
    std::memcpy(&v1, i + 2 * a + kLanes, sizeof(v1));
    const u32x16 e = __builtin_shuffle(v0, v1, even), d = __builtin_shuffle(v0, v1, odd);
    std::memcpy(o0 + a, &e, sizeof(e));
    std::memcpy(o1 + a, &d, sizeof(d));
  };
  int64_t a = 0;
  for (; a + kLanes <= A; a += kLanes) step(a);
  if (a < A && A >= kLanes) return step(A - kLanes);
  for (; a < A; ++a) o0[a] = i[2 * a], o1[a] = i[2 * a + 1];
}

FASTOPS_CPU_MULTIVERSION void interleave_rows_u32(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb,
                                                  uint32_t* o, int64_t rows, int64_t B) {
  for (int64_t r = 0; r < rows; ++r) interleave2_u32(a + r * lda, b + r * ldb, o + r * 2 * B, B);
}

// channels_last: `count` pixels, units of one value of type T (any 2-, 4- or 8-byte dtype).
// Two layouts have loops of their own: interleaving two rows into one run (A = 2, output rows
// consecutive pairs) and its inverse (B = 2, input rows consecutive pairs).
template <typename T>
FASTOPS_CPU_INLINE void transpose_pixel_range(const Rows& r, int64_t A, int64_t B, int64_t begin, int64_t end,
                                              bool out_dense, bool split) {
  std::vector<const T*> in(A);
  for (int64_t p = begin; p < end; ++p) {
    const auto in_row = [&](int64_t a) { return reinterpret_cast<const T*>(r.in[a] + p * r.in_stride[a]); };
    const auto out_row = [&](int64_t b) { return reinterpret_cast<T*>(r.out[b] + p * r.out_stride); };
    if (A == 2 && out_dense) {
      const T *i0 = in_row(0), *i1 = in_row(1);
      T* o = out_row(0);
      if constexpr (std::is_same_v<T, uint32_t>)
        interleave2_u32(i0, i1, o, B);
      else
        for (int64_t b = 0; b < B; ++b) o[2 * b] = i0[b], o[2 * b + 1] = i1[b];
    } else if (split) {
      const T* i = in_row(0);
      T *o0 = out_row(0), *o1 = out_row(1);
      if constexpr (std::is_same_v<T, uint32_t>)
        split2_u32(i, o0, o1, A);
      else
        for (int64_t a = 0; a < A; ++a) o0[a] = i[2 * a], o1[a] = i[2 * a + 1];
    } else if (out_dense && (A == 3 || A == 4 || A == 8)) {  // ShuffleNet V1's group counts
      for (int64_t a = 0; a < A; ++a) in[a] = in_row(a);
      T* o = out_row(0);
      if constexpr (std::is_same_v<T, uint32_t>) {
        if (A == 3) interleave3_u32(in[0], in[1], in[2], o, B);
      } else {
        if (A == 3) gather_rows<T, 3>(in.data(), o, B);
      }
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
}

// 32-bit values (float) compiled per instruction set (simd.h): the vector permutes need AVX-512.
FASTOPS_CPU_MULTIVERSION void transpose_pixel_range_u32(const Rows& r, int64_t A, int64_t B, int64_t begin,
                                                        int64_t end, bool out_dense, bool split) {
  transpose_pixel_range<uint32_t>(r, A, B, begin, end, out_dense, split);
}

template <typename T>
void transpose_pixels(const Rows& r, int64_t A, int64_t B, int64_t count) {
  const int64_t t = sizeof(T);
  bool out_dense = true;  // out row b at out row 0 + b * A: one run of A * B values
  for (int64_t b = 1; b < B; ++b) out_dense = out_dense && r.out[b] == r.out[0] + b * A * t;
  bool split = B == 2;  // in row a at in row 0 + 2 * a: pairs to split into two rows
  for (int64_t a = 1; a < A; ++a) split = split && r.in[a] == r.in[0] + 2 * a * t && r.in_stride[a] == r.in_stride[0];
  at::parallel_for(0, count, std::max<int64_t>(1, kPointwiseGrain / (A * B)), [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, uint32_t>)
      transpose_pixel_range_u32(r, A, B, begin, end, out_dense, split);
    else
      transpose_pixel_range<T>(r, A, B, begin, end, out_dense, split);
  });
}

// n bytes from src to dst, 64 at a time, then 4, then 1 (the planes of a 7x7 map are 196 bytes,
// too few for a call of memcpy per plane to pay).
FASTOPS_CPU_INLINE void copy_bytes(char* dst, const char* src, int64_t n) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    u32x16 v;
    std::memcpy(&v, src + i, sizeof(v));
    std::memcpy(dst + i, &v, sizeof(v));
  }
  for (; i + 4 <= n; i += 4) std::memcpy(dst + i, src + i, 4);
  for (; i < n; ++i) dst[i] = src[i];
}

// NCHW: units begin .. end of `count` images x B output rows x A planes of `plane` bytes, in
// output order (the index walked by counters, not divided out per plane).
FASTOPS_CPU_MULTIVERSION void transpose_plane_range(const Rows& r, int64_t A, int64_t B, int64_t plane, int64_t begin,
                                                    int64_t end) {
  int64_t p = begin / (A * B), b = (begin / A) % B, a = begin % A;
  for (int64_t i = begin; i < end; ++i) {
    copy_bytes(r.out[b] + p * r.out_stride + a * plane, r.in[a] + p * r.in_stride[a] + b * plane, plane);
    if (++a == A) {
      a = 0;
      if (++b == B) b = 0, ++p;
    }
  }
}

void transpose_planes(const Rows& r, int64_t A, int64_t B, int64_t count, int64_t plane) {
  at::parallel_for(0, count * B * A, std::max<int64_t>(1, kPointwiseGrain * 4 / std::max<int64_t>(plane, 1)),
                   [&](int64_t begin, int64_t end) { transpose_plane_range(r, A, B, plane, begin, end); });
}

// An input row: base, offset of the row's first unit and units from one pixel / image to the next.
struct InRow {
  const char* base;
  int64_t offset, stride;
};

// Runs the transpose; offsets and strides are in units (values or planes), converted to bytes here.
void transpose(const std::vector<InRow>& in_rows, const std::vector<std::pair<char*, int64_t>>& out_rows,
               int64_t out_stride_units, int64_t A, int64_t B, int64_t N, int64_t HW, int64_t esize,
               bool channels_last) {
  const int64_t unit = channels_last ? esize : esize * HW;
  Rows r;
  for (const auto& row : in_rows) {
    r.in.push_back(row.base + row.offset * unit);
    r.in_stride.push_back(row.stride * unit);
  }
  for (const auto& [p, off] : out_rows) r.out.push_back(p + off * unit);
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

// t (N, C, H, W) laid out as a dense tensor of the given layout with more channels of which it
// is a slice: the units (channels_last: values; NCHW: H*W planes) from one pixel / image to the
// next; 0 when t is laid out any other way.
int64_t view_stride(const at::Tensor& t, bool channels_last) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  if (t.numel() == 0) return 0;
  if (channels_last) {
    const int64_t s = t.stride(3);
    return t.stride(1) == 1 && s >= C && t.stride(2) == s * W && t.stride(0) == s * W * H ? s : 0;
  }
  const int64_t plane = H * W;
  return t.stride(3) == 1 && t.stride(2) == W && t.stride(1) == plane && t.stride(0) % plane == 0 &&
                 t.stride(0) >= C * plane
             ? t.stride(0) / plane
             : 0;
}
char* bytes(at::Tensor& t) { return static_cast<char*>(t.data_ptr()); }

at::Tensor channel_shuffle(const at::Tensor& x_, int64_t groups) {
  check_channel_shuffle("channel_shuffle", x_, groups);
  const bool cl = output_channels_last(x_);
  const at::Tensor x = dense(x_, cl);
  at::Tensor y = empty_in_layout(x.sizes(), x, cl);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), G = groups, K = C / G;
  // in channels_last, channel c of pixel p is at p*C + c; in NCHW, plane c of image n at n*C + c
  std::vector<InRow> in;
  std::vector<std::pair<char*, int64_t>> out;
  for (int64_t a = 0; a < G; ++a) in.push_back({bytes(x), a * K, C});
  for (int64_t b = 0; b < K; ++b) out.emplace_back(bytes(y), b * G);
  transpose(in, out, C, G, K, N, HW, x.element_size(), cl);
  return y;
}

at::Tensor concat_shuffle(const at::Tensor& a_, const at::Tensor& b_) {
  check_concat_shuffle("concat_shuffle", a_, b_);
  const int64_t Ca = a_.size(1), Cb = b_.size(1);
  const bool cl = output_channels_last(a_);
  if (Ca != Cb) return channel_shuffle(at::cat({dense(a_, cl), dense(b_, cl)}, 1), 2);
  // A half that is a channel slice of a dense tensor (ShuffleNet V2's x.chunk(2, 1)) is read in
  // place, with its own pixel / image stride; any other layout is made dense first.
  int64_t sa = view_stride(a_, cl), sb = view_stride(b_, cl);
  const at::Tensor a = sa > 0 ? a_ : dense(a_, cl), b = sb > 0 ? b_ : dense(b_, cl);
  sa = sa > 0 ? sa : Ca, sb = sb > 0 ? sb : Cb;
  const int64_t N = a.size(0), HW = a.size(2) * a.size(3), C = 2 * Ca;
  at::Tensor y = empty_in_layout({N, C, a.size(2), a.size(3)}, a, cl);
  std::vector<std::pair<char*, int64_t>> out;
  for (int64_t k = 0; k < Ca; ++k) out.emplace_back(bytes(y), 2 * k);
  transpose({{bytes(a), 0, sa}, {bytes(b), 0, sb}}, out, C, 2, Ca, N, HW, a.element_size(), cl);
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
  std::vector<InRow> in;
  for (int64_t a = 0; a < K; ++a) in.push_back({bytes(g), 2 * a, C});
  transpose(in, {{bytes(ga), 0}, {bytes(gb), 0}}, K, K, 2, N, HW, g.element_size(), cl);
  return {ga, gb};
}

}  // namespace

void shuffle_pixels_inplace_f32(float* y, int64_t rows, int64_t G, int64_t K) {
  const int64_t C = G * K, block = std::max<int64_t>(1, 4096 / C);  // pixels per block: <= 16 KiB, in L1
  const int64_t blocks = (rows + block - 1) / block, row = C * int64_t(sizeof(float));
  at::parallel_for(0, blocks, std::max<int64_t>(1, kPointwiseGrain / (block * C)), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(block * C);  // the block's pixels, read from here, written back shuffled
    Rows r;
    r.in_stride.assign(G, row);
    r.out_stride = row;
    for (int64_t a = 0; a < G; ++a) r.in.push_back(reinterpret_cast<const char*>(buf.data() + a * K));
    r.out.resize(K);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p0 = t * block, n = std::min(block, rows - p0);
      std::memcpy(buf.data(), y + p0 * C, n * row);
      for (int64_t b = 0; b < K; ++b) r.out[b] = reinterpret_cast<char*>(y + p0 * C + b * G);
      transpose_pixel_range_u32(r, G, K, 0, n, true, false);
    }
  });
}

void interleave_rows_f32(const float* a, int64_t lda, const float* b, int64_t ldb, float* o, int64_t rows,
                         int64_t B) {
  interleave_rows_u32(reinterpret_cast<const uint32_t*>(a), lda, reinterpret_cast<const uint32_t*>(b), ldb,
                      reinterpret_cast<uint32_t*>(o), rows, B);
}

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("channel_shuffle", &channel_shuffle);
  m.impl("concat_shuffle", &concat_shuffle);
  m.impl("concat_shuffle_backward", &concat_shuffle_backward);
}

}  // namespace cpu
}  // namespace fastops
