"""Plain-PyTorch compositions of every fastops op: the truth the kernels are tested against, and
the fallback for any case no kernel covers. Same signatures as `fastops.ops`.

Nothing here is fast; everything here is obviously right, differentiable, and runs on any device
and dtype PyTorch supports.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS", "activation", "hardswish", "hardsigmoid", "hardswish_backward", "hardsigmoid_backward",
    "hardswish_", "hardsigmoid_", "dwconv_bn_act",
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
