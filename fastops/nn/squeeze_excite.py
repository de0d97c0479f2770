"""`SqueezeExcite`: torchvision's `SqueezeExcitation` (MobileNet V3's SE block) in two passes
over the input (pool; scale) instead of five."""

from typing import Callable

import torch
from torch import nn

from .. import _extension, ops, reference
from .conv import act_name, inference_call


class SqueezeExcite(nn.Module):
    """`x * scale_activation(fc2(activation(fc1(avgpool(x)))))`, with the parameters and
    submodules of `torchvision.ops.SqueezeExcitation` (`fc1`, `fc2`: 1x1 convs with bias), so its
    state_dict loads as is. Runs `fastops.ops.squeeze_excite` when both activations are ones the
    op knows (ReLU, ReLU6, Hardswish, Hardsigmoid, Sigmoid, SiLU or Identity) and x is 4-D; the
    plain composition otherwise. Note the default gate is Hardsigmoid (MobileNet V3's), where
    torchvision's default is Sigmoid."""

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act, gate = act_name(self.activation), act_name(self.scale_activation)
        if x.dim() != 4 or act is None or gate is None:
            s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return s * x
        args = (x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, act, gate)
        if (x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and _extension.has_extension()):
            # inference: straight to the CPU kernel, which checks the arguments itself (the same
            # errors as fastops.ops'), past ~80 us of Python checks and autograd wrapping
            return inference_call(torch.ops.fastops.squeeze_excite.default, *args)
        return ops.squeeze_excite(*args)
