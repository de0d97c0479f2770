"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016) with torchvision's layout: `features`,
`classifier`."""

import torch
from torch import nn

from ..nn import Fire
from ..nn.sequential import FusedSequential
from ._registry import register_model

_FIRES = {  # (inplanes, squeeze, expand1x1, expand3x3) or "pool"
    "1_0": [(96, 16, 64, 64), (128, 16, 64, 64), (128, 32, 128, 128), "pool", (256, 32, 128, 128),
            (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), "pool", (512, 64, 256, 256)],
    "1_1": [(64, 16, 64, 64), (128, 16, 64, 64), "pool", (128, 32, 128, 128), (256, 32, 128, 128), "pool",
            (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), (512, 64, 256, 256)],
}


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet (version "1_0" or "1_1"): keys and shapes identical, same init."""

    def __init__(self, version: str = "1_0", num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        if version not in _FIRES:
            raise ValueError(f"fastops.models.squeezenet: version must be '1_0' or '1_1', got {version!r}")
        self.num_classes = num_classes
        stem = nn.Conv2d(3, 96, 7, 2) if version == "1_0" else nn.Conv2d(3, 64, 3, 2)

        def pool():
            return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)

        self.features = FusedSequential(stem, nn.ReLU(inplace=True), pool(),
                                        *[pool() if f == "pool" else Fire(*f) for f in _FIRES[version]])
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = FusedSequential(nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True),
                                          nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


@register_model
def squeezenet1_0(num_classes: int = 1000, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.0 (torchvision's `squeezenet1_0`, same keys); kwargs: dropout."""
    return SqueezeNet("1_0", num_classes, **kwargs)


@register_model
def squeezenet1_1(num_classes: int = 1000, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.1 (torchvision's `squeezenet1_1`, same keys); kwargs: dropout."""
    return SqueezeNet("1_1", num_classes, **kwargs)
