"""MobileNet V2 (Sandler et al. 2018) with torchvision's layout: `features`, `classifier`."""

import torch
from torch import nn

from ..nn import ConvBNAct, FusedSequential, InvertedResidual
from ..nn.mobilenet import make_divisible
from ._init import init_weights
from ._registry import register_model

# expansion t, output channels c, repeats n, first stride s
_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2: state_dict keys and shapes identical, so its weights load."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"fastops.models.mobilenet_v2: width_mult must be > 0, got {width_mult}")
        channels = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [ConvBNAct(3, channels, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in _SETTING:
            out = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, expand_ratio=t))
                channels = out
        features.append(ConvBNAct(channels, self.last_channel, 1, activation_layer=nn.ReLU6))
        self.features = FusedSequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


@register_model
def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000, **kwargs) -> MobileNetV2:
    """MobileNet V2 (torchvision's `mobilenet_v2`, same keys); kwargs: round_nearest, dropout."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, **kwargs)
