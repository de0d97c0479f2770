"""Plain-PyTorch compositions of every fastops op: the truth the kernels are tested against, and
the fallback for any case no kernel covers. Same signatures as `fastops.ops`.

Nothing here is fast; everything here is obviously right, differentiable, and runs on any device
and dtype PyTorch supports.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS", "activation", "hardswish", "hardsigmoid", "hardswish_backward", "hardsigmoid_backward",
    "hardswish_", "hardsigmoid_", "dwconv_bn_act", "bn_act_train", "bn_act_train_backward",
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
    from ._layout import conv_output_format

    y, mean, var = _bn_act_train(x, weight, bias, eps, act)
    return y.to(x.dtype).contiguous(memory_format=conv_output_format(x)), mean, var


def bn_act_train_backward(grad_out, x, mean, var, weight=None, bias=None, eps=1e-5, act="none"):
    """(grad_x, grad_weight, grad_bias) of bn_act_train's y, by autograd through the reference;
    grad_weight / grad_bias as if weight = 1 / bias = 0 where those are None. (mean / var are
    recomputed from x: they are its batch statistics.)"""
    from ._layout import conv_output_format

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
