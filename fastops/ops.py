"""The functional API, `fastops.ops.<op>`, and the Python half of every C++ operator.

This file
  1. registers, for each `torch.ops.fastops.<op>` declared in csrc/fastops.cpp, its fake (meta)
     impl and its autograd formula, so the ops work under torch.compile, export and autograd;
  2. defines the functions users call: they check arguments (errors name the op and the
     argument), pick the implementation for the tensor's device (fastops/_backend.py) and fall
     back to `fastops.reference` for anything no kernel covers.
"""

import sys

import torch

from . import _backend, _checks, _extension, _layout, reference

__all__ = [
    "hardswish", "hardsigmoid", "hardswish_backward", "hardsigmoid_backward", "dwconv_bn_act", "bn_act_train",
    "bn_act_train_backward", "channel_shuffle", "concat_shuffle", "squeeze_excite", "pwconv_bn_act",
    "separable_conv_bn_act", "inverted_residual", "shuffle_v2_block", "stem_conv_bn_act",
]


# ---------------------------------------------------------------------------------------------
# Fake impls and autograd of the C++ ops
# ---------------------------------------------------------------------------------------------


class _NotTwiceDifferentiable(torch.autograd.Function):
    """forward(op, n, *tensors): the first n tensors (gradients), as outputs that depend in the
    graph on all the tensors; backward: an error naming the op."""

    @staticmethod
    def forward(ctx, op, n, *tensors):
        ctx.op = op
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"fastops.{ctx.op}: differentiating its gradient again (double backward, e.g. a gradient "
                           "penalty through torch.autograd.grad(..., create_graph=True)) is not implemented")


def _once_differentiable(op, backward):
    """`backward` (a register_autograd formula that calls a backward op with no autograd of its
    own) computed without grad mode; when the graph is being built (create_graph=True) and a
    gradient or saved tensor requires grad, its gradients come back through a node that raises,
    naming the op, if they are differentiated again: the dispatcher's fallback would let them count
    as constants, a silently zero second derivative (csrc/autograd.cpp does the same in C++)."""

    def wrapper(ctx, *grads):
        with torch.no_grad():
            out = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return out
        deps = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
        outs = list(out) if isinstance(out, tuple) else [out]
        where = [i for i, t in enumerate(outs) if isinstance(t, torch.Tensor)]
        if not deps or not where:
            return out
        wrapped = _NotTwiceDifferentiable.apply(op, len(where), *[outs[i] for i in where], *deps)
        for i, t in zip(where, wrapped):
            outs[i] = t
        return tuple(outs) if isinstance(out, tuple) else outs[0]

    return wrapper


def register_activation(ns, name, second_derivative, autograd=True):
    """fake + autograd for <ns>::<name>, <ns>::<name>_backward and <ns>::<name>_ (the C++ ops in
    namespace "fastops", the Triton ones in "fastops_triton"; autograd=False: the autograd is in
    C++, csrc/autograd.cpp).

    `second_derivative(gg, grad_out, x)` is d(<name>_backward)/dx contracted with gg, so that
    double backward (gradient penalties, gradgradcheck) works as it does for torch's own op."""
    bwd = f"{name}_backward"
    bwd_op = getattr(getattr(torch.ops, ns), bwd)

    @torch.library.register_fake(f"{ns}::{name}")
    def _fake(x):
        _checks.check_floating(name, "x", x)
        return torch.empty_like(x)

    @torch.library.register_fake(f"{ns}::{bwd}")
    def _fake_backward(grad_out, x):
        _checks.check_floating(bwd, "x", x)
        _checks.check_like(bwd, "grad_out", grad_out, "x", x)
        return torch.empty_like(x)

    @torch.library.register_fake(f"{ns}::{name}_")
    def _fake_inplace(x):
        _checks.check_floating(name, "x", x)
        _checks.check_writable(name, "x", x)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return bwd_op(grad, x)

    def setup_backward(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward_backward(ctx, gg):
        grad_out, x = ctx.saved_tensors
        return bwd_op(gg, x), second_derivative(gg, grad_out, x)

    if autograd:
        torch.library.register_autograd(f"{ns}::{name}", backward, setup_context=setup)
        torch.library.register_autograd(f"{ns}::{bwd}", backward_backward, setup_context=setup_backward)


def hardswish_second_derivative(gg, grad_out, x):
    return gg * grad_out * torch.where((x > -3) & (x < 3), 1.0 / 3.0, 0.0).to(x.dtype)


def hardsigmoid_second_derivative(gg, grad_out, x):
    return torch.zeros_like(x)


def _dwconv_fake(op):
    """The fake impl of a dwconv_bn_act forward (the op, and the CUDA build's test hook that
    emulates its channels_last kernel on the host)."""
    def fake(x, weight, scale, shift, stride, padding, dilation, act):
        shape = _checks.check_dwconv(op, x, weight, scale, shift, stride, padding, dilation, act)
        return x.new_empty(shape).contiguous(memory_format=_layout.conv_output_format(x))

    return fake


def register_dwconv(ns, autograd=True):
    """fake + autograd for <ns>::dwconv_bn_act and <ns>::dwconv_bn_act_backward (autograd=False:
    the fake impls only; fastops' own op has its autograd in C++, csrc/autograd.cpp)."""
    bwd_op = getattr(torch.ops, ns).dwconv_bn_act_backward
    torch.library.register_fake(f"{ns}::dwconv_bn_act")(_dwconv_fake("dwconv_bn_act"))

    @torch.library.register_fake(f"{ns}::dwconv_bn_act_backward")
    def _fake_backward(grad_out, x, weight, scale, shift, stride, padding, dilation, act):
        op = "dwconv_bn_act_backward"
        shape = _checks.check_dwconv(op, x, weight, scale, shift, stride, padding, dilation, act)
        _checks.check_grad_out(op, grad_out, shape)
        oc = weight.shape[0]
        return (
            torch.empty_like(x, memory_format=_layout.conv_output_format(x)),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            x.new_empty([oc], dtype=(scale if scale is not None else x).dtype),
            x.new_empty([oc], dtype=(shift if shift is not None else x).dtype),
        )

    def setup(ctx, inputs, output):
        x, weight, scale, shift, stride, padding, dilation, act = inputs
        ctx.save_for_backward(x, weight, scale, shift)
        ctx.conf = (stride, padding, dilation, act)

    def backward(ctx, grad):
        x, weight, scale, shift = ctx.saved_tensors
        gx, gw, gs, gb = bwd_op(grad, x, weight, scale, shift, *ctx.conf)
        return gx, gw, gs if scale is not None else None, gb if shift is not None else None, None, None, None, None

    if autograd:
        torch.library.register_autograd(f"{ns}::dwconv_bn_act", _once_differentiable("dwconv_bn_act", backward),
                                        setup_context=setup)


def register_bn_act(ns, autograd=True):
    """fake + autograd for <ns>::bn_act_train and <ns>::bn_act_train_backward (autograd=False:
    the fake impls only; fastops' own op has its autograd in C++, csrc/autograd.cpp)."""
    bwd_op = getattr(torch.ops, ns).bn_act_train_backward

    def _stats(x):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.new_empty([x.shape[1]], dtype=dtype)

    @torch.library.register_fake(f"{ns}::bn_act_train")
    def _fake(x, weight, bias, eps, act):
        _checks.check_bn_act("bn_act_train", x, weight, bias, eps, act)
        return torch.empty_like(x, memory_format=_layout.conv_output_format(x)), _stats(x), _stats(x)

    @torch.library.register_fake(f"{ns}::bn_act_train_backward")
    def _fake_backward(grad_out, x, mean, var, weight, bias, eps, act):
        _checks.check_bn_act_backward("bn_act_train_backward", grad_out, x, mean, var, weight, bias, eps, act)
        return (
            torch.empty_like(x, memory_format=_layout.conv_output_format(x)),
            _stats(x) if weight is None else weight.new_empty(weight.shape),
            _stats(x) if bias is None else bias.new_empty(bias.shape),
        )

    def setup(ctx, inputs, output):
        x, weight, bias, eps, act = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(x, mean, var, weight, bias)
        ctx.conf = (eps, act)

    def backward(ctx, grad, _grad_mean, _grad_var):
        x, mean, var, weight, bias = ctx.saved_tensors
        gx, gw, gb = bwd_op(grad, x, mean, var, weight, bias, *ctx.conf)
        return gx, gw if weight is not None else None, gb if bias is not None else None, None, None

    if autograd:
        torch.library.register_autograd(f"{ns}::bn_act_train", _once_differentiable("bn_act_train", backward),
                                        setup_context=setup)


def _like_vector(t, n, x):
    """A fake gradient for an optional [n] parameter: in t's dtype, or x's where t is None."""
    return t.new_empty(t.shape) if t is not None else x.new_empty([n])


def register_shuffle(ns, autograd=True):
    """fake + autograd for <ns>::channel_shuffle, <ns>::concat_shuffle and its backward
    (autograd=False: their autograd is in C++, csrc/autograd.cpp)."""
    lib = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::channel_shuffle")
    def _fake(x, groups):
        _checks.check_channel_shuffle("channel_shuffle", x, groups)
        return torch.empty_like(x, memory_format=_layout.conv_output_format(x))

    @torch.library.register_fake(f"{ns}::concat_shuffle")
    def _fake_concat(a, b):
        _checks.check_concat_shuffle("concat_shuffle", a, b)
        n, ca, h, w = a.shape
        return a.new_empty([n, ca + b.shape[1], h, w]).contiguous(memory_format=_layout.conv_output_format(a))

    @torch.library.register_fake(f"{ns}::concat_shuffle_backward")
    def _fake_concat_backward(grad_out, split):
        _checks.check_concat_shuffle_backward("concat_shuffle_backward", grad_out, split)
        n, c, h, w = grad_out.shape
        fmt = _layout.conv_output_format(grad_out)
        return (grad_out.new_empty([n, split, h, w]).contiguous(memory_format=fmt),
                grad_out.new_empty([n, c - split, h, w]).contiguous(memory_format=fmt))

    def setup(ctx, inputs, output):
        x, groups = inputs
        ctx.inverse = x.shape[1] // groups

    def backward(ctx, grad):
        return lib.channel_shuffle(grad, ctx.inverse), None

    if autograd:
        torch.library.register_autograd(f"{ns}::channel_shuffle", backward, setup_context=setup)

    def setup_concat(ctx, inputs, output):
        ctx.split = inputs[0].shape[1]

    def backward_concat(ctx, grad):
        return lib.concat_shuffle_backward(grad, ctx.split)

    if autograd:
        torch.library.register_autograd(f"{ns}::concat_shuffle", backward_concat, setup_context=setup_concat)

    def backward_concat_backward(ctx, grad_a, grad_b):  # the backward is linear: its own adjoint
        return lib.concat_shuffle(grad_a, grad_b), None

    if autograd:
        torch.library.register_autograd(f"{ns}::concat_shuffle_backward", backward_concat_backward,
                                        setup_context=lambda ctx, inputs, output: None)


def register_squeeze_excite(ns, autograd=True):
    """fake + autograd for <ns>::squeeze_excite and <ns>::squeeze_excite_backward (autograd=False:
    the autograd is in C++, csrc/autograd.cpp)."""
    bwd_op = getattr(torch.ops, ns).squeeze_excite_backward

    @torch.library.register_fake(f"{ns}::squeeze_excite")
    def _fake(x, w1, b1, w2, b2, act, gate):
        _checks.check_squeeze_excite("squeeze_excite", x, w1, b1, w2, b2, act, gate)
        return torch.empty_like(x, memory_format=_layout.conv_output_format(x))

    @torch.library.register_fake(f"{ns}::squeeze_excite_backward")
    def _fake_backward(grad_out, x, w1, b1, w2, b2, act, gate):
        op = "squeeze_excite_backward"
        _checks.check_squeeze_excite(op, x, w1, b1, w2, b2, act, gate)
        _checks.check_like(op, "grad_out", grad_out, "x", x)
        return (torch.empty_like(x, memory_format=_layout.conv_output_format(x)), w1.new_empty(w1.shape),
                _like_vector(b1, w1.shape[0], x), w2.new_empty(w2.shape), _like_vector(b2, w2.shape[0], x))

    def setup(ctx, inputs, output):
        x, w1, b1, w2, b2, act, gate = inputs
        ctx.save_for_backward(x, w1, b1, w2, b2)
        ctx.conf = (act, gate)

    def backward(ctx, grad):
        x, w1, b1, w2, b2 = ctx.saved_tensors
        gx, gw1, gb1, gw2, gb2 = bwd_op(grad, x, w1, b1, w2, b2, *ctx.conf)
        return gx, gw1, gb1 if b1 is not None else None, gw2, gb2 if b2 is not None else None, None, None

    if autograd:
        torch.library.register_autograd(f"{ns}::squeeze_excite", _once_differentiable("squeeze_excite", backward),
                                        setup_context=setup)


def register_pwconv(ns, autograd=True):
    """fake + autograd for <ns>::pwconv_bn_act and <ns>::pwconv_bn_act_backward (autograd=False:
    the autograd is in C++, csrc/autograd.cpp)."""
    bwd_op = getattr(torch.ops, ns).pwconv_bn_act_backward

    @torch.library.register_fake(f"{ns}::pwconv_bn_act")
    def _fake(x, weight, scale, shift, groups, act, residual, shuffle_groups):
        shape = _checks.check_pwconv("pwconv_bn_act", x, weight, scale, shift, groups, act, residual, shuffle_groups)
        return x.new_empty(shape).contiguous(memory_format=_layout.conv_output_format(x))

    @torch.library.register_fake(f"{ns}::pwconv_bn_act_backward")
    def _fake_backward(grad_out, x, weight, scale, shift, groups, act, residual, shuffle_groups):
        op = "pwconv_bn_act_backward"
        shape = _checks.check_pwconv(op, x, weight, scale, shift, groups, act, residual, shuffle_groups)
        _checks.check_grad_out(op, grad_out, shape)
        fmt = _layout.conv_output_format(x)
        oc = weight.shape[0]
        return (torch.empty_like(x, memory_format=fmt), torch.empty_like(weight, memory_format=torch.contiguous_format),
                _like_vector(scale, oc, x), _like_vector(shift, oc, x),
                x.new_empty(shape).contiguous(memory_format=fmt) if residual is not None else x.new_empty(0))

    if hasattr(getattr(torch.ops, ns), "pwconv_backward"):  # the C++ ops' plain-conv backward
        @torch.library.register_fake(f"{ns}::pwconv_backward")
        def _fake_plain_backward(grad_out, x, weight, groups):
            op = "pwconv_backward"
            shape = _checks.check_pwconv(op, x, weight, None, None, groups, "none", None, 1)
            _checks.check_grad_out(op, grad_out, shape)
            return (torch.empty_like(x, memory_format=_layout.conv_output_format(x)),
                    torch.empty_like(weight, memory_format=torch.contiguous_format))

    def setup(ctx, inputs, output):
        x, weight, scale, shift, groups, act, residual, shuffle_groups = inputs
        ctx.save_for_backward(x, weight, scale, shift, residual)
        ctx.conf = (groups, act, shuffle_groups)

    def backward(ctx, grad):
        x, weight, scale, shift, residual = ctx.saved_tensors
        groups, act, shuffle_groups = ctx.conf
        gx, gw, gs, gb, gr = bwd_op(grad, x, weight, scale, shift, groups, act, residual, shuffle_groups)
        return (gx, gw, gs if scale is not None else None, gb if shift is not None else None, None, None,
                gr if residual is not None else None, None)

    if autograd:
        torch.library.register_autograd(f"{ns}::pwconv_bn_act", _once_differentiable("pwconv_bn_act", backward),
                                        setup_context=setup)


def register_separable(ns, autograd=True):
    """fake + autograd for <ns>::separable_conv_bn_act and its backward (autograd=False: the
    autograd is in C++, csrc/autograd.cpp)."""
    bwd_op = getattr(torch.ops, ns).separable_conv_bn_act_backward

    @torch.library.register_fake(f"{ns}::separable_conv_bn_act")
    def _fake(x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act):
        shape = _checks.check_separable("separable_conv_bn_act", x, dw_weight, pw_weight, scale, shift, stride, padding,
                                        dilation, act)
        return x.new_empty(shape).contiguous(memory_format=_layout.conv_output_format(x))

    @torch.library.register_fake(f"{ns}::separable_conv_bn_act_backward")
    def _fake_backward(grad_out, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act):
        op = "separable_conv_bn_act_backward"
        shape = _checks.check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act)
        _checks.check_grad_out(op, grad_out, shape)
        oc = pw_weight.shape[0]
        return (torch.empty_like(x, memory_format=_layout.conv_output_format(x)),
                torch.empty_like(dw_weight, memory_format=torch.contiguous_format),
                torch.empty_like(pw_weight, memory_format=torch.contiguous_format),
                _like_vector(scale, oc, x), _like_vector(shift, oc, x))

    def setup(ctx, inputs, output):
        x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act = inputs
        ctx.save_for_backward(x, dw_weight, pw_weight, scale, shift)
        ctx.conf = (stride, padding, dilation, act)

    def backward(ctx, grad):
        x, dw_weight, pw_weight, scale, shift = ctx.saved_tensors
        gx, gd, gp, gs, gb = bwd_op(grad, x, dw_weight, pw_weight, scale, shift, *ctx.conf)
        return (gx, gd, gp, gs if scale is not None else None, gb if shift is not None else None,
                None, None, None, None)

    if autograd:
        torch.library.register_autograd(f"{ns}::separable_conv_bn_act",
                                        _once_differentiable("separable_conv_bn_act", backward), setup_context=setup)


def register_inverted_residual(ns):
    """fake + autograd + CUDA for <ns>::inverted_residual. The backward recomputes the block's
    expanded and depthwise tensors with the fused ops and chains their backward ops; on CUDA the
    op is those fused ops in sequence (the one-kernel block is CPU only)."""
    ops_ = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::inverted_residual")
    def _fake(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride, act, residual, se_w1=None, se_b1=None, se_w2=None,
              se_b2=None):
        shape = _checks.check_inverted_residual("inverted_residual", x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride,
                                                act, residual, se_w1, se_b1, se_w2, se_b2)
        return x.new_empty(shape).contiguous(memory_format=torch.channels_last)

    @torch.library.impl(f"{ns}::inverted_residual", "CUDA")
    def _cuda(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride, act, residual, se_w1=None, se_b1=None, se_w2=None,
              se_b2=None):
        # No block kernel on CUDA yet: the fused ops' CUDA kernels, one after the other.
        _, _, p = reference.inverted_residual_steps(x, w1, s1, b1, w2, s2, b2, stride, act,
                                                    (se_w1, se_b1, se_w2, se_b2), ops_)
        y = ops_.pwconv_bn_act(p, w3, s3, b3, 1, "none", x if residual else None, 1)
        return y.contiguous(memory_format=torch.channels_last)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:10], *inputs[13:])
        ctx.conf = inputs[10:13]
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad):
        x, w1, s1, b1, w2, s2, b2, w3, s3, b3, *se = ctx.saved_tensors
        se = tuple(se) + (None,) * (4 - len(se))
        stride, act, residual = ctx.conf
        k = w2.shape[-1]
        geometry = ([stride, stride], [k // 2, k // 2], [1, 1])
        e, d, p = reference.inverted_residual_steps(x, w1, s1, b1, w2, s2, b2, stride, act, se, ops_)
        gp, gw3, gs3, gb3, _ = ops_.pwconv_bn_act_backward(grad, p, w3, s3, b3, 1, "none", None, 1)
        gse = (None,) * 4
        if se[0] is not None:
            gd, *gse = ops_.squeeze_excite_backward(gp, d, *se, "relu", "hardsigmoid")
        else:
            gd = gp
        ge, gw2, gs2, gb2 = ops_.dwconv_bn_act_backward(gd, e, w2, s2, b2, *geometry, act)
        if w1 is None:  # no expansion: e is x
            gx, gw1, gs1, gb1 = ge, None, None, None
        else:
            gx, gw1, gs1, gb1, _ = ops_.pwconv_bn_act_backward(ge, x, w1, s1, b1, 1, act, None, 1)
        if residual:
            gx = gx + grad
        return (gx, gw1, gs1, gb1, gw2, gs2, gb2, gw3, gs3, gb3, None, None, None, *gse)[:ctx.n_inputs]

    torch.library.register_autograd(f"{ns}::inverted_residual", _once_differentiable("inverted_residual", backward),
                                    setup_context=setup)


def register_shuffle_v2_block(ns):
    """fake + autograd + CUDA for <ns>::shuffle_v2_block, as for inverted_residual: the backward
    recomputes the branches' tensors with the fused ops and chains their backward ops; on CUDA
    the op is those fused ops in sequence (the one-kernel unit is CPU only)."""
    ops_ = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::shuffle_v2_block")
    def _fake(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act="relu", stride=1, w4=None, s4=None, b4=None, w5=None,
              s5=None, b5=None):
        shape = _checks.check_shuffle_v2_block("shuffle_v2_block", x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act, stride,
                                               w4, s4, b4, w5, s5, b5)
        return x.new_empty(shape).contiguous(memory_format=torch.channels_last)

    @torch.library.impl(f"{ns}::shuffle_v2_block", "CUDA")
    def _cuda(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act="relu", stride=1, w4=None, s4=None, b4=None, w5=None,
              s5=None, b5=None):
        branch1 = (w4, s4, b4, w5, s5, b5)
        x1, _, _, d, _ = reference.shuffle_v2_block_steps(x, w1, s1, b1, w2, s2, b2, act, stride, branch1, ops_)
        b = ops_.pwconv_bn_act(d, w3, s3, b3, 1, act, None, 1)
        return ops_.concat_shuffle(x1.contiguous(memory_format=torch.channels_last), b).contiguous(
            memory_format=torch.channels_last)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:10], *inputs[12:])
        ctx.conf = (tuple(inputs[10:12]) + ("relu", 1)[len(inputs[10:12]):])
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad):
        x, w1, s1, b1, w2, s2, b2, w3, s3, b3, *branch1 = ctx.saved_tensors
        branch1 = tuple(branch1) + (None,) * (6 - len(branch1))
        act, stride = ctx.conf
        geometry = lambda w: ([stride, stride], [w.shape[-1] // 2] * 2, [1, 1])  # noqa: E731
        x1, x2, e, d, c1 = reference.shuffle_v2_block_steps(x, w1, s1, b1, w2, s2, b2, act, stride, branch1, ops_)
        g1, gb = ops_.concat_shuffle_backward(grad, x1.shape[1])
        gd, gw3, gs3, gb3, _ = ops_.pwconv_bn_act_backward(gb, d, w3, s3, b3, 1, act, None, 1)
        ge, gw2, gs2, gb2 = ops_.dwconv_bn_act_backward(gd, e, w2, s2, b2, *geometry(w2), "none")
        g2, gw1, gs1, gb1, _ = ops_.pwconv_bn_act_backward(ge, x2, w1, s1, b1, 1, act, None, 1)
        g_branch1 = (None,) * 6
        if stride == 1:
            gx = torch.cat([g1, g2], 1)
        else:  # branch1: its 1x1 conv, then its depthwise conv on x
            w4, s4, b4, w5, s5, b5 = branch1
            gc1, gw5, gs5, gb5, _ = ops_.pwconv_bn_act_backward(g1, c1, w5, s5, b5, 1, act, None, 1)
            gx1, gw4, gs4, gb4 = ops_.dwconv_bn_act_backward(gc1, x, w4, s4, b4, *geometry(w4), "none")
            gx, g_branch1 = g2 + gx1, (gw4, gs4, gb4, gw5, gs5, gb5)
        gx = gx.contiguous(memory_format=_layout.conv_output_format(x))
        return (gx, gw1, gs1, gb1, gw2, gs2, gb2, gw3, gs3, gb3, None, None, *g_branch1)[:ctx.n_inputs]

    torch.library.register_autograd(f"{ns}::shuffle_v2_block", _once_differentiable("shuffle_v2_block", backward),
                                    setup_context=setup)


def register_stem_conv(ns):
    """fake + autograd for <ns>::stem_conv_bn_act and its backward; the backward's CPU and CUDA
    impls, and the forward's CUDA impl, are the reference (the one-pass kernel is CPU only)."""
    ops_ = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::stem_conv_bn_act")
    def _fake(x, weight, scale, shift, stride, padding, act, pool_kernel=(1, 1), pool_stride=(1, 1),
              pool_padding=(0, 0)):
        shape = _checks.check_stem_conv("stem_conv_bn_act", x, weight, scale, shift, stride, padding, act, pool_kernel,
                                        pool_stride, pool_padding)
        return x.new_empty(shape).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake(f"{ns}::stem_conv_bn_act_backward")
    def _fake_backward(grad_out, x, weight, scale, shift, stride, padding, act, pool_kernel, pool_stride,
                       pool_padding):
        op = "stem_conv_bn_act_backward"
        shape = _checks.check_stem_conv(op, x, weight, scale, shift, stride, padding, act, pool_kernel, pool_stride,
                                        pool_padding)
        _checks.check_grad_out(op, grad_out, shape)
        oc = weight.shape[0]
        return (torch.empty_like(x, memory_format=_layout.conv_output_format(x)),
                torch.empty_like(weight, memory_format=torch.contiguous_format), _like_vector(scale, oc, x),
                _like_vector(shift, oc, x))

    @torch.library.impl(f"{ns}::stem_conv_bn_act", "CUDA")
    def _cuda(x, weight, scale, shift, stride, padding, act, pool_kernel=(1, 1), pool_stride=(1, 1),
              pool_padding=(0, 0)):
        y = reference.stem_conv_bn_act(x, weight, scale, shift, stride, padding, act, pool_kernel, pool_stride,
                                       pool_padding)
        return y.contiguous(memory_format=torch.channels_last)

    for device in ("CPU", "CUDA"):
        torch.library.impl(f"{ns}::stem_conv_bn_act_backward", device)(reference.stem_conv_bn_act_backward)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:4])
        ctx.conf = tuple(inputs[4:]) + ((1, 1), (1, 1), (0, 0))[len(inputs) - 7:]

    def backward(ctx, grad):
        x, weight, scale, shift = ctx.saved_tensors
        gx, gw, gs, gb = ops_.stem_conv_bn_act_backward(grad, x, weight, scale, shift, *ctx.conf)
        return (gx, gw, gs if scale is not None else None, gb if shift is not None else None) + (None,) * 6

    torch.library.register_autograd(f"{ns}::stem_conv_bn_act", _once_differentiable("stem_conv_bn_act", backward),
                                    setup_context=setup)


if _extension.has_extension():
    register_inverted_residual("fastops")
    register_shuffle_v2_block("fastops")
    register_stem_conv("fastops")
    # autograd in C++ (csrc/autograd.cpp) for every op but the blocks: a training step runs them
    # once per depthwise conv / BatchNorm / shuffle / activation, where the Python autograd layer
    # cost ~30-50 us a forward call, ~20-30 a backward
    register_activation("fastops", "hardswish", hardswish_second_derivative, autograd=False)
    register_activation("fastops", "hardsigmoid", hardsigmoid_second_derivative, autograd=False)
    register_dwconv("fastops", autograd=False)
    register_bn_act("fastops", autograd=False)
    register_shuffle("fastops", autograd=False)
    register_squeeze_excite("fastops", autograd=False)
    register_pwconv("fastops", autograd=False)
    register_separable("fastops", autograd=False)
    # the CUDA build's test hook (csrc/cuda/dwconv.cu): a CPU op without autograd, whose outputs
    # the tests only compare
    if hasattr(torch.ops.fastops_testing, "dwconv_bn_act_cl_vec"):
        torch.library.register_fake("fastops_testing::dwconv_bn_act_cl_vec")(_dwconv_fake("dwconv_bn_act_cl_vec"))


# ---------------------------------------------------------------------------------------------
# Choosing the implementation
# ---------------------------------------------------------------------------------------------


def _impl(op: str, x: torch.Tensor):
    """The callable that runs `op` for tensors like `x`; same signature as torch.ops.fastops.<op>."""
    device = x.device.type
    if device == "cuda":
        triton_ok = _backend.triton_available()
        if _backend.resolve(op.rstrip("_")) == "triton" and triton_ok:
            from . import triton as fastops_triton

            return getattr(fastops_triton.ops, op)
        if _extension.has_cuda_kernels():
            return getattr(torch.ops.fastops, op)
        if triton_ok:
            from . import triton as fastops_triton

            return getattr(fastops_triton.ops, op)
    elif device in ("cpu", "meta") and _extension.has_extension():
        return getattr(torch.ops.fastops, op)
    return getattr(reference, op)


def _pick(op: str, x: torch.Tensor, impl):
    """`impl` is an op namespace to use (fastops.triton forces its own), or None to choose."""
    return _impl(op, x) if impl is None else getattr(impl, op)


def _activation(op: str, x: torch.Tensor, inplace: bool, impl=None) -> torch.Tensor:
    _checks.check_floating(op, "x", x)
    if not inplace:
        return _pick(op, x, impl)(x)
    _checks.check_writable(op, "x", x)
    if torch.is_grad_enabled() and x.requires_grad:
        # Autograd needs x's old value: compute from a copy, then write back, exactly the
        # semantics of torch's in-place activations (a leaf that requires grad is refused).
        return x.copy_(_pick(op, x, impl)(x.clone()))
    _pick(op + "_", x, impl)(x)
    return x


def _activation_backward(op: str, grad_out: torch.Tensor, x: torch.Tensor, impl=None) -> torch.Tensor:
    _checks.check_floating(op, "x", x)
    _checks.check_like(op, "grad_out", grad_out, "x", x)
    return _pick(op, x, impl)(grad_out, x)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def hardswish(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x * relu6(x + 3) / 6 (MobileNet V3), forward and backward fused into one pass each."""
    return _activation("hardswish", x, inplace)


def hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """relu6(x + 3) / 6 (MobileNet V3's squeeze-excite gate)."""
    return _activation("hardsigmoid", x, inplace)


def hardswish_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of hardswish at x, times grad_out."""
    return _activation_backward("hardswish_backward", grad_out, x)


def hardsigmoid_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of hardsigmoid at x, times grad_out."""
    return _activation_backward("hardsigmoid_backward", grad_out, x)


def dwconv_bn_act(x, weight, scale=None, shift=None, stride=1, padding=0, dilation=1, act="none", impl=None):
    """Depthwise convolution, per-channel affine (a folded BatchNorm, or a bias with scale=None)
    and activation in one pass: `act(conv(x, weight) * scale[c] + shift[c])`.

    weight: [C*m, 1, kh, kw] (channel multiplier m >= 1); stride / padding / dilation: int or
    pair; act: one of "none", "relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu".
    The output keeps x's memory format. Differentiable in x, weight, scale and shift."""
    op = "dwconv_bn_act"
    stride, padding, dilation = (_checks.pair(op, n, v) for n, v in (("stride", stride), ("padding", padding), ("dilation", dilation)))
    _checks.check_dwconv(op, x, weight, scale, shift, stride, padding, dilation, act)
    return _pick(op, x, impl)(x, weight, scale, shift, stride, padding, dilation, act)


def bn_act_train(x, weight=None, bias=None, eps=1e-5, act="none", impl=None):
    """Training-mode BatchNorm then activation, in two passes over x (statistics; normalise +
    affine + activation): returns (y, mean, var), the batch statistics per channel (var biased)
    and y = act((x - mean) / sqrt(var + eps) * weight + bias), in x's layout. Gradients flow to x,
    weight and bias through the statistics, as with F.batch_norm(training=True). Running
    statistics are the caller's (fastops.nn.ConvBNAct updates them like nn.BatchNorm2d)."""
    op = "bn_act_train"
    _checks.check_bn_act(op, x, weight, bias, eps, act)
    return _pick(op, x, impl)(x, weight, bias, float(eps), act)


def bn_act_train_backward(grad_out, x, mean, var, weight=None, bias=None, eps=1e-5, act="none", impl=None):
    """(grad_x, grad_weight, grad_bias) of bn_act_train, given its mean and var."""
    op = "bn_act_train_backward"
    _checks.check_bn_act_backward(op, grad_out, x, mean, var, weight, bias, eps, act)
    return _pick(op, x, impl)(grad_out, x, mean, var, weight, bias, float(eps), act)


def channel_shuffle(x, groups, impl=None):
    """ShuffleNet's channel shuffle, `x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W)`,
    in one pass that keeps x's memory format (channels_last in, channels_last out)."""
    _checks.check_channel_shuffle("channel_shuffle", x, groups)
    return _pick("channel_shuffle", x, impl)(x, groups)


def concat_shuffle(a, b, impl=None):
    """`channel_shuffle(torch.cat([a, b], 1), 2)` in one pass (ShuffleNet V2's unit tail), in a's
    memory format."""
    _checks.check_concat_shuffle("concat_shuffle", a, b)
    return _pick("concat_shuffle", a, impl)(a, b)


def squeeze_excite(x, w1, b1, w2, b2, act="relu", gate="hardsigmoid", impl=None):
    """Squeeze-and-excitation: `x * gate(w2 @ act(w1 @ mean_hw(x) + b1) + b2)` per (n, c), one
    read of x to pool and one read + write to scale. w1: [S, C] or [S, C, 1, 1] (torchvision's
    `fc1.weight`), w2: [C, S] or [C, S, 1, 1]; b1 / b2 may be None. Differentiable in all five."""
    _checks.check_squeeze_excite("squeeze_excite", x, w1, b1, w2, b2, act, gate)
    return _pick("squeeze_excite", x, impl)(x, w1, b1, w2, b2, act, gate)


def pwconv_bn_act(x, weight, scale=None, shift=None, groups=1, act="none", residual=None, shuffle_groups=1,
                  impl=None):
    """1x1 convolution (grouped with `groups`) with a fused epilogue:
    `act(conv(x) * scale[o] + shift[o] + residual)`, written in channel-shuffled order when
    shuffle_groups > 1 (ShuffleNet's shuffle at no cost). weight: [OC, C/groups, 1, 1]; scale,
    shift and residual ([N, OC, H, W]) may be None. Keeps x's memory format."""
    op = "pwconv_bn_act"
    _checks.check_pwconv(op, x, weight, scale, shift, groups, act, residual, shuffle_groups)
    return _pick(op, x, impl)(x, weight, scale, shift, groups, act, residual, shuffle_groups)


def separable_conv_bn_act(x, dw_weight, pw_weight, scale=None, shift=None, stride=1, padding=0, dilation=1,
                          act="none", impl=None):
    """Depthwise conv then 1x1 conv, affine and activation (Xception's SeparableConv2d + BN + act,
    MobileNet V1's pair), the depthwise result never written out whole: `act(pw(dw(x)) * scale + shift)`.
    dw_weight: [C*m, 1, kh, kw]; pw_weight: [OC, C*m, 1, 1]. Keeps x's memory format."""
    op = "separable_conv_bn_act"
    stride, padding, dilation = (_checks.pair(op, n, v) for n, v in (("stride", stride), ("padding", padding), ("dilation", dilation)))
    _checks.check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act)
    return _pick(op, x, impl)(x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act)


def inverted_residual(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride=1, act="relu6", residual=False, se_w1=None,
                      se_b1=None, se_w2=None, se_b2=None):
    """MobileNet V2's / V3's inverted residual block, BatchNorms folded into (scale, shift)
    pairs: `act(conv1x1(x, w1) * s1 + b1)` (w1 [E, C, 1, 1]; w1, s1, b1 all None for a block
    without expansion, E = C, as MobileNet V2's first), then `act(dwconv(., w2,
    stride, padding k // 2) * s2 + b2)` (w2 [E, 1, k, k], k odd), then, with se_w1 given,
    MobileNet V3's squeeze-excite (`squeeze_excite(., se_w1, se_b1, se_w2, se_b2, "relu",
    "hardsigmoid")`), then `conv1x1(., w3) * s3 + b3` (w3 [O, E, 1, 1]), plus x when residual. On
    CPU, for float32 input laid out channels_last, one kernel that never writes the E-channel
    tensors to memory (csrc/cpu/inverted_residual.cpp); elsewhere the composition of
    pwconv_bn_act, dwconv_bn_act and squeeze_excite, with the same answer. Differentiable in every
    tensor. Output channels_last on the kernel's path, in x's layout otherwise."""
    op = "inverted_residual"
    se = (se_w1, se_b1, se_w2, se_b2)
    _checks.check_inverted_residual(op, x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride, act, residual, *se)
    if x.device.type == "cpu" and x.dtype == torch.float32 and _extension.has_extension() \
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.ops.fastops.inverted_residual(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride, act, residual, *se)
    _, _, p = reference.inverted_residual_steps(x, w1, s1, b1, w2, s2, b2, stride, act, se, sys.modules[__name__])
    return pwconv_bn_act(p, w3, s3, b3, 1, "none", x if residual else None)


def shuffle_v2_block(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act="relu", stride=1, w4=None, s4=None, b4=None,
                     w5=None, s5=None, b5=None):
    """ShuffleNet V2's unit, BatchNorms folded into (scale, shift) pairs. Stride 1: x's channels
    split in halves x1, x2. Stride > 1 (the unit that halves the map): x2 = x, and x1 is branch1,
    `act(conv1x1(dwconv(x, w4, stride, padding k // 2) * s4 + b4, w5) * s5 + b5)` (w4 [C, 1, k,
    k], w5 [B, C, 1, 1]; these six given exactly when stride > 1). Then branch2 on x2:
    `act(conv1x1(x2, w1) * s1 + b1)` (w1 [E, C/2 or C, 1, 1]), `dwconv(., w2, stride, padding
    k // 2) * s2 + b2` (w2 [E, 1, k, k], k odd; no activation), `act(conv1x1(., w3) * s3 + b3)`
    (w3 [B, E, 1, 1], B = C/2 at stride 1); then `concat_shuffle(x1, .)`. On CPU, for float32
    input laid out channels_last, each branch is one kernel that never writes its intermediate
    tensors to memory, the split half read in place and branch2's result woven with x1 straight
    into the output (csrc/cpu/shuffle_v2_block.cpp); elsewhere the composition of
    pwconv_bn_act, dwconv_bn_act and concat_shuffle, with the same answer. Differentiable in
    every tensor. Output channels_last on the kernel's path, in x's layout otherwise."""
    op = "shuffle_v2_block"
    branch1 = (w4, s4, b4, w5, s5, b5)
    _checks.check_shuffle_v2_block(op, x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act, stride, *branch1)
    if x.device.type == "cpu" and x.dtype == torch.float32 and _extension.has_extension() \
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.ops.fastops.shuffle_v2_block(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act, stride, *branch1)
    x1, _, _, d, _ = reference.shuffle_v2_block_steps(x, w1, s1, b1, w2, s2, b2, act, stride, branch1,
                                                      sys.modules[__name__])
    return concat_shuffle(x1, pwconv_bn_act(d, w3, s3, b3, 1, act))


def stem_conv_bn_act(x, weight, scale=None, shift=None, stride=1, padding=0, act="none", pool_kernel=1, pool_stride=1,
                     pool_padding=0):
    """A network's first layer: `act(conv2d(x, weight, stride, padding) * scale[o] + shift[o])`
    (a dense conv, weight [OC, C, kh, kw]; `scale`/`shift`, a folded BatchNorm, may be None),
    then, unless pool_kernel and pool_stride are both 1, `max_pool2d(., pool_kernel,
    pool_stride, pool_padding)` (ShuffleNet's and ResNet's 3, 2, 1). stride ... pool_padding:
    int or pair. On CPU, for float32 input laid out channels_last, one kernel that never writes
    the conv output when pooling (csrc/cpu/stem_conv.cpp; fast for few input channels, as an
    image's); elsewhere the reference composition, with the same answer. Differentiable in x,
    weight, scale and shift. Output channels_last on the kernel's path, in x's layout otherwise."""
    op = "stem_conv_bn_act"
    conf = [_checks.pair(op, n, v) for n, v in (("stride", stride), ("padding", padding), ("pool_kernel", pool_kernel),
                                                 ("pool_stride", pool_stride), ("pool_padding", pool_padding))]
    _checks.check_stem_conv(op, x, weight, scale, shift, conf[0], conf[1], act, *conf[2:])
    if x.device.type == "cpu" and x.dtype == torch.float32 and _extension.has_extension() \
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.ops.fastops.stem_conv_bn_act(x, weight, scale, shift, conf[0], conf[1], act, *conf[2:])
    return reference.stem_conv_bn_act(x, weight, scale, shift, conf[0], conf[1], act, *conf[2:])
