"""`ShuffleV1Block`: the ShuffleNet V1 unit (Zhang et al. 2017, Fig. 2 (b) and (c)) on the fused
conv blocks: 1x1 group conv + BN + ReLU with the channel shuffle fused into its store, 3x3
depthwise conv + BN, 1x1 group conv + BN with the residual add and ReLU fused in."""

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvBNAct, conv_bn_act


class ShuffleV1Block(nn.Module):
    """The ShuffleNet V1 unit.

    Stride 1 (in_channels == out_channels): ``relu(conv3(conv2(shuffle(conv1(x)))) + x)``.
    Stride 2: ``cat([avg_pool2d(x, 3, 2, 1), relu(conv3(...))], 1)``, the residual branch giving
    out_channels - in_channels channels. The paper applies the ReLU after the concat; inside the
    network the shortcut's input is a ReLU output (or a max-pool of one), so its average pool is
    already non-negative and only the branch needs the ReLU. The pool counts the zero padding in
    its divisor (``count_include_pad=True``, PyTorch's default, Caffe's AVE pooling and the
    reference implementation's choice); this only changes the border outputs.

    The bottleneck is mid = out_channels // 4 (also for stride 2). conv1 is grouped by `groups`
    unless first_group_conv is False (the paper's first unit of stage 2, whose input has only
    24 channels); the channel shuffle follows conv1 only when conv1 is grouped.
    Children: conv1 (1x1, BN, ReLU), conv2 (3x3 depthwise, stride, BN), conv3 (1x1, BN).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, first_group_conv: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"fastops.nn.ShuffleV1Block: stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"fastops.nn.ShuffleV1Block: stride 1 needs in_channels == out_channels, got {in_channels}, "
                             f"{out_channels}")
        mid = out_channels // 4
        branch_out = out_channels if stride == 1 else out_channels - in_channels
        g1 = groups if first_group_conv else 1
        if mid == 0 or branch_out <= 0 or mid % groups or branch_out % groups or in_channels % g1:
            raise ValueError(
                f"fastops.nn.ShuffleV1Block: channels must divide by groups: in_channels={in_channels}, "
                f"bottleneck={mid}, branch output={branch_out}, groups={groups}"
            )
        self.stride = stride
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv1 = ConvBNAct(in_channels, mid, 1, groups=g1, activation_layer=nn.ReLU)
        self.conv2 = ConvBNAct(mid, mid, 3, stride, groups=mid, activation_layer=None)
        self.conv3 = ConvBNAct(mid, branch_out, 1, groups=groups, activation_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g1 = self.conv1[0].groups
        h = self.conv1(x, shuffle_groups=g1)  # shuffle by `groups` (g1 is groups or 1)
        h = self.conv2(h)
        conv, bn = self.conv3[0], self.conv3[1]
        if self.stride == 1:
            return conv_bn_act(h, conv, bn, "relu", residual=x)
        return torch.cat([F.avg_pool2d(x, 3, 2, 1), conv_bn_act(h, conv, bn, "relu")], dim=1)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, groups={self.groups}"
