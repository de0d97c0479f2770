"""Weight initialisation shared by the builders: torchvision's MobileNet scheme."""

from torch import nn


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) conv weights and zero conv biases; BatchNorm/GroupNorm weight 1 and
    bias 0; Linear weights N(0, 0.01) and zero bias (torchvision's MobileNet V2/V3 init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
