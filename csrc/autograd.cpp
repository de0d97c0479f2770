// Autograd of the fastops ops, in C++: bn_act_train, dwconv_bn_act, channel_shuffle,
// concat_shuffle (and its backward's, for double backward), squeeze_excite, pwconv_bn_act,
// separable_conv_bn_act, and hardswish / hardsigmoid (and their backward's).
//
// The block ops' autograd (inverted_residual, shuffle_v2_block, stem_conv_bn_act: composites of
// the ones here) stays in Python (fastops/ops.py,
// torch.library.register_autograd). Why C++: the per-call cost. A training step runs
// bn_act_train and dwconv_bn_act once per BatchNorm and depthwise conv, and there the Python
// layer cost more than the kernels on small maps: a bn_act_train forward call on 2x16x2x2 took
// 42 us with it, 14 us with the Function below (the kernel alone 7 us), forward + backward 145
// against 95 us; channel_shuffle forward + backward 98 against 64 us; pwconv_bn_act on 2x16x2x2
// 62-73 against 21 us forward, 257-272 against 175-178 us forward + backward; squeeze_excite
// 56-70 against 18-19 us, 234-244 against 156-159 us; hardswish 22-23 against 7-8 us, 125-131
// against 85-87 us (one thread, the Python formulas re-registered in the same build).
// Registered for the Autograd key, so every backend (CPU, CUDA) and the fake tensors of
// torch.compile go through them; the forward runs the op below autograd, the backward calls the
// op's backward op, as the Python formulas do (fastops_triton's ops keep those). The backward
// ops have no autograd of their own: differentiating their results again raises
// (once_differentiable below) rather than giving a zero second derivative.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// The Function classes' names are the autograd nodes' (grad_fn.name(): "torch::autograd::
// CppNode<fastops::autograd::BnActTrain>"), so they live outside the anonymous namespace.
namespace fastops {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }
OptTensor as_optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }

// The op `name` with the C++ signature F (held in a function-local static by each caller).
template <typename F>
c10::TypedOperatorHandle<F> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<F>();
}

// An autograd node of type N, held as the graph holds nodes: a shared_ptr in older torch, an
// intrusive_ptr in newer (the GPU machine builds against torch 2.11, this one 2.14).
using NodePtr = decltype(torch::autograd::Edge::function);
template <typename N, typename Ptr, typename... Args>
Ptr make_node(Args&&... args) {
  if constexpr (std::is_same_v<Ptr, std::shared_ptr<torch::autograd::Node>>)
    return std::make_shared<N>(std::forward<Args>(args)...);
  else
    return c10::make_intrusive<N>(std::forward<Args>(args)...);
}

// The gradients `compute` returns, for a Function whose backward op has no autograd of its own
// (the fused ops' *_backward): with create_graph=True (a gradient penalty, double backward) the
// dispatcher's fallback would let the gradients count as constants, a silently zero second
// derivative. So, as Python's @once_differentiable does, they are computed without grad mode and,
// where the graph is being built and an input or saved tensor requires grad, get as grad_fn a
// node that raises, naming the op, if anything differentiates them.
template <typename F>
variable_list once_differentiable(const char* op, AutogradContext* ctx, const variable_list& grads, F&& compute) {
  const bool build_graph = at::GradMode::is_enabled();
  variable_list out;
  {
    at::NoGradGuard no_grad;
    out = compute();
  }
  if (!build_graph) return out;
  const variable_list saved = ctx->get_saved_variables();
  bool requires_grad = false;
  for (const variable_list& ts : {grads, saved})
    for (const at::Tensor& t : ts) requires_grad = requires_grad || (t.defined() && t.requires_grad());
  if (!requires_grad) return out;
  // the node's edges lead to what the gradients depend on, so that differentiating them with
  // respect to any of it (autograd.grad(..., inputs=x) included) reaches the node and raises
  const NodePtr node = make_node<torch::autograd::Error, NodePtr>(
      std::string("fastops.") + op +
          ": differentiating its gradient again (double backward, e.g. a gradient penalty through "
          "torch.autograd.grad(..., create_graph=True)) is not implemented",
      torch::autograd::collect_next_edges(grads, saved));
  for (at::Tensor& t : out) torch::autograd::set_history(t, node);
  return out;
}

// A convolution's stride, padding, dilation and activation, kept in the context for the backward.
struct ConvGeometry {
  std::vector<int64_t> stride, padding, dilation;
  std::string act;

  static void save(AutogradContext* ctx, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                   c10::string_view act) {
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["act"] = std::string(act);
  }

  static ConvGeometry load(AutogradContext* ctx) {
    return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["act"].toStringRef()};
  }
};

// ---------------------------------------------------------------------------- bn_act_train

using BnActTrainFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&,
                                                                    const OptTensor&, double, c10::string_view);
using BnActTrainBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
    const OptTensor&, double, c10::string_view);

struct BnActTrain : public torch::autograd::Function<BnActTrain> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, double eps, c10::string_view act) {
    static const auto op = typed_op<BnActTrainFn>("fastops::bn_act_train");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, var] = op.call(x, weight, bias, eps, act);
    ctx->mark_non_differentiable({mean, var});
    ctx->save_for_backward({x, mean, var, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = std::string(act);
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<BnActTrainBackwardFn>("fastops::bn_act_train_backward");
    return once_differentiable("bn_act_train", ctx, grads, [&] {
      const variable_list s = ctx->get_saved_variables();
      const OptTensor weight = as_optional(s[3]), bias = as_optional(s[4]);
      const std::string act = ctx->saved_data["act"].toStringRef();
      const double eps = ctx->saved_data["eps"].toDouble();
      auto [gx, gw, gb] = op.call(grads[0], s[0], s[1], s[2], weight, bias, eps, act);
      const at::Tensor none;
      return variable_list{gx, defined(weight) ? gw : none, defined(bias) ? gb : none, none, none};
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_autograd(const at::Tensor& x, const OptTensor& weight,
                                                                     const OptTensor& bias, double eps,
                                                                     c10::string_view act) {
  const variable_list out = BnActTrain::apply(x, weight, bias, eps, act);
  return {out[0], out[1], out[2]};
}

// ---------------------------------------------------------------------------- dwconv_bn_act

using DwConvFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view);
using DwConvBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, at::IntArrayRef,
    at::IntArrayRef, at::IntArrayRef, c10::string_view);

struct DwConvBnAct : public torch::autograd::Function<DwConvBnAct> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& scale, const OptTensor& shift, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view act) {
    static const auto op = typed_op<DwConvFn>("fastops::dwconv_bn_act");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(x, weight, scale, shift, stride, padding, dilation, act);
    ctx->save_for_backward({x, weight, scale.value_or(at::Tensor()), shift.value_or(at::Tensor())});
    ConvGeometry::save(ctx, stride, padding, dilation, act);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<DwConvBackwardFn>("fastops::dwconv_bn_act_backward");
    return once_differentiable("dwconv_bn_act", ctx, grads, [&] {
      const variable_list s = ctx->get_saved_variables();
      const OptTensor scale = as_optional(s[2]), shift = as_optional(s[3]);
      const ConvGeometry g = ConvGeometry::load(ctx);
      auto [gx, gw, gs, gb] = op.call(grads[0], s[0], s[1], scale, shift, g.stride, g.padding, g.dilation, g.act);
      const at::Tensor none;
      return variable_list{gx, gw, defined(scale) ? gs : none, defined(shift) ? gb : none, none, none, none, none};
    });
  }
};

at::Tensor dwconv_bn_act_autograd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& scale,
                                  const OptTensor& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, c10::string_view act) {
  return DwConvBnAct::apply(x, weight, scale, shift, stride, padding, dilation, act);
}

// ---------------------------------------------------------------------------- channel shuffles

using ChannelShuffleFn = at::Tensor(const at::Tensor&, int64_t);
using ConcatShuffleFn = at::Tensor(const at::Tensor&, const at::Tensor&);
using ConcatShuffleBackwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t);

// The gradient of channel_shuffle(x, G) is channel_shuffle(grad, C / G).
struct ChannelShuffle : public torch::autograd::Function<ChannelShuffle> {
  static const c10::TypedOperatorHandle<ChannelShuffleFn>& op() {
    static const auto h = typed_op<ChannelShuffleFn>("fastops::channel_shuffle");
    return h;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op().call(x, groups);
    // groups divides C: the op checked it. (sym_size: x.size(1) on a tensor with symbolic sizes,
    // under torch.export / compile, specialised every dimension, the batch's included)
    ctx->saved_data["inverse"] = x.sym_size(1).guard_int(__FILE__, __LINE__) / groups;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {op().call(grads[0], ctx->saved_data["inverse"].toInt()), at::Tensor()};
  }
};

at::Tensor channel_shuffle_autograd(const at::Tensor& x, int64_t groups) { return ChannelShuffle::apply(x, groups); }

// The gradient of concat_shuffle(a, b) is concat_shuffle_backward(grad, a's channels).
struct ConcatShuffle : public torch::autograd::Function<ConcatShuffle> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b) {
    static const auto op = typed_op<ConcatShuffleFn>("fastops::concat_shuffle");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(a, b);
    ctx->saved_data["split"] = a.sym_size(1).guard_int(__FILE__, __LINE__);  // (as in ChannelShuffle)
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<ConcatShuffleBackwardFn>("fastops::concat_shuffle_backward");
    auto [ga, gb] = op.call(grads[0], ctx->saved_data["split"].toInt());
    return {ga, gb};
  }
};

at::Tensor concat_shuffle_autograd(const at::Tensor& a, const at::Tensor& b) { return ConcatShuffle::apply(a, b); }

// concat_shuffle_backward is linear in grad_out: its own adjoint is concat_shuffle (double
// backward of concat_shuffle).
struct ConcatShuffleBackward : public torch::autograd::Function<ConcatShuffleBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out, int64_t split) {
    static const auto op = typed_op<ConcatShuffleBackwardFn>("fastops::concat_shuffle_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [ga, gb] = op.call(grad_out, split);
    return {ga, gb};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<ConcatShuffleFn>("fastops::concat_shuffle");
    return {op.call(grads[0], grads[1]), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> concat_shuffle_backward_autograd(const at::Tensor& grad_out, int64_t split) {
  const variable_list out = ConcatShuffleBackward::apply(grad_out, split);
  return {out[0], out[1]};
}

// ---------------------------------------------------------------------------- squeeze_excite

using SqueezeExciteFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
                                   const OptTensor&, c10::string_view, c10::string_view);
using SqueezeExciteBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
    const OptTensor&, c10::string_view, c10::string_view);

struct SqueezeExcite : public torch::autograd::Function<SqueezeExcite> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                            const at::Tensor& w2, const OptTensor& b2, c10::string_view act,
                            c10::string_view gate) {
    static const auto op = typed_op<SqueezeExciteFn>("fastops::squeeze_excite");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(x, w1, b1, w2, b2, act, gate);
    ctx->save_for_backward({x, w1, b1.value_or(at::Tensor()), w2, b2.value_or(at::Tensor())});
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["gate"] = std::string(gate);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<SqueezeExciteBackwardFn>("fastops::squeeze_excite_backward");
    return once_differentiable("squeeze_excite", ctx, grads, [&] {
      const variable_list s = ctx->get_saved_variables();
      const OptTensor b1 = as_optional(s[2]), b2 = as_optional(s[4]);
      const std::string act = ctx->saved_data["act"].toStringRef(), gate = ctx->saved_data["gate"].toStringRef();
      auto [gx, gw1, gb1, gw2, gb2] = op.call(grads[0], s[0], s[1], b1, s[3], b2, act, gate);
      const at::Tensor none;
      return variable_list{gx, gw1, defined(b1) ? gb1 : none, gw2, defined(b2) ? gb2 : none, none, none};
    });
  }
};

at::Tensor squeeze_excite_autograd(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                                   const at::Tensor& w2, const OptTensor& b2, c10::string_view act,
                                   c10::string_view gate) {
  return SqueezeExcite::apply(x, w1, b1, w2, b2, act, gate);
}

// ---------------------------------------------------------------------------- pwconv_bn_act

using PwConvFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, int64_t,
                            c10::string_view, const OptTensor&, int64_t);
using PwConvBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, int64_t,
    c10::string_view, const OptTensor&, int64_t);
using PwPlainBackwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, int64_t);

struct PwConvBnAct : public torch::autograd::Function<PwConvBnAct> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& scale, const OptTensor& shift, int64_t groups, c10::string_view act,
                            const OptTensor& residual, int64_t shuffle_groups) {
    static const auto op = typed_op<PwConvFn>("fastops::pwconv_bn_act");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(x, weight, scale, shift, groups, act, residual, shuffle_groups);
    ctx->save_for_backward({x, weight, scale.value_or(at::Tensor()), shift.value_or(at::Tensor()),
                            residual.value_or(at::Tensor())});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["shuffle_groups"] = shuffle_groups;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<PwConvBackwardFn>("fastops::pwconv_bn_act_backward");
    static const auto plain_op = typed_op<PwPlainBackwardFn>("fastops::pwconv_backward");
    return once_differentiable("pwconv_bn_act", ctx, grads, [&] {
      const variable_list s = ctx->get_saved_variables();
      const OptTensor scale = as_optional(s[2]), shift = as_optional(s[3]), residual = as_optional(s[4]);
      const std::string act = ctx->saved_data["act"].toStringRef();
      const int64_t groups = ctx->saved_data["groups"].toInt(), shuffle = ctx->saved_data["shuffle_groups"].toInt();
      const at::Tensor none;
      if (!defined(scale) && !defined(shift) && !defined(residual) && act == "none" && shuffle == 1) {
        auto [gx, gw] = plain_op.call(grads[0], s[0], s[1], groups);  // a plain conv: no other gradient
        return variable_list{gx, gw, none, none, none, none, none, none};
      }
      auto [gx, gw, gs, gb, gr] = op.call(grads[0], s[0], s[1], scale, shift, groups, act, residual, shuffle);
      return variable_list{gx, gw, defined(scale) ? gs : none, defined(shift) ? gb : none, none, none,
                           defined(residual) ? gr : none, none};
    });
  }
};

at::Tensor pwconv_bn_act_autograd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& scale,
                                  const OptTensor& shift, int64_t groups, c10::string_view act,
                                  const OptTensor& residual, int64_t shuffle_groups) {
  return PwConvBnAct::apply(x, weight, scale, shift, groups, act, residual, shuffle_groups);
}

// ---------------------------------------------------------------------------- separable_conv_bn_act

using SeparableFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                               const OptTensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                               c10::string_view);
using SeparableBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
    const OptTensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view);

struct SeparableConvBnAct : public torch::autograd::Function<SeparableConvBnAct> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dw_weight,
                            const at::Tensor& pw_weight, const OptTensor& scale, const OptTensor& shift,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            c10::string_view act) {
    static const auto op = typed_op<SeparableFn>("fastops::separable_conv_bn_act");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act);
    ctx->save_for_backward({x, dw_weight, pw_weight, scale.value_or(at::Tensor()), shift.value_or(at::Tensor())});
    ConvGeometry::save(ctx, stride, padding, dilation, act);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<SeparableBackwardFn>("fastops::separable_conv_bn_act_backward");
    return once_differentiable("separable_conv_bn_act", ctx, grads, [&] {
      const variable_list s = ctx->get_saved_variables();
      const OptTensor scale = as_optional(s[3]), shift = as_optional(s[4]);
      const ConvGeometry g = ConvGeometry::load(ctx);
      auto [gx, gd, gp, gs, gb] =
          op.call(grads[0], s[0], s[1], s[2], scale, shift, g.stride, g.padding, g.dilation, g.act);
      const at::Tensor none;
      return variable_list{gx, gd, gp, defined(scale) ? gs : none, defined(shift) ? gb : none,
                           none, none, none, none};
    });
  }
};

at::Tensor separable_conv_bn_act_autograd(const at::Tensor& x, const at::Tensor& dw_weight,
                                          const at::Tensor& pw_weight, const OptTensor& scale,
                                          const OptTensor& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                                          at::IntArrayRef dilation, c10::string_view act) {
  return SeparableConvBnAct::apply(x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act);
}

// ---------------------------------------------------------------------------- activations

using ActivationFn = at::Tensor(const at::Tensor&);
using ActivationBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&);

// The ops' names, and the second derivative contracted with gg:
// d(<name>_backward(grad_out, x)) / dx . gg = gg * grad_out * f''(x).
struct HardswishOps {
  static constexpr const char* forward = "fastops::hardswish";
  static constexpr const char* backward = "fastops::hardswish_backward";
  static at::Tensor second(const at::Tensor& gg, const at::Tensor& grad_out, const at::Tensor& x) {
    const at::Tensor inside = x.gt(-3).logical_and(x.lt(3)).to(x.scalar_type());  // hardswish'' = 1/3 there
    return gg.mul(grad_out).mul(inside).div(3);
  }
};

struct HardsigmoidOps {
  static constexpr const char* forward = "fastops::hardsigmoid";
  static constexpr const char* backward = "fastops::hardsigmoid_backward";
  static at::Tensor second(const at::Tensor&, const at::Tensor&, const at::Tensor& x) {
    return at::zeros_like(x);
  }
};

// f(x); its backward is <name>_backward, called through the dispatcher so that it is itself
// differentiable (double backward: gradient penalties, gradgradcheck).
template <typename Self, typename Ops>
struct ActivationFunction : public torch::autograd::Function<Self> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    static const auto op = typed_op<ActivationFn>(Ops::forward);
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x});
    return op.call(x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<ActivationBackwardFn>(Ops::backward);
    return {op.call(grads[0], ctx->get_saved_variables()[0])};
  }
};

// <name>_backward(grad_out, x) = grad_out * f'(x): linear in grad_out, f'' for x.
template <typename Self, typename Ops>
struct ActivationBackwardFunction : public torch::autograd::Function<Self> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_out, const at::Tensor& x) {
    static const auto op = typed_op<ActivationBackwardFn>(Ops::backward);
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_out, x});
    return op.call(grad_out, x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<ActivationBackwardFn>(Ops::backward);
    const variable_list s = ctx->get_saved_variables();
    return {op.call(grads[0], s[1]), Ops::second(grads[0], s[0], s[1])};
  }
};

struct Hardswish : ActivationFunction<Hardswish, HardswishOps> {};
struct HardswishBackward : ActivationBackwardFunction<HardswishBackward, HardswishOps> {};
struct Hardsigmoid : ActivationFunction<Hardsigmoid, HardsigmoidOps> {};
struct HardsigmoidBackward : ActivationBackwardFunction<HardsigmoidBackward, HardsigmoidOps> {};

at::Tensor hardswish_autograd(const at::Tensor& x) { return Hardswish::apply(x); }
at::Tensor hardswish_backward_autograd(const at::Tensor& g, const at::Tensor& x) {
  return HardswishBackward::apply(g, x);
}
at::Tensor hardsigmoid_autograd(const at::Tensor& x) { return Hardsigmoid::apply(x); }
at::Tensor hardsigmoid_backward_autograd(const at::Tensor& g, const at::Tensor& x) {
  return HardsigmoidBackward::apply(g, x);
}

}  // namespace autograd

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("hardswish", &autograd::hardswish_autograd);
  m.impl("hardswish_backward", &autograd::hardswish_backward_autograd);
  m.impl("hardsigmoid", &autograd::hardsigmoid_autograd);
  m.impl("hardsigmoid_backward", &autograd::hardsigmoid_backward_autograd);
  m.impl("bn_act_train", &autograd::bn_act_train_autograd);
  m.impl("dwconv_bn_act", &autograd::dwconv_bn_act_autograd);
  m.impl("channel_shuffle", &autograd::channel_shuffle_autograd);
  m.impl("concat_shuffle", &autograd::concat_shuffle_autograd);
  m.impl("concat_shuffle_backward", &autograd::concat_shuffle_backward_autograd);
  m.impl("squeeze_excite", &autograd::squeeze_excite_autograd);
  m.impl("pwconv_bn_act", &autograd::pwconv_bn_act_autograd);
  m.impl("separable_conv_bn_act", &autograd::separable_conv_bn_act_autograd);
}

}  // namespace fastops
