"""MobileNet V3 Large and Small (Howard et al. 2019) with torchvision's layout: `features`,
`avgpool`, `classifier`; BatchNorm eps 0.001, momentum 0.01 as torchvision's."""

from functools import partial

import torch
from torch import nn

from ..nn import ConvBNAct, FusedSequential, InvertedResidual
from ..nn.mobilenet import make_divisible
from ._init import init_weights
from ._registry import register_model

# input, kernel, expanded, output, squeeze-excite, activation, stride
_LARGE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
]
_SMALL = [
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1),
]


class MobileNetV3(nn.Module):
    """torchvision's MobileNetV3: state_dict keys and shapes identical, so its weights load."""

    def __init__(self, setting, last_channel: int, num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"fastops.models.mobilenet_v3: width_mult must be > 0, got {width_mult}")
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)

        def ch(c):
            return make_divisible(c * width_mult, 8)

        layers = [ConvBNAct(3, ch(setting[0][0]), 3, 2, norm_layer=norm, activation_layer=nn.Hardswish)]
        for inp, k, exp, out, se, act, stride in setting:
            layers.append(InvertedResidual.v3(ch(inp), k, ch(exp), ch(out), se, act, stride, norm_layer=norm))
        last_in = ch(setting[-1][3])
        layers.append(ConvBNAct(last_in, 6 * last_in, 1, norm_layer=norm, activation_layer=nn.Hardswish))
        self.features = FusedSequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel), nn.Hardswish(inplace=True), nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model
def mobilenet_v3_large(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> MobileNetV3:
    """MobileNet V3 Large (torchvision's `mobilenet_v3_large`, same keys); kwargs: dropout."""
    return MobileNetV3(_LARGE, make_divisible(1280 * width_mult, 8), num_classes, width_mult, **kwargs)


@register_model
def mobilenet_v3_small(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> MobileNetV3:
    """MobileNet V3 Small (torchvision's `mobilenet_v3_small`, same keys); kwargs: dropout."""
    return MobileNetV3(_SMALL, make_divisible(1024 * width_mult, 8), num_classes, width_mult, **kwargs)
