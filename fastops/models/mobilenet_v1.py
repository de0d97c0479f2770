"""MobileNet V1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications", Table 1), which torchvision lacks: a 3x3 stride-2 conv then 13
depthwise-separable blocks, BN + ReLU after every conv, global average pool, FC.
At width 1.0 and 224x224: 4,231,976 parameters (BN weights and biases included) and 569M
multiply-adds (convs + FC), the paper's 4.2M and 569M."""

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.conv import ConvBNAct, DepthwiseSeparable
from ..nn.sequential import FusedSequential
from ._init import init_weights
from ._registry import register_model

# (output channels, stride) of the 13 depthwise-separable blocks (Table 1)
_BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]


class MobileNetV1(nn.Module):
    """features (stem ConvBNAct, then the DepthwiseSeparable blocks), global average pool,
    classifier (Dropout, Linear). Channels are int(c * width_mult) (the paper's width
    multiplier alpha), at least 8."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"fastops.models.mobilenet_v1: width_mult must be positive, got {width_mult}")

        def width(c: int) -> int:
            return max(8, int(c * width_mult))

        channels = width(32)
        layers = [ConvBNAct(3, channels, 3, 2, activation_layer=nn.ReLU)]
        for c, s in _BLOCKS:
            layers.append(DepthwiseSeparable(channels, width(c), 3, s, act="relu"))
            channels = width(c)
        self.features = FusedSequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        self.last_channels = channels
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


@register_model
def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.0) -> nn.Module:
    """MobileNet V1 with width multiplier `width_mult` (paper: 1.0, 0.75, 0.5, 0.25)."""
    return MobileNetV1(width_mult=width_mult, num_classes=num_classes, dropout=dropout)
