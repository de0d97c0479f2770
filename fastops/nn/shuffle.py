"""`ChannelShuffle`: torch's `nn.ChannelShuffle`, in one pass that keeps the memory format."""

import torch
from torch import nn

from .. import ops


class ChannelShuffle(nn.ChannelShuffle):
    """`torch.nn.ChannelShuffle(groups)` running `fastops.ops.channel_shuffle` on 4-D inputs
    (torch's own on other ranks). Unlike torch's, a channels_last input stays channels_last,
    and the op does not break a `torch.compile` graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return ops.channel_shuffle(x, self.groups)
