"""ShuffleNet V1 (Zhang et al. 2017, "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", Table 1), which torchvision lacks: conv1 3x3 s2 (24) + BN + ReLU,
max pool 3x3 s2, stages 2-4 of ShuffleV1Block units (4, 8, 4; the first of each stride 2),
global average pool, FC.

Multiply-adds at 224x224 (convs + FC), the paper's Table 2 in brackets: at 1x
g=1 143.1M (143), g=2 140.8M (140), g=3 137.5M (137, elsewhere 140), g=4 134.3M (133),
g=8 138.4M (137); g=3 at 0.5x 37.6M (38), at 2x 524.0M (524), at 0.25x 11.0M (13: the paper
does not say how it rounds such narrow layers). The bottleneck is a quarter of
the unit's output channels, also in stride-2 units (a quarter of the branch's, out - in, would
give 127M at 1x g=3).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.conv import ConvBNAct
from ..nn.sequential import FusedSequential
from ..nn.shufflenet_v1 import ShuffleV1Block
from ..nn.stem import stem_pool
from ._init import init_weights
from ._registry import register_model

# output channels of stages 2, 3, 4 at 1x, by groups (Table 1)
_STAGE_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
_STAGE_UNITS = (4, 8, 4)


def _round(v: float, divisor: int) -> int:
    """v rounded to the nearest multiple of divisor (halves up), at least divisor."""
    return max(divisor, int(v / divisor + 0.5) * divisor)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 "s x" with groups g. The width multiplier s scales every layer's filters
    (the paper's "ShuffleNet s x"), conv1's 24 included: stage channels are rounded to a
    multiple of 4 * g (so the bottleneck, a quarter of them, divides by g), conv1's to a multiple
    of g (so each stage's first residual branch, out - in channels, divides by g). At 1x the
    channels are exactly the paper's. The first unit of stage 2 has an ungrouped first 1x1 conv."""

    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        if groups not in _STAGE_CHANNELS:
            raise ValueError(f"fastops.models.shufflenet_v1: groups must be one of 1, 2, 3, 4, 8, got {groups!r}")
        if width_mult <= 0:
            raise ValueError(f"fastops.models.shufflenet_v1: width_mult must be positive, got {width_mult}")
        self.groups = groups
        stem = _round(24 * width_mult, groups)
        self.conv1 = ConvBNAct(3, stem, 3, 2, activation_layer=nn.ReLU)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = stem
        for i, (c, n) in enumerate(zip(_STAGE_CHANNELS[groups], _STAGE_UNITS)):
            out = _round(c * width_mult, 4 * groups)
            units = [ShuffleV1Block(channels, out, groups, 2, first_group_conv=(i > 0))]
            units += [ShuffleV1Block(out, out, groups, 1) for _ in range(n - 1)]
            setattr(self, f"stage{i + 2}", FusedSequential(*units))
            channels = out
        self.fc = nn.Linear(channels, num_classes)
        self.last_channels = channels
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = stem_pool(self.conv1, self.maxpool, x)  # one kernel in inference
        x = self.stage4(self.stage3(self.stage2(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


@register_model
def shufflenet_v1(groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """ShuffleNet V1 "width_mult x" with `groups` group convolutions (1, 2, 3, 4 or 8)."""
    return ShuffleNetV1(groups=groups, width_mult=width_mult, num_classes=num_classes)
