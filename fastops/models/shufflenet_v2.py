"""ShuffleNet V2 (Ma et al. 2018) with torchvision's layout: `conv1`, `maxpool`, `stage2..4`,
`conv5`, `fc`."""

import torch
from torch import nn

from ..nn import ConvBNAct, FusedSequential, ShuffleV2Block
from ..nn.stem import stem_pool
from ._registry import register_model


class ShuffleNetV2(nn.Module):
    """torchvision's ShuffleNetV2: state_dict keys and shapes identical, so its weights load.
    (torchvision leaves PyTorch's default initialisation; so does this.)"""

    def __init__(self, stages_repeats, stages_out_channels, num_classes: int = 1000) -> None:
        super().__init__()
        if len(stages_repeats) != 3 or len(stages_out_channels) != 5:
            raise ValueError("fastops.models.shufflenet_v2: stages_repeats needs 3 ints, stages_out_channels 5")
        self.conv1 = ConvBNAct(3, stages_out_channels[0], 3, 2, 1, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = stages_out_channels[0]
        for name, repeats, out in zip(("stage2", "stage3", "stage4"), stages_repeats, stages_out_channels[1:4]):
            blocks = [ShuffleV2Block(channels, out, 2)] + [ShuffleV2Block(out, out, 1) for _ in range(repeats - 1)]
            setattr(self, name, FusedSequential(*blocks))
            channels = out
        self.conv5 = ConvBNAct(channels, stages_out_channels[-1], 1, bias=False)
        self.fc = nn.Linear(stages_out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = stem_pool(self.conv1, self.maxpool, x)  # one kernel in inference
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def _builder(name, channels):
    def build(num_classes: int = 1000) -> ShuffleNetV2:
        return ShuffleNetV2([4, 8, 4], channels, num_classes)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"ShuffleNet V2 {name[-3:].replace('_', '.')}x (torchvision's `{name}`, same keys)."
    return register_model(build)


shufflenet_v2_x0_5 = _builder("shufflenet_v2_x0_5", [24, 48, 96, 192, 1024])
shufflenet_v2_x1_0 = _builder("shufflenet_v2_x1_0", [24, 116, 232, 464, 1024])
shufflenet_v2_x1_5 = _builder("shufflenet_v2_x1_5", [24, 176, 352, 704, 1024])
shufflenet_v2_x2_0 = _builder("shufflenet_v2_x2_0", [24, 244, 488, 976, 2048])
