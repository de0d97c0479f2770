"""`InvertedResidual`: MobileNet V2's block (expand 1x1 -> depthwise -> linear 1x1, residual when
the shapes allow) and MobileNet V3's (optional squeeze-excite, hardswish or ReLU, kernel 3 or 5),
with torchvision's parameter names, on fused kernels: each conv + BN + activation is one kernel,
and the residual add happens in the projection's epilogue."""

from typing import Callable, Optional

import torch
from torch import nn

from .conv import ConvBNAct
from .sequential import FusedSequential
from .squeeze_excite import SqueezeExcite


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """v rounded to the nearest multiple of divisor, at least min_value (default divisor) and not
    below 90% of v: the channel rounding of the MobileNet papers (and torchvision)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


class InvertedResidual(nn.Module):
    """MobileNet V2's inverted residual, `InvertedResidual(inp, oup, stride, expand_ratio)`, with
    the children of `torchvision.models.mobilenetv2.InvertedResidual` (`conv`: [expand
    ConvBNAct,] depthwise ConvBNAct, 1x1 Conv2d, BatchNorm2d). `InvertedResidual.v3(...)` builds
    MobileNet V3's flavour with the children of torchvision's V3 block (`block`: [expand,]
    depthwise, [SqueezeExcite,] project ConvBNAct). Either way `use_res_connect` says whether the
    input is added to the output (stride 1 and equal channels); the add runs in the projection's
    epilogue."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"fastops.nn.InvertedResidual: stride must be 1 or 2, got {stride}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, norm_layer=norm_layer, activation_layer=nn.ReLU6),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ]
        self.conv = FusedSequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    @classmethod
    def v3(cls, input_channels: int, kernel: int, expanded_channels: int, out_channels: int, use_se: bool,
           activation: str, stride: int, dilation: int = 1,
           norm_layer: Optional[Callable[..., nn.Module]] = None) -> "InvertedResidual":
        """MobileNet V3's block, with torchvision's arguments (its InvertedResidualConfig's fields;
        activation "HS" for hardswish or "RE" for ReLU) and its children (`block`)."""
        if stride not in (1, 2):
            raise ValueError(f"fastops.nn.InvertedResidual.v3: stride must be 1 or 2, got {stride}")
        if activation not in ("HS", "RE"):
            raise ValueError(f"fastops.nn.InvertedResidual.v3: activation must be 'HS' or 'RE', got {activation!r}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.use_res_connect = stride == 1 and input_channels == out_channels
        layers = []
        if expanded_channels != input_channels:
            layers.append(ConvBNAct(input_channels, expanded_channels, 1, norm_layer=norm_layer, activation_layer=act))
        layers.append(ConvBNAct(expanded_channels, expanded_channels, kernel, 1 if dilation > 1 else stride,
                                dilation=dilation, groups=expanded_channels, norm_layer=norm_layer,
                                activation_layer=act))
        if use_se:
            layers.append(SqueezeExcite(expanded_channels, make_divisible(expanded_channels // 4, 8)))
        layers.append(ConvBNAct(expanded_channels, out_channels, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = FusedSequential(*layers)
        self.out_channels = out_channels
        self._is_cn = stride > 1
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self._modules["block"] if "block" in self._modules else self._modules["conv"]
        residual = x if self.use_res_connect else None
        if isinstance(seq, FusedSequential):
            return seq(x, residual=residual)
        y = seq(x)
        return y if residual is None else y + residual
