"""`FusedSequential`: an `nn.Sequential` whose runs of conv -> BatchNorm -> activation run as
fused kernels. The children and the state_dict are those of the plain Sequential, so
`fastops.optimize` turns any `nn.Sequential` into one by changing its class."""

from typing import List, Optional, Tuple

import torch
from torch import nn

from .conv import ConvBNAct, act_name, conv_bn_act
from .separable import SeparableConv2d, separable_bn_act


def plan(mods: List[nn.Module]) -> List[Tuple]:
    """The steps a list of modules runs as: ("conv", conv, bn, act), ("separable", sep, bn, act),
    where bn and act are the BatchNorm2d and activation children that follow (or None), and
    ("module", m) for anything else."""
    steps, i = [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, (nn.Conv2d, SeparableConv2d)):
            j, bn, act = i + 1, None, None
            if j < len(mods) and isinstance(mods[j], nn.BatchNorm2d):
                bn, j = mods[j], j + 1
            if j < len(mods) and not isinstance(mods[j], nn.Identity) and act_name(mods[j]) not in (None, "none"):
                act, j = mods[j], j + 1
            steps.append(("conv" if isinstance(m, nn.Conv2d) else "separable", m, bn, act))
            i = j
        else:
            steps.append(("module", m))
            i += 1
    return steps


class FusedSequential(nn.Sequential):
    """`nn.Sequential` (same children, same keys) that runs conv [-> BatchNorm2d] [-> activation]
    runs through `conv_bn_act` and separable conv [-> BN] [-> act] runs through
    `separable_bn_act`; other children run as they are. `forward(x, residual=None)` returns
    `self(x) + residual`, the add fused into the last conv's kernel when nothing (no activation,
    no other module) follows that conv's BatchNorm."""

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        mods = tuple(self._modules.values())
        cached = self.__dict__.get("_fastops_plan")
        if cached is None or cached[0] != mods:  # element-wise identity (modules compare by identity)
            cached = (mods, plan(list(mods)))  # made again whenever a child is added, removed or replaced
            self.__dict__["_fastops_plan"] = cached
        steps = cached[1]
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            kind, m = step[0], step[1]
            if kind == "module":
                fuse = last and residual is not None and isinstance(m, ConvBNAct) and _no_act(m)
                x = m(x, residual=residual) if fuse else m(x)
                if fuse:
                    return x
                continue
            bn, act = step[2], step[3]
            if last and residual is not None and act is None:
                if kind == "conv":
                    return conv_bn_act(x, m, bn, None, residual=residual)
                return separable_bn_act(x, m, bn, None, residual=residual)
            x = conv_bn_act(x, m, bn, act) if kind == "conv" else separable_bn_act(x, m, bn, act)
        return x if residual is None else x + residual


def _no_act(m: ConvBNAct) -> bool:
    parts = m.parts()
    return parts is not None and parts[2] is None
