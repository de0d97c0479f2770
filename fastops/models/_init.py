"""Weight initialisation shared by the builders: torchvision's scheme."""

from typing import Optional

from torch import nn


def init_weights(model: nn.Module, linear_std: Optional[float] = 0.01) -> None:
    """Kaiming-normal (fan_out, ReLU gain) conv weights and zero conv biases; BatchNorm/GroupNorm
    weight 1 and bias 0; Linear weights N(0, linear_std) and zero bias (torchvision's MobileNet
    V2/V3), or PyTorch's default Linear init when linear_std is None (its ResNets, timm's
    Xception)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
