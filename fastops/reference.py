"""Plain-PyTorch compositions of every fastops op: the truth the kernels are tested against, and
the fallback for any case no kernel covers. Same signatures as `fastops.ops`.

Nothing here is fast; everything here is obviously right, differentiable, and runs on any device
and dtype PyTorch supports.
"""

import torch
import torch.nn.functional as F

__all__ = ["hardswish", "hardsigmoid", "hardswish_backward", "hardsigmoid_backward", "hardswish_", "hardsigmoid_"]


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
