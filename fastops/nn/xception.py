"""`XceptionBlock`: the block of timm's `legacy_xception` (its `Block`), same parameter names,
on fused kernels: each separable conv + BN (+ the ReLU that follows) is one kernel, and the
shortcut add happens in the last one's epilogue where no pooling follows."""

import torch
from torch import nn

from .conv import conv_bn_act
from .separable import SeparableConv2d
from .sequential import FusedSequential


class XceptionBlock(nn.Module):
    """`XceptionBlock(in_channels, out_channels, reps, strides=1, start_with_relu=True,
    grow_first=True)`: `rep` = reps x (ReLU, SeparableConv2d 3x3, BatchNorm2d) [+ MaxPool2d(3,
    strides, 1)], the first ReLU dropped when not start_with_relu; shortcut `skip` (1x1 conv,
    stride) + `skipbn` when the shape changes, identity otherwise. Output: rep(x) + shortcut."""

    def __init__(self, in_channels: int, out_channels: int, reps: int, strides: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True) -> None:
        super().__init__()
        if reps < 1 or strides < 1:
            raise ValueError(f"fastops.nn.XceptionBlock: reps and strides must be >= 1, got {reps}, {strides}")
        if out_channels != in_channels or strides != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=strides, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
        rep = []
        for i in range(reps):
            if grow_first:
                inc, outc = (in_channels if i == 0 else out_channels), out_channels
            else:
                inc, outc = in_channels, (in_channels if i < reps - 1 else out_channels)
            # the first ReLU must not overwrite the input: the shortcut reads it
            rep += [nn.ReLU(inplace=i > 0), SeparableConv2d(inc, outc, 3, 1, 1), nn.BatchNorm2d(outc)]
        if not start_with_relu:
            rep = rep[1:]
        if strides != 1:
            rep.append(nn.MaxPool2d(3, strides, 1))
        self.rep = FusedSequential(*rep)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        skip = inp if self.skip is None else conv_bn_act(inp, self.skip, self.skipbn)
        if isinstance(self.rep, FusedSequential):
            return self.rep(inp, residual=skip)
        return self.rep(inp) + skip
