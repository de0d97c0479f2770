"""`SeparableConv2d`: Xception's depthwise-then-pointwise convolution (timm `legacy_xception`'s
module, same parameter names), with the depthwise result never written out."""

import torch
from torch import nn

from .. import ops


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
        dw, pw = self.conv1, self.pointwise
        if x.dim() != 4 or isinstance(dw.padding, str) or dw.padding_mode != "zeros":
            return pw(dw(x))
        shift = None
        if dw.bias is not None or pw.bias is not None:
            # pw(dw(x) + b1) + b2 = pw(dw(x)) + (W_pw @ b1 + b2)
            shift = pw.bias if pw.bias is not None else torch.zeros(pw.out_channels, dtype=x.dtype, device=x.device)
            if dw.bias is not None:
                shift = shift + pw.weight.flatten(1) @ dw.bias
        return ops.separable_conv_bn_act(x, dw.weight, pw.weight, None, shift, dw.stride, dw.padding, dw.dilation,
                                         "none")
