"""Xception (Chollet 2017) with the layout of timm's `legacy_xception`: `conv1`/`bn1`/`act1`,
`conv2`/`bn2`/`act2`, `block1..12`, `conv3`/`bn3`/`act3`, `conv4`/`bn4`/`act4`, `fc`."""

import torch
from torch import nn

from ..nn import SeparableConv2d, XceptionBlock
from ..nn.conv import conv_bn_act
from ..nn.separable import separable_bn_act
from ._init import init_weights
from ._registry import register_model


class Xception(nn.Module):
    """timm's `legacy_xception`: state_dict keys and shapes identical (its weights load), the
    same init; input 299x299 in the paper. Global average pooling, then `fc`."""

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.drop_rate, self.num_features = num_classes, drop_rate, 2048
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        self.block1 = XceptionBlock(64, 128, 2, 2, start_with_relu=False)
        self.block2 = XceptionBlock(128, 256, 2, 2)
        self.block3 = XceptionBlock(256, 728, 2, 2)
        for i in range(4, 12):
            setattr(self, f"block{i}", XceptionBlock(728, 728, 3, 1))
        self.block12 = XceptionBlock(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(1536, self.num_features, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(self.num_features)
        self.act4 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self, linear_std=None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn_act(x, self.conv1, self.bn1, self.act1)
        x = conv_bn_act(x, self.conv2, self.bn2, self.act2)
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = separable_bn_act(x, self.conv3, self.bn3, self.act3)
        return separable_bn_act(x, self.conv4, self.bn4, self.act4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((2, 3))
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, training=self.training)
        return self.fc(x)


@register_model
def xception(num_classes: int = 1000, **kwargs) -> Xception:
    """Xception (timm's `legacy_xception`, same keys); kwargs: drop_rate."""
    return Xception(num_classes, **kwargs)
