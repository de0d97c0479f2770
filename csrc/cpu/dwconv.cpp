// CPU kernels of fastops::dwconv_bn_act and its backward.
//
// Forward: one pass, the affine and the activation applied in registers before the single store.
//   channels_last: vectorised across 16 channels; for each block of channels the KHxKW weight
//     vectors stay in registers while the row of output pixels is swept; border pixels check the
//     taps, interior pixels don't. Parallel over (n, output row).
//   NCHW: vectorised along the output width. Each (n, channel) plane is first copied into a
//     zero-padded scratch plane split into `stride` phases, so that every tap of every output
//     vector is one contiguous 16-float load, for any stride and dilation. Parallel over planes.
//   float32 and bfloat16 (float accumulation) take these paths; float64 / float16 a direct loop
//   with the same formulas (csrc/activation.h), float64 so gradcheck runs through the kernel.
// Backward: the activation's derivative and the affine's gradients are one fused pass that
//   recomputes the convolution; the convolution's own gradients (x, weight) are ATen's
//   depthwise convolution_backward on that result.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../dwconv.h"
#include "../pointwise.h"
#include "simd.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int L = kLanes;

// Per-channel affine (1 / 0 where not given), as float for the float kernels and as double for
// the float64 ones (gradcheck perturbs scale by 1e-6: float would round that away).
struct Affine {
  std::vector<float> scale, shift;
  std::vector<double> scale64, shift64;
  template <typename T> T sc(int64_t c) const { return T(sizeof(T) == 8 ? scale64[c] : scale[c]); }
  template <typename T> T sh(int64_t c) const { return T(sizeof(T) == 8 ? shift64[c] : shift[c]); }
};

Affine affine_of(const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                 int64_t OC) {
  Affine a;
  auto fill = [OC](const c10::optional<at::Tensor>& t, double dflt, std::vector<double>& d,
                   std::vector<float>& f) {
    d.assign(OC, dflt);
    if (t.has_value() && t->defined()) {
      const at::Tensor v = t->to(at::kDouble).contiguous();
      std::copy(v.const_data_ptr<double>(), v.const_data_ptr<double>() + OC, d.begin());
    }
    f.assign(d.begin(), d.end());
  };
  fill(scale, 1.0, a.scale64, a.scale);
  fill(shift, 0.0, a.shift64, a.shift);
  return a;
}

at::Tensor empty_output(const at::Tensor& x, const DwConvShape& s, at::ScalarType dtype) {
  return at::empty({s.N, s.OC, s.OH, s.OW}, x.options().dtype(dtype),
                   output_channels_last(x) ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous);
}

// ---------------------------------------------------------------------------- channels_last

// One output row (n, oh) of the NHWC kernel, for channel block [c0, c0+16); m == 1.
// wt: [KH*KW][C] float weights. K > 0 fixes KH = KW = K at compile time (weights in registers).
template <int K, Act A, typename E>
FASTOPS_CPU_INLINE void nhwc_row_block(const E* x, E* y, const float* wt, const float* sc,
                                       const float* sh, const DwConvShape& s, int64_t n, int64_t oh,
                                       int64_t c0) {
  const int64_t KH = K > 0 ? K : s.KH, KW = K > 0 ? K : s.KW;
  constexpr int kMaxTaps = K > 0 ? K * K : 1;
  f32x16 wreg[kMaxTaps];
  if constexpr (K > 0) {
    for (int t = 0; t < K * K; ++t) wreg[t] = load16(wt + t * s.C + c0);
  }
  const f32x16 scale = load16(sc + c0), shift = load16(sh + c0);
  const int64_t ih0 = oh * s.SH - s.PH;
  const int64_t row_stride = s.W * s.C;
  const E* xn = x + n * s.H * row_stride;
  E* yrow = y + ((n * s.OH + oh) * s.OW) * s.C;
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    const int64_t iw0 = ow * s.SW - s.PW;
    const bool interior_w = iw0 >= 0 && iw0 + (KW - 1) * s.DW < s.W;
    f32x16 acc = f32x16{};
    for (int64_t kh = 0; kh < KH; ++kh) {
      const int64_t ih = ih0 + kh * s.DH;
      if (ih < 0 || ih >= s.H) continue;
      const E* xr = xn + ih * row_stride + c0;
      for (int64_t kw = 0; kw < KW; ++kw) {
        const int64_t iw = iw0 + kw * s.DW;
        if (!interior_w && (iw < 0 || iw >= s.W)) continue;
        const f32x16 w = K > 0 ? wreg[kh * KW + kw] : load16(wt + (kh * KW + kw) * s.C + c0);
        acc += load16(xr + iw * s.C) * w;
      }
    }
    store16(yrow + ow * s.C + c0, act_fwd<A>(acc * scale + shift));
  }
}

// Scalar version for the channels past the last full block of 16 (and any multiplier m).
template <Act A, typename E>
void nhwc_row_scalar(const E* x, E* y, const float* wt, const float* sc, const float* sh,
                     const DwConvShape& s, int64_t n, int64_t oh, int64_t oc_begin) {
  const int64_t ih0 = oh * s.SH - s.PH;
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    const int64_t iw0 = ow * s.SW - s.PW;
    for (int64_t oc = oc_begin; oc < s.OC; ++oc) {
      const int64_t c = oc / s.mult;
      float acc = 0.f;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t ih = ih0 + kh * s.DH;
        if (ih < 0 || ih >= s.H) continue;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t iw = iw0 + kw * s.DW;
          if (iw < 0 || iw >= s.W) continue;
          acc += widen(x[((n * s.H + ih) * s.W + iw) * s.C + c]) * wt[(kh * s.KW + kw) * s.OC + oc];
        }
      }
      narrow(y + ((n * s.OH + oh) * s.OW + ow) * s.OC + oc, act_fwd<A>(acc * sc[oc] + sh[oc]));
    }
  }
}

template <Act A, typename E>
void nhwc_forward(const E* x, E* y, const float* wt, const Affine& af, const DwConvShape& s) {
  const int64_t vec_end = s.mult == 1 ? (s.C / L) * L : 0;
  const bool k3 = s.KH == 3 && s.KW == 3, k5 = s.KH == 5 && s.KW == 5;
  at::parallel_for(0, s.N * s.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / s.OH, oh = r % s.OH;
      for (int64_t c0 = 0; c0 < vec_end; c0 += L) {
        if (k3)
          nhwc_row_block<3, A>(x, y, wt, af.scale.data(), af.shift.data(), s, n, oh, c0);
        else if (k5)
          nhwc_row_block<5, A>(x, y, wt, af.scale.data(), af.shift.data(), s, n, oh, c0);
        else
          nhwc_row_block<0, A>(x, y, wt, af.scale.data(), af.shift.data(), s, n, oh, c0);
      }
      if (vec_end < s.OC)
        nhwc_row_scalar<A>(x, y, wt, af.scale.data(), af.shift.data(), s, n, oh, vec_end);
    }
  });
}

// ---------------------------------------------------------------------------- NCHW

// Scratch plane: zero padding around the input plane, each padded row split into SW phases
// (phase p holds padded columns p, p + SW, p + 2*SW, ...), rows padded to whole vectors.
struct PhasePlane {
  int64_t PHH;        // padded height
  int64_t phase_len;  // floats per phase row (multiple of L, with slack for the last vector)
  std::vector<float> buf;

  void build(const DwConvShape& s) {
    PHH = s.H + 2 * s.PH;
    const int64_t pw = s.W + 2 * s.PW;
    const int64_t per_phase = (pw + s.SW - 1) / s.SW;
    // the last output vector of a row reads up to index (OW rounded up to L) + max tap offset
    const int64_t need = ((s.OW + L - 1) / L) * L + ((s.KW - 1) * s.DW) / s.SW + 1;
    phase_len = ((std::max(per_phase, need) + L - 1) / L) * L;
    buf.assign(PHH * s.SW * phase_len, 0.f);
  }
  float* row(int64_t r, int64_t phase) { return buf.data() + (r * (int64_t)stride_ + phase) * phase_len; }
  int64_t stride_ = 1;
};

template <typename E>
void fill_phase_plane(PhasePlane& p, const E* plane, const DwConvShape& s) {
  p.stride_ = s.SW;
  for (int64_t ih = 0; ih < s.H; ++ih) {
    const E* src = plane + ih * s.W;
    for (int64_t iw = 0; iw < s.W; ++iw) {
      const int64_t col = iw + s.PW;
      p.row(ih + s.PH, col % s.SW)[col / s.SW] = widen(src[iw]);
    }
  }
}

template <Act A, typename E>
void nchw_plane(PhasePlane& p, E* out, const float* w, float scale, float shift,
                const DwConvShape& s) {
  const int64_t full = (s.OW / L) * L;
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    E* yrow = out + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ow += L) {
      f32x16 acc = f32x16{};
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t r = oh * s.SH + kh * s.DH;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t off = kw * s.DW;
          acc += load16(p.row(r, off % s.SW) + ow + off / s.SW) * w[kh * s.KW + kw];
        }
      }
      const f32x16 y = act_fwd<A>(acc * scale + shift);
      if (ow < full) {
        store16(yrow + ow, y);
      } else {
        for (int64_t i = 0; i < s.OW - ow; ++i) narrow(yrow + ow + i, y[i]);
      }
    }
  }
}

template <Act A, typename E>
void nchw_forward(const E* x, E* y, const float* w, const Affine& af, const DwConvShape& s) {
  at::parallel_for(0, s.N * s.OC, 1, [&](int64_t begin, int64_t end) {
    PhasePlane plane;
    plane.build(s);
    plane.stride_ = s.SW;
    int64_t loaded = -1;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / s.OC, oc = t % s.OC;
      const int64_t src = n * s.C + oc / s.mult;
      if (src != loaded) {  // consecutive output channels of one input channel share the plane
        fill_phase_plane(plane, x + src * s.H * s.W, s);
        loaded = src;
      }
      nchw_plane<A>(plane, y + t * s.OH * s.OW, w + oc * s.KH * s.KW, af.scale[oc], af.shift[oc], s);
    }
  });
}

// ---------------------------------------------------------------------------- generic (f64, f16)

template <Act A, typename scalar_t>
void generic_forward(const at::Tensor& xc, at::Tensor& yc, const at::Tensor& wc, const Affine& af,
                     const DwConvShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = xc.const_data_ptr<scalar_t>();
  const scalar_t* w = wc.const_data_ptr<scalar_t>();
  scalar_t* y = yc.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, s.N * s.OC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / s.OC, oc = t % s.OC, c = oc / s.mult;
      const scalar_t* plane = x + (n * s.C + c) * s.H * s.W;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          acc_t acc = 0;
          for (int64_t kh = 0; kh < s.KH; ++kh) {
            const int64_t ih = oh * s.SH - s.PH + kh * s.DH;
            if (ih < 0 || ih >= s.H) continue;
            for (int64_t kw = 0; kw < s.KW; ++kw) {
              const int64_t iw = ow * s.SW - s.PW + kw * s.DW;
              if (iw < 0 || iw >= s.W) continue;
              acc += acc_t(plane[ih * s.W + iw]) * acc_t(w[(oc * s.KH + kh) * s.KW + kw]);
            }
          }
          const acc_t u = acc * af.sc<acc_t>(oc) + af.sh<acc_t>(oc);
          y[((n * s.OC + oc) * s.OH + oh) * s.OW + ow] = scalar_t(act_fwd<A>(u));
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------- forward op

// y = act(dwconv(x) * scale + shift), in the layout of output_channels_last(x), dtype of x.
at::Tensor forward_impl(const at::Tensor& x, const at::Tensor& weight, const Affine& af,
                        const DwConvShape& s, Act act) {
  const bool cl = output_channels_last(x);
  at::Tensor y = empty_output(x, s, x.scalar_type());
  if (y.numel() == 0) return y;
  const auto st = x.scalar_type();
  if (st == at::kFloat || st == at::kBFloat16) {
    const at::Tensor w = weight.to(at::kFloat).contiguous();  // [OC, 1, KH, KW]
    const bool nhwc = cl && s.mult == 1;
    // channels_last with a multiplier runs the NCHW kernel on NCHW copies
    const at::Tensor xc = nhwc ? x.contiguous(at::MemoryFormat::ChannelsLast) : x.contiguous();
    at::Tensor yc = nhwc || !cl ? y : at::empty({s.N, s.OC, s.OH, s.OW}, y.options());
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      if (nhwc) {
        const at::Tensor wt = w.view({s.OC, s.KH * s.KW}).t().contiguous();  // [KH*KW][C]
        if (st == at::kFloat)
          nhwc_forward<A>(xc.const_data_ptr<float>(), yc.mutable_data_ptr<float>(),
                          wt.const_data_ptr<float>(), af, s);
        else
          nhwc_forward<A>(reinterpret_cast<const uint16_t*>(xc.const_data_ptr<at::BFloat16>()),
                          reinterpret_cast<uint16_t*>(yc.mutable_data_ptr<at::BFloat16>()),
                          wt.const_data_ptr<float>(), af, s);
      } else {
        if (st == at::kFloat)
          nchw_forward<A>(xc.const_data_ptr<float>(), yc.mutable_data_ptr<float>(),
                          w.const_data_ptr<float>(), af, s);
        else
          nchw_forward<A>(reinterpret_cast<const uint16_t*>(xc.const_data_ptr<at::BFloat16>()),
                          reinterpret_cast<uint16_t*>(yc.mutable_data_ptr<at::BFloat16>()),
                          w.const_data_ptr<float>(), af, s);
      }
    });
    if (!yc.is_same(y)) y.copy_(yc);
    return y;
  }
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor yc = cl ? at::empty({s.N, s.OC, s.OH, s.OW}, y.options()) : y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, st, "dwconv_bn_act", [&] {
    dispatch_act(act, [&](auto tag) {
      generic_forward<decltype(tag)::value, scalar_t>(xc, yc, wc, af, s);
    });
  });
  if (!yc.is_same(y)) y.copy_(yc);
  return y;
}

at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view act) {
  const char* op = "dwconv_bn_act";
  const DwConvShape s = check_dwconv(op, x, weight, scale, shift, stride, padding, dilation);
  const Act a = parse_act(op, std::string_view(act.data(), act.size()));
  return forward_impl(x, weight, affine_of(scale, shift, s.OC), s, a);
}

// ---------------------------------------------------------------------------- backward

// From z = dwconv(x) (float / double, NCHW or NHWC contiguous) and grad_out: gz = act'(u) * g *
// scale, and per-(row) partial sums of gu and gu * z, where u = z * scale + shift.
template <Act A, typename acc_t>
void affine_act_backward(const acc_t* z, const acc_t* g, acc_t* gz, const Affine& af,
                         const DwConvShape& s, bool nhwc, std::vector<double>& sum_gu,
                         std::vector<double>& sum_guz) {
  const int64_t rows = s.N * s.OH;  // NHWC: one task per (n, oh); NCHW: per (n, oc)
  const int64_t tasks = nhwc ? rows : s.N * s.OC;
  std::vector<double> part_gu(tasks * (nhwc ? s.OC : 1)), part_guz(part_gu.size());
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (nhwc) {
        double* pg = part_gu.data() + t * s.OC;
        double* pz = part_guz.data() + t * s.OC;
        for (int64_t i = t * s.OW * s.OC, ow = 0; ow < s.OW; ++ow) {
          for (int64_t oc = 0; oc < s.OC; ++oc, ++i) {
            const acc_t u = z[i] * af.sc<acc_t>(oc) + af.sh<acc_t>(oc);
            const acc_t gu = act_bwd<A>(g[i], u);
            gz[i] = gu * af.sc<acc_t>(oc);
            pg[oc] += gu;
            pz[oc] += gu * z[i];
          }
        }
      } else {
        const int64_t oc = t % s.OC, len = s.OH * s.OW;
        const acc_t sc = af.sc<acc_t>(oc), sh = af.sh<acc_t>(oc);
        double a = 0, b = 0;
        for (int64_t i = t * len; i < (t + 1) * len; ++i) {
          const acc_t gu = act_bwd<A>(g[i], z[i] * sc + sh);
          gz[i] = gu * sc;
          a += gu;
          b += gu * z[i];
        }
        part_gu[t] = a;
        part_guz[t] = b;
      }
    }
  });
  sum_gu.assign(s.OC, 0.0);
  sum_guz.assign(s.OC, 0.0);
  for (int64_t t = 0; t < tasks; ++t) {  // fixed order: deterministic
    if (nhwc) {
      for (int64_t oc = 0; oc < s.OC; ++oc) {
        sum_gu[oc] += part_gu[t * s.OC + oc];
        sum_guz[oc] += part_guz[t * s.OC + oc];
      }
    } else {
      sum_gu[t % s.OC] += part_gu[t];
      sum_guz[t % s.OC] += part_guz[t];
    }
  }
}

at::Tensor param_grad(const std::vector<double>& v, const c10::optional<at::Tensor>& like,
                      const at::Tensor& x) {
  at::Tensor out = at::empty({int64_t(v.size())}, x.options().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), out.mutable_data_ptr<double>());
  return out.to(like.has_value() && like->defined() ? like->scalar_type() : x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view act) {
  const char* op = "dwconv_bn_act_backward";
  const DwConvShape s = check_dwconv(op, x, weight, scale, shift, stride, padding, dilation);
  const Act a = parse_act(op, std::string_view(act.data(), act.size()));
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == s.N && grad_out.size(1) == s.OC &&
                        grad_out.size(2) == s.OH && grad_out.size(3) == s.OW,
                    "fastops.", op, ": argument 'grad_out' must have shape [", s.N, ", ", s.OC, ", ",
                    s.OH, ", ", s.OW, "], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), "fastops.", op,
                   ": argument 'grad_out' has dtype ", grad_out.scalar_type(), " but 'x' has dtype ",
                   x.scalar_type());
  const bool cl = output_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xa = x.to(acc_type).contiguous(fmt);
  const at::Tensor wa = weight.to(acc_type).contiguous();
  const at::Tensor ga = grad_out.to(acc_type).contiguous(fmt);
  const Affine af = affine_of(scale, shift, s.OC);
  const Affine identity = affine_of(c10::nullopt, c10::nullopt, s.OC);
  const at::Tensor z = forward_impl(xa, wa, identity, s, Act::None).contiguous(fmt);
  at::Tensor gz = at::empty_like(z);
  std::vector<double> sum_gu, sum_guz;
  if (z.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "dwconv_bn_act_backward", [&] {
      dispatch_act(a, [&](auto tag) {
        affine_act_backward<decltype(tag)::value, scalar_t>(
            z.const_data_ptr<scalar_t>(), ga.const_data_ptr<scalar_t>(), gz.mutable_data_ptr<scalar_t>(),
            af, s, cl, sum_gu, sum_guz);
      });
    });
  } else {
    sum_gu.assign(s.OC, 0.0);
    sum_guz.assign(s.OC, 0.0);
  }
  at::Tensor grad_x, grad_w;
  if (x.numel() > 0 && gz.numel() > 0) {
    auto grads = at::convolution_backward(gz, xa, wa, c10::nullopt, stride, padding, dilation,
                                          /*transposed=*/false, /*output_padding=*/{0, 0},
                                          /*groups=*/s.C, {true, true, false});
    grad_x = std::get<0>(grads);
    grad_w = std::get<1>(grads);
  } else {
    grad_x = at::zeros_like(xa);
    grad_w = at::zeros_like(wa);
  }
  return {grad_x.to(x.scalar_type()).contiguous(fmt), grad_w.to(weight.scalar_type()).contiguous(),
          param_grad(sum_guz, scale, x), param_grad(sum_gu, shift, x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act);
  m.impl("dwconv_bn_act_backward", &dwconv_bn_act_backward);
}

}  // namespace cpu
}  // namespace fastops
