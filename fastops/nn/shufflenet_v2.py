"""`ShuffleV2Block`: ShuffleNet V2's unit with torchvision's parameter names, on fused kernels:
each conv + BN (+ ReLU) is one kernel and the concat + channel shuffle one pass."""

import torch
from torch import nn

from .. import ops
from .sequential import FusedSequential


class ShuffleV2Block(nn.Module):
    """`ShuffleV2Block(inp, oup, stride)`, the children of
    `torchvision.models.shufflenetv2.InvertedResidual`: `branch1` (stride > 1: depthwise 3x3, BN,
    1x1, BN, ReLU; empty otherwise) and `branch2` (1x1, BN, ReLU, depthwise 3x3, BN, 1x1, BN,
    ReLU). Stride 1 splits the channels in halves and sends the second through branch2; stride 2
    sends the whole input through both. The two halves are concatenated and shuffled in one
    `concat_shuffle`."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if not 1 <= stride <= 3:
            raise ValueError(f"fastops.nn.ShuffleV2Block: stride must be 1, 2 or 3, got {stride}")
        self.stride = stride
        branch = oup // 2
        if stride == 1 and inp != branch * 2:
            raise ValueError(f"fastops.nn.ShuffleV2Block: with stride 1, inp ({inp}) must equal oup ({oup}) "
                             "rounded down to even")
        if stride > 1:
            self.branch1 = FusedSequential(
                nn.Conv2d(inp, inp, 3, stride, 1, bias=False, groups=inp),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = FusedSequential()
        self.branch2 = FusedSequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, bias=False, groups=branch),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            return ops.concat_shuffle(x1, self.branch2(x2))
        return ops.concat_shuffle(self.branch1(x), self.branch2(x))
