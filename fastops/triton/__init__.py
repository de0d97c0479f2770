"""fastops' Triton kernels, callable directly: `fastops.triton.hardswish(x)`.

Each kernel is wrapped as a torch custom op (`torch.ops.fastops_triton.<op>`) with a fake impl
and autograd, so it works in eager, autograd and torch.compile like the C++ ops. On CUDA
tensors they run on the GPU; on CPU tensors they run under Triton's interpreter, which must be
switched on with TRITON_INTERPRET=1 *before* this module is first imported (Triton binds the
interpreter when a kernel is defined). That is how CI checks them.
"""

import torch

from typing import List, Optional, Tuple

from .. import ops as _ops
from . import activation as _activation
from . import bn_act as _bn_act
from . import dwconv as _dwconv

__all__ = [
    "hardswish", "hardsigmoid", "hardswish_backward", "hardsigmoid_backward", "dwconv_bn_act", "bn_act_train", "ops",
]


def _define_activation(name):
    @torch.library.custom_op(f"fastops_triton::{name}", mutates_args=())
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _activation.forward(name, x)

    @torch.library.custom_op(f"fastops_triton::{name}_backward", mutates_args=())
    def backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _activation.backward(name, grad_out, x)

    @torch.library.custom_op(f"fastops_triton::{name}_", mutates_args=("x",))
    def forward_(x: torch.Tensor) -> None:
        _activation.forward_(name, x)


_define_activation("hardswish")
_define_activation("hardsigmoid")
_ops.register_activation("fastops_triton", "hardswish", _ops.hardswish_second_derivative)
_ops.register_activation("fastops_triton", "hardsigmoid", _ops.hardsigmoid_second_derivative)


@torch.library.custom_op("fastops_triton::dwconv_bn_act", mutates_args=())
def _dwconv_forward(
    x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
    stride: List[int], padding: List[int], dilation: List[int], act: str,
) -> torch.Tensor:
    return _dwconv.forward(x, weight, scale, shift, stride, padding, dilation, act)


@torch.library.custom_op("fastops_triton::dwconv_bn_act_backward", mutates_args=())
def _dwconv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor], stride: List[int], padding: List[int], dilation: List[int], act: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _dwconv.backward(grad_out, x, weight, scale, shift, stride, padding, dilation, act)


_ops.register_dwconv("fastops_triton")


@torch.library.custom_op("fastops_triton::bn_act_train", mutates_args=())
def _bn_act_forward(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float, act: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bn_act.forward(x, weight, bias, eps, act)


@torch.library.custom_op("fastops_triton::bn_act_train_backward", mutates_args=())
def _bn_act_backward(
    grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], eps: float, act: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bn_act.backward(grad_out, x, mean, var, weight, bias, eps, act)


_ops.register_bn_act("fastops_triton")

# The Triton ops, looked up by name (fastops.ops picks from here when the backend is "triton").
ops = torch.ops.fastops_triton


def hardswish(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """hardswish through the Triton kernel, on any tensors (see the module docstring)."""
    return _ops._activation("hardswish", x, inplace, impl=ops)


def hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """hardsigmoid through the Triton kernel."""
    return _ops._activation("hardsigmoid", x, inplace, impl=ops)


def hardswish_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _ops._activation_backward("hardswish_backward", grad_out, x, impl=ops)


def hardsigmoid_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _ops._activation_backward("hardsigmoid_backward", grad_out, x, impl=ops)


def dwconv_bn_act(x, weight, scale=None, shift=None, stride=1, padding=0, dilation=1, act="none"):
    """dwconv_bn_act through the Triton kernels (see fastops.ops.dwconv_bn_act)."""
    return _ops.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act, impl=ops)


def bn_act_train(x, weight=None, bias=None, eps=1e-5, act="none"):
    """bn_act_train through the Triton kernels (see fastops.ops.bn_act_train): (y, mean, var)."""
    return _ops.bn_act_train(x, weight, bias, eps, act, impl=ops)
