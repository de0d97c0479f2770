"""Plain-PyTorch compositions of every fastops op: the truth the kernels are tested against, and
the fallback for any case no kernel covers. Same signatures as `fastops.ops`.

Nothing here is fast; everything here is obviously right, differentiable, and runs on any device
and dtype PyTorch supports.
"""

import sys

import torch
import torch.nn.functional as F

from ._layout import conv_output_format

__all__ = [
    "ACTIVATIONS", "activation", "hardswish", "hardsigmoid", "hardswish_backward", "hardsigmoid_backward",
    "hardswish_", "hardsigmoid_", "dwconv_bn_act", "bn_act_train", "bn_act_train_backward",
    "channel_shuffle", "concat_shuffle", "concat_shuffle_backward", "squeeze_excite", "squeeze_excite_backward",
    "pwconv_bn_act", "pwconv_bn_act_backward", "separable_conv_bn_act", "separable_conv_bn_act_backward",
    "inverted_residual", "shuffle_v2_block", "stem_conv_bn_act", "stem_conv_bn_act_backward", "activation_backward",
]

from ._checks import ACTIVATIONS  # the activations a fused op can end in (design.md §3)


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """The activation named `act` (one of ACTIVATIONS), out of place."""
    if act == "none":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return F.relu6(x)
    if act == "hardswish":
        return F.hardswish(x)
    if act == "hardsigmoid":
        return F.hardsigmoid(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    if act == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")


def hardswish(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x * relu6(x + 3) / 6"""
    return F.hardswish(x, inplace=inplace)


def hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """relu6(x + 3) / 6"""
    return F.hardsigmoid(x, inplace=inplace)


def hardswish_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad_out * d hardswish(x) / dx: 0 for x <= -3, 1 for x >= 3, x/3 + 1/2 otherwise."""
    return torch.ops.aten.hardswish_backward(grad_out, x)


def hardsigmoid_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad_out * d hardsigmoid(x) / dx: 1/6 for -3 < x < 3, 0 otherwise."""
    return torch.ops.aten.hardsigmoid_backward(grad_out, x)


def hardswish_(x: torch.Tensor) -> torch.Tensor:
    """In-place hardswish (the fallback of `fastops.ops.hardswish(x, inplace=True)`)."""
    return F.hardswish(x, inplace=True)


def hardsigmoid_(x: torch.Tensor) -> torch.Tensor:
    """In-place hardsigmoid."""
    return F.hardsigmoid(x, inplace=True)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def dwconv_bn_act(x, weight, scale=None, shift=None, stride=1, padding=0, dilation=1, act="none"):
    """Depthwise convolution (weight [C*m, 1, kh, kw], channel multiplier m), then
    `act(conv * scale[c] + shift[c])` per output channel c; `scale`/`shift` may be None."""
    y = F.conv2d(x, weight, None, _pair(stride), _pair(padding), _pair(dilation), groups=x.shape[1])
    if scale is not None:
        y = y * scale.to(y.dtype).view(1, -1, 1, 1)
    if shift is not None:
        y = y + shift.to(y.dtype).view(1, -1, 1, 1)
    return activation(y, act)


def _stat_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _bn_act_train(x, weight, bias, eps, act):
    """(y, mean, var) computed in the statistics' dtype (float32, float64 for float64 x)."""
    acc = _stat_dtype(x)
    xf = x.to(acc)
    var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
    u = (xf - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + eps).view(1, -1, 1, 1)
    if weight is not None:
        u = u * weight.to(acc).view(1, -1, 1, 1)
    if bias is not None:
        u = u + bias.to(acc).view(1, -1, 1, 1)
    return activation(u, act), mean, var


def bn_act_train(x, weight=None, bias=None, eps=1e-5, act="none"):
    """Training-mode BatchNorm then activation: returns (y, mean, var) with the batch statistics
    per channel (var biased, over N, H, W) and y = act((x - mean) / sqrt(var + eps) * weight + bias),
    in x's dtype and layout (channels_last when x is). Differentiable in x, weight and bias,
    through the statistics, exactly like F.batch_norm(training=True) followed by the activation."""
    y, mean, var = _bn_act_train(x, weight, bias, eps, act)
    return y.to(x.dtype).contiguous(memory_format=conv_output_format(x)), mean, var


def bn_act_train_backward(grad_out, x, mean, var, weight=None, bias=None, eps=1e-5, act="none"):
    """(grad_x, grad_weight, grad_bias) of bn_act_train's y, by autograd through the reference;
    grad_weight / grad_bias as if weight = 1 / bias = 0 where those are None. (mean / var are
    recomputed from x: they are its batch statistics.)"""
    acc = _stat_dtype(x)
    c = x.shape[1]
    with torch.enable_grad():
        xf = x.detach().to(acc).requires_grad_()
        w = (weight.detach().to(acc) if weight is not None else torch.ones(c, dtype=acc, device=x.device)).requires_grad_()
        b = (bias.detach().to(acc) if bias is not None else torch.zeros(c, dtype=acc, device=x.device)).requires_grad_()
        y, _, _ = _bn_act_train(xf, w, b, eps, act)
        gx, gw, gb = torch.autograd.grad(y, (xf, w, b), grad_out.to(acc))
    gx = gx.to(x.dtype).contiguous(memory_format=conv_output_format(x))
    return gx, gw.to(weight.dtype if weight is not None else acc), gb.to(bias.dtype if bias is not None else acc)


def _grads(fn, inputs, grad_out):
    """Autograd through the reference: the gradients of fn(*inputs) against grad_out, one per
    input (zeros for an input the output does not depend on)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def _vector(t, n, fill, like):
    """t, or a [n] vector of `fill` in like's dtype where t is None (the gradient "as if" given)."""
    return t if t is not None else torch.full((n,), fill, dtype=like.dtype, device=like.device)


def channel_shuffle(x, groups):
    """x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W), in x's layout."""
    n, c, h, w = x.shape
    y = x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    return y.contiguous(memory_format=conv_output_format(x))


def concat_shuffle(a, b):
    """channel_shuffle(cat([a, b], 1), 2) (ShuffleNet V2's unit tail), in a's layout."""
    return channel_shuffle(torch.cat([a, b.contiguous(memory_format=conv_output_format(a))], 1), 2)


def concat_shuffle_backward(grad_out, split):
    """(grad_a, grad_b) of concat_shuffle, a having `split` channels."""
    g = channel_shuffle(grad_out, grad_out.shape[1] // 2)
    fmt = conv_output_format(grad_out)
    return g[:, :split].contiguous(memory_format=fmt), g[:, split:].contiguous(memory_format=fmt)


def _fc(t, w, b):
    """t [N, K] @ w^T + b, w given as [M, K] or as a 1x1 conv's [M, K, 1, 1]."""
    return F.linear(t, w.reshape(w.shape[0], w.shape[1]), b)


def squeeze_excite(x, w1, b1, w2, b2, act="relu", gate="hardsigmoid"):
    """x * gate(w2 @ act(w1 @ mean_hw(x) + b1) + b2) per (n, c): torchvision's
    SqueezeExcitation with its fc1 / fc2 weights, in x's layout."""
    p = x.mean(dim=(2, 3))
    s = activation(_fc(activation(_fc(p, w1, b1), act), w2, b2), gate)
    return (x * s[:, :, None, None]).contiguous(memory_format=conv_output_format(x))


def squeeze_excite_backward(grad_out, x, w1, b1, w2, b2, act="relu", gate="hardsigmoid"):
    """(grad_x, grad_w1, grad_b1, grad_w2, grad_b2) of squeeze_excite."""
    b1v, b2v = _vector(b1, w1.shape[0], 0.0, x), _vector(b2, w2.shape[0], 0.0, x)
    gx, gw1, gb1, gw2, gb2 = _grads(lambda *t: squeeze_excite(*t, act, gate), (x, w1, b1v, w2, b2v), grad_out)
    return gx.contiguous(memory_format=conv_output_format(x)), gw1, gb1, gw2, gb2


def pwconv_bn_act(x, weight, scale=None, shift=None, groups=1, act="none", residual=None, shuffle_groups=1):
    """1x1 conv (weight [OC, C/groups, 1, 1]), `* scale[o] + shift[o]`, `+ residual`, act, then
    channel_shuffle(., shuffle_groups) when shuffle_groups > 1; in x's layout."""
    y = F.conv2d(x, weight, None, groups=groups)
    if scale is not None:
        y = y * scale.to(y.dtype).view(1, -1, 1, 1)
    if shift is not None:
        y = y + shift.to(y.dtype).view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    y = activation(y, act)
    if shuffle_groups > 1:
        return channel_shuffle(y, shuffle_groups)
    return y.contiguous(memory_format=conv_output_format(x))


def pwconv_bn_act_backward(grad_out, x, weight, scale=None, shift=None, groups=1, act="none", residual=None,
                           shuffle_groups=1):
    """(grad_x, grad_weight, grad_scale, grad_shift, grad_residual) of pwconv_bn_act; the
    gradients of a missing scale / shift as if scale = 1, shift = 0; grad_residual empty (0
    elements) without a residual."""
    oc = weight.shape[0]
    sc, sh = _vector(scale, oc, 1.0, x), _vector(shift, oc, 0.0, x)
    res = residual if residual is not None else torch.zeros_like(grad_out)
    fn = lambda x_, w_, s_, b_, r_: pwconv_bn_act(x_, w_, s_, b_, groups, act, r_, shuffle_groups)  # noqa: E731
    gx, gw, gs, gb, gr = _grads(fn, (x, weight, sc, sh, res), grad_out)
    fmt = conv_output_format(x)
    gr = gr.contiguous(memory_format=fmt) if residual is not None else x.new_empty(0)
    return gx.contiguous(memory_format=fmt), gw, gs, gb, gr


def separable_conv_bn_act(x, dw_weight, pw_weight, scale=None, shift=None, stride=1, padding=0, dilation=1,
                          act="none"):
    """Depthwise conv (dw_weight [C*m, 1, kh, kw]) then 1x1 conv (pw_weight [OC, C*m, 1, 1]),
    `* scale[o] + shift[o]`, act; in x's layout."""
    d = F.conv2d(x, dw_weight, None, _pair(stride), _pair(padding), _pair(dilation), groups=x.shape[1])
    return pwconv_bn_act(d, pw_weight, scale, shift, 1, act).contiguous(memory_format=conv_output_format(x))


def separable_conv_bn_act_backward(grad_out, x, dw_weight, pw_weight, scale=None, shift=None, stride=1, padding=0,
                                   dilation=1, act="none"):
    """(grad_x, grad_dw_weight, grad_pw_weight, grad_scale, grad_shift) of separable_conv_bn_act."""
    oc = pw_weight.shape[0]
    sc, sh = _vector(scale, oc, 1.0, x), _vector(shift, oc, 0.0, x)
    fn = lambda x_, d_, p_, s_, b_: separable_conv_bn_act(x_, d_, p_, s_, b_, stride, padding, dilation, act)  # noqa: E731
    gx, gd, gp, gs, gb = _grads(fn, (x, dw_weight, pw_weight, sc, sh), grad_out)
    return gx.contiguous(memory_format=conv_output_format(x)), gd, gp, gs, gb


def inverted_residual_steps(x, w1, s1, b1, w2, s2, b2, stride, act, se=(None, None, None, None), ops=None):
    """The tensors inverted_residual computes on the way to its projection: (e, d, p) with e the
    expanded tensor (x itself when w1 is None: a block without expansion), d the depthwise
    result and p the projection's input (d after the
    squeeze-excite when se = (se_w1, se_b1, se_w2, se_b2) is given, else d). `ops`: a namespace
    with pwconv_bn_act, dwconv_bn_act and squeeze_excite taking torch.ops.fastops' arguments
    (this module by default; fastops.ops and torch.ops.fastops compose the fused ops the same way)."""
    ops = ops if ops is not None else sys.modules[__name__]
    k = w2.shape[-1]
    e = x if w1 is None else ops.pwconv_bn_act(x, w1, s1, b1, 1, act, None, 1)
    d = ops.dwconv_bn_act(e, w2, s2, b2, [stride, stride], [k // 2, k // 2], [1, 1], act)
    p = d if se[0] is None else ops.squeeze_excite(d, *se, "relu", "hardsigmoid")
    return e, d, p


def inverted_residual(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride=1, act="relu6", residual=False, se_w1=None,
                      se_b1=None, se_w2=None, se_b2=None):
    """MobileNet V2's / V3's inverted residual block, BatchNorms folded:
    `e = act(conv1x1(x, w1) * s1 + b1)` (`e = x` when w1, s1, b1 are None),
    `d = act(dwconv(e, w2, stride, padding k // 2) * s2 + b2)`,
    with se_w1 given `d = squeeze_excite(d, se_w1, se_b1, se_w2, se_b2, "relu", "hardsigmoid")`
    (MobileNet V3's), then `y = conv1x1(d, w3) * s3 + b3 (+ x when residual)`; in x's layout."""
    _, _, p = inverted_residual_steps(x, w1, s1, b1, w2, s2, b2, stride, act, (se_w1, se_b1, se_w2, se_b2))
    y = pwconv_bn_act(p, w3, s3, b3, 1, "none", x if residual else None)
    return y.contiguous(memory_format=conv_output_format(x))


def shuffle_v2_block_steps(x, w1, s1, b1, w2, s2, b2, act, stride=1, branch1=(None,) * 6, ops=None):
    """The tensors shuffle_v2_block computes on the way to branch2's last 1x1 conv:
    (x1, x2, e, d, c1): x1 the half passed through (stride 1) or branch1's output (stride > 1),
    x2 branch2's input (x's second half, or x), e and d branch2's expanded tensor and depthwise
    result, c1 branch1's depthwise result (None at stride 1). `branch1` = (w4, s4, b4, w5, s5,
    b5); `ops` as for inverted_residual_steps."""
    ops = ops if ops is not None else sys.modules[__name__]
    k = w2.shape[-1]
    c1 = None
    if stride == 1:
        x1, x2 = x.chunk(2, dim=1)
    else:
        w4, s4, b4, w5, s5, b5 = branch1
        k4 = w4.shape[-1]
        c1 = ops.dwconv_bn_act(x, w4, s4, b4, [stride, stride], [k4 // 2, k4 // 2], [1, 1], "none")
        x1, x2 = ops.pwconv_bn_act(c1, w5, s5, b5, 1, act, None, 1), x
    e = ops.pwconv_bn_act(x2, w1, s1, b1, 1, act, None, 1)
    d = ops.dwconv_bn_act(e, w2, s2, b2, [stride, stride], [k // 2, k // 2], [1, 1], "none")
    return x1, x2, e, d, c1


def shuffle_v2_block(x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act="relu", stride=1, w4=None, s4=None, b4=None,
                     w5=None, s5=None, b5=None):
    """ShuffleNet V2's unit, BatchNorms folded. Stride 1: `x1, x2 = x.chunk(2, 1)`; stride > 1:
    `x1 = act(conv1x1(dwconv(x, w4, stride, padding k // 2) * s4 + b4, w5) * s5 + b5)`, `x2 = x`.
    Then `e = act(conv1x1(x2, w1) * s1 + b1)`, `d = dwconv(e, w2, stride, padding k // 2) * s2 +
    b2` (no activation), `y = concat_shuffle(x1, act(conv1x1(d, w3) * s3 + b3))`; in x's layout."""
    x1, _, _, d, _ = shuffle_v2_block_steps(x, w1, s1, b1, w2, s2, b2, act, stride, (w4, s4, b4, w5, s5, b5))
    return concat_shuffle(x1, pwconv_bn_act(d, w3, s3, b3, 1, act, None, 1))


def _pooled(pool_kernel, pool_stride) -> bool:
    return _pair(pool_kernel) != (1, 1) or _pair(pool_stride) != (1, 1)


def stem_conv_bn_act(x, weight, scale=None, shift=None, stride=1, padding=0, act="none", pool_kernel=1, pool_stride=1,
                     pool_padding=0):
    """A network's first layer: `act(conv2d(x, weight, stride, padding) * scale[o] + shift[o])`
    (a dense conv; `scale`/`shift` may be None), then `max_pool2d(., pool_kernel, pool_stride,
    pool_padding)` unless pool_kernel and pool_stride are both 1; in x's layout."""
    y = F.conv2d(x, weight, None, _pair(stride), _pair(padding))
    if scale is not None:
        y = y * scale.to(y.dtype).view(1, -1, 1, 1)
    if shift is not None:
        y = y + shift.to(y.dtype).view(1, -1, 1, 1)
    y = activation(y, act)
    if _pooled(pool_kernel, pool_stride):
        y = F.max_pool2d(y, _pair(pool_kernel), _pair(pool_stride), _pair(pool_padding))
    return y.contiguous(memory_format=conv_output_format(x))


def activation_backward(grad, u, act):
    """grad times the derivative of the activation at u, by aten's own backward ops (the
    conventions at the kinks autograd uses)."""
    aten = torch.ops.aten
    if act == "none":
        return grad
    if act == "relu":
        return aten.threshold_backward(grad, u, 0)
    if act == "relu6":
        return aten.hardtanh_backward(grad, u, 0.0, 6.0)
    if act == "hardswish":
        return aten.hardswish_backward(grad, u)
    if act == "hardsigmoid":
        return aten.hardsigmoid_backward(grad, u)
    if act == "sigmoid":
        return aten.sigmoid_backward(grad, torch.sigmoid(u))
    if act == "silu":
        return aten.silu_backward(grad, u)
    raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")


def stem_conv_bn_act_backward(grad_out, x, weight, scale=None, shift=None, stride=1, padding=0, act="none",
                              pool_kernel=1, pool_stride=1, pool_padding=0):
    """(grad_x, grad_weight, grad_scale, grad_shift) of stem_conv_bn_act (grad_scale / grad_shift
    as if scale = 1 / shift = 0 where those are None), by aten's backward ops rather than
    autograd, so that it also runs as an operator's kernel: the conv recomputed, the pool's
    gradient routed through its argmax, the activation's derivative, the affine's sums, the
    conv's backward."""
    oc = weight.shape[0]
    scale, shift = _vector(scale, oc, 1.0, x), _vector(shift, oc, 0.0, x)
    # the affine in z's dtype, as the forward applies it (scale / shift may be of another float
    # dtype); their gradients summed in float32 at least, returned in their own dtypes
    sc, sh = (t.to(x.dtype).view(1, -1, 1, 1) for t in (scale, shift))
    stride, padding = list(_pair(stride)), list(_pair(padding))
    z = F.conv2d(x, weight, None, stride, padding)
    u = z * sc + sh
    grad = grad_out
    if _pooled(pool_kernel, pool_stride):
        kernel, pstride, ppadding = (list(_pair(v)) for v in (pool_kernel, pool_stride, pool_padding))
        a = activation(u, act)
        _, idx = F.max_pool2d(a, kernel, pstride, ppadding, return_indices=True)
        grad = torch.ops.aten.max_pool2d_with_indices_backward(grad_out, a, kernel, pstride, ppadding, [1, 1], False,
                                                               idx)
    gu = activation_backward(grad, u, act)
    acc = torch.promote_types(x.dtype, torch.float32)
    gs, gb = (gu * z).sum((0, 2, 3), dtype=acc), gu.sum((0, 2, 3), dtype=acc)
    gx, gw, _ = torch.ops.aten.convolution_backward(gu * sc, x, weight, None, stride, padding, [1, 1], False, [0, 0], 1,
                                                    [True, True, False])
    return (gx.contiguous(memory_format=conv_output_format(x)), gw.contiguous(), gs.to(scale.dtype),
            gb.to(shift.dtype))
