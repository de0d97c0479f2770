"""`SeparableConv2d`: Xception's depthwise-then-pointwise convolution (timm `legacy_xception`'s
module, same parameter names), with the depthwise result never written out; and
`separable_bn_act`, the same followed by a BatchNorm and an activation in the one kernel."""

from typing import Optional

import torch
from torch import nn

from .. import ops, reference
from .conv import _cached, _update_running_stats, act_name, fold_bn


class SeparableConv2d(nn.Module):
    """`pointwise(conv1(x))`: `conv1` a depthwise conv (`in_channels` groups), `pointwise` a 1x1
    conv, both without bias unless `bias=True`, as in timm's `legacy_xception`. Runs
    `fastops.ops.separable_conv_bn_act` (a conv bias folds into its shift)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation, groups=in_channels,
                               bias=bias)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, 1, 0, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return separable_bn_act(x, self)


def _fusable(sep: nn.Module, bn: Optional[nn.Module]) -> bool:
    dw, pw = sep.conv1, sep.pointwise
    return (
        type(dw) is nn.Conv2d and type(pw) is nn.Conv2d
        and not isinstance(dw.padding, str) and dw.padding_mode == "zeros"
        and dw.groups == dw.in_channels and pw.kernel_size == (1, 1) and pw.stride == (1, 1)
        and pw.padding == (0, 0) and pw.groups == 1
        and (bn is None or type(bn) is nn.BatchNorm2d)
    )


def _bias_through(sep: nn.Module) -> Optional[torch.Tensor]:
    """The separable conv's biases as one bias after the pointwise conv:
    pw(dw(x) + b1) + b2 = pw(dw(x)) + (W_pw @ b1 + b2)."""
    dw, pw = sep.conv1, sep.pointwise
    if dw.bias is None:
        return pw.bias
    through = pw.weight.flatten(1) @ dw.bias
    return through if pw.bias is None else through + pw.bias


def separable_bn_act(x: torch.Tensor, sep: nn.Module, bn: Optional[nn.BatchNorm2d] = None, act=None,
                     residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`act(bn(sep(x))) + residual` for a SeparableConv2d-shaped module `sep` (children `conv1`,
    depthwise, and `pointwise`, 1x1): in eval mode (or without bn) one `separable_conv_bn_act`
    with the BN folded into its scale and shift; with batch statistics the separable conv, then
    `bn_act_train` (running statistics updated as nn.BatchNorm2d does). The residual is added
    after the activation. Modules of another shape run as they are."""
    name = act if isinstance(act, str) or act is None else act_name(act)
    name = "none" if name is None and act is None else name
    if name is None or x.dim() != 4 or not _fusable(sep, bn):
        y = sep.pointwise(sep.conv1(x))
        if bn is not None:
            y = bn(y)
        if act is not None:
            y = act(y) if isinstance(act, nn.Module) else reference.activation(y, act)
        return y if residual is None else y + residual
    dw, pw = sep.conv1, sep.pointwise
    if bn is not None and (bn.training or bn.running_mean is None):
        z = separable_bn_act(x, sep)
        y, mean, var = ops.bn_act_train(z, bn.weight, bn.bias, bn.eps, name)
        _update_running_stats(bn, mean, var, z)
    else:
        if bn is None:
            scale, shift = None, _bias_through(sep)
        else:
            tensors = (bn.running_mean, bn.running_var, bn.weight, bn.bias, dw.bias, pw.bias, pw.weight)
            scale, shift = _cached(sep, "_fastops_fold", tensors, bn.eps, lambda: fold_bn(bn, _bias_through(sep)))
        y = ops.separable_conv_bn_act(x, dw.weight, pw.weight, scale, shift, dw.stride, dw.padding, dw.dilation, name)
    return y if residual is None else y + residual
