"""ResNet's `BasicBlock` and `Bottleneck` (ResNeXt's, with groups and width_per_group), with
torchvision's parameter names, on fused kernels: each conv + BN + ReLU is one kernel, and the
last one adds the shortcut in its epilogue before the ReLU."""

from typing import Callable, Optional

import torch
from torch import nn

from .conv import conv_bn_act


def _check(name: str, stride: int, groups: int, dilation: int, base_width: int, norm_layer) -> Callable:
    if stride < 1 or groups < 1 or dilation < 1 or base_width < 1:
        raise ValueError(f"fastops.nn.{name}: stride, groups, dilation and base_width must be >= 1")
    return nn.BatchNorm2d if norm_layer is None else norm_layer


def _shortcut(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    d = block.downsample
    if d is None:
        return x
    mods = list(d) if isinstance(d, nn.Sequential) else []
    if len(mods) == 2 and isinstance(mods[0], nn.Conv2d) and isinstance(mods[1], nn.BatchNorm2d):
        return conv_bn_act(x, mods[0], mods[1])
    return d(x)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        norm_layer = _check("BasicBlock", stride, groups, dilation, base_width, norm_layer)
        if groups != 1 or base_width != 64 or dilation > 1:
            raise ValueError("fastops.nn.BasicBlock: groups=1, base_width=64 and dilation=1 only (as torchvision)")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_act(x, self.conv1, self.bn1, self.relu)
        return conv_bn_act(out, self.conv2, self.bn2, self.relu, residual=_shortcut(self, x))


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (stride on the 3x3): 1x1 conv-BN-ReLU, 3x3 (grouped, for
    ResNeXt) conv-BN-ReLU, 1x1 conv-BN, + shortcut, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        norm_layer = _check("Bottleneck", stride, groups, dilation, base_width, norm_layer)
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation=dilation, groups=groups, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_act(x, self.conv1, self.bn1, self.relu)
        out = conv_bn_act(out, self.conv2, self.bn2, self.relu)
        return conv_bn_act(out, self.conv3, self.bn3, self.relu, residual=_shortcut(self, x))
