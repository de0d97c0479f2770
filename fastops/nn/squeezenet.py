"""`Fire`: SqueezeNet's module with torchvision's parameter names, on fused kernels."""

import torch
from torch import nn

from .conv import conv_bn_act


class Fire(nn.Module):
    """`Fire(inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes)`, the children of
    `torchvision.models.squeezenet.Fire`: `squeeze` (1x1, bias) + ReLU, then `expand1x1` (1x1)
    and `expand3x3` (3x3, padding 1), each + ReLU, concatenated along channels. Each conv and its
    bias and ReLU run as one kernel."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = conv_bn_act(x, self.squeeze, None, self.squeeze_activation)
        return torch.cat([conv_bn_act(s, self.expand1x1, None, self.expand1x1_activation),
                          conv_bn_act(s, self.expand3x3, None, self.expand3x3_activation)], 1)
