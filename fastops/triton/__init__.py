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
from . import pwconv as _pwconv
from . import separable as _separable
from . import shuffle as _shuffle
from . import squeeze_excite as _squeeze_excite

__all__ = [
    "hardswish", "hardsigmoid", "hardswish_backward", "hardsigmoid_backward", "dwconv_bn_act", "bn_act_train",
    "channel_shuffle", "concat_shuffle", "squeeze_excite", "pwconv_bn_act", "separable_conv_bn_act", "ops",
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


@torch.library.custom_op("fastops_triton::channel_shuffle", mutates_args=())
def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    return _shuffle.channel_shuffle(x, groups)


@torch.library.custom_op("fastops_triton::concat_shuffle", mutates_args=())
def _concat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _shuffle.concat_shuffle(a, b)


@torch.library.custom_op("fastops_triton::concat_shuffle_backward", mutates_args=())
def _concat_shuffle_backward(grad_out: torch.Tensor, split: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return _shuffle.concat_shuffle_backward(grad_out, split)


_ops.register_shuffle("fastops_triton")


@torch.library.custom_op("fastops_triton::squeeze_excite", mutates_args=())
def _squeeze_excite_forward(
    x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
    act: str, gate: str,
) -> torch.Tensor:
    return _squeeze_excite.forward(x, w1, b1, w2, b2, act, gate)


@torch.library.custom_op("fastops_triton::squeeze_excite_backward", mutates_args=())
def _squeeze_excite_backward(
    grad_out: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
    b2: Optional[torch.Tensor], act: str, gate: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _squeeze_excite.backward(grad_out, x, w1, b1, w2, b2, act, gate)


_ops.register_squeeze_excite("fastops_triton")


@torch.library.custom_op("fastops_triton::pwconv_bn_act", mutates_args=())
def _pwconv_forward(
    x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], groups: int,
    act: str, residual: Optional[torch.Tensor], shuffle_groups: int,
) -> torch.Tensor:
    return _pwconv.forward(x, weight, scale, shift, groups, act, residual, shuffle_groups)


@torch.library.custom_op("fastops_triton::pwconv_bn_act_backward", mutates_args=())
def _pwconv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor], groups: int, act: str, residual: Optional[torch.Tensor], shuffle_groups: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _pwconv.backward(grad_out, x, weight, scale, shift, groups, act, residual, shuffle_groups)


_ops.register_pwconv("fastops_triton")


@torch.library.custom_op("fastops_triton::separable_conv_bn_act", mutates_args=())
def _separable_forward(
    x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor], stride: List[int], padding: List[int], dilation: List[int], act: str,
) -> torch.Tensor:
    return _separable.forward(x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act)


@torch.library.custom_op("fastops_triton::separable_conv_bn_act_backward", mutates_args=())
def _separable_backward(
    grad_out: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], stride: List[int], padding: List[int],
    dilation: List[int], act: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _separable.backward(grad_out, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act)


_ops.register_separable("fastops_triton")

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


def channel_shuffle(x, groups):
    """channel_shuffle through the Triton kernel (see fastops.ops.channel_shuffle)."""
    return _ops.channel_shuffle(x, groups, impl=ops)


def concat_shuffle(a, b):
    """concat_shuffle through the Triton kernel (see fastops.ops.concat_shuffle)."""
    return _ops.concat_shuffle(a, b, impl=ops)


def squeeze_excite(x, w1, b1, w2, b2, act="relu", gate="hardsigmoid"):
    """squeeze_excite through the Triton kernels (see fastops.ops.squeeze_excite)."""
    return _ops.squeeze_excite(x, w1, b1, w2, b2, act, gate, impl=ops)


def pwconv_bn_act(x, weight, scale=None, shift=None, groups=1, act="none", residual=None, shuffle_groups=1):
    """pwconv_bn_act through the Triton kernels (see fastops.ops.pwconv_bn_act)."""
    return _ops.pwconv_bn_act(x, weight, scale, shift, groups, act, residual, shuffle_groups, impl=ops)


def separable_conv_bn_act(x, dw_weight, pw_weight, scale=None, shift=None, stride=1, padding=0, dilation=1,
                          act="none"):
    """separable_conv_bn_act through the Triton kernels (see fastops.ops.separable_conv_bn_act)."""
    return _ops.separable_conv_bn_act(x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act,
                                      impl=ops)
