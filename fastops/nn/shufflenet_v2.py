"""`ShuffleV2Block`: ShuffleNet V2's unit with torchvision's parameter names, on fused kernels:
each conv + BN (+ ReLU) is one kernel and the concat + channel shuffle one pass; in inference the
whole unit is one `shuffle_v2_block` kernel call."""

import torch
from torch import nn

from .. import _extension, ops
from .conv import _fusable, _is_pointwise, act_name, folded_scale_shift, kept_block_call, module_tensors
from .sequential import FusedSequential, plan

# Whether inference without autograd runs a unit as one `shuffle_v2_block` kernel call on CPU:
# the split half read in place (stride 1), the branches' tensors never written to memory,
# branch2's result woven with the other half (or branch1's result) straight into the output.
FUSED_UNITS = True


def _steps(seq: FusedSequential, kinds: str, stride: int):
    """The (conv, bn, act) triples of `seq` when they have the shapes `kinds` names ("p": 1x1
    conv + BN + act, "d": depthwise k x k conv + BN without activation, k odd, padding k // 2,
    the unit's stride, no dilation), each conv feeding the next and one activation throughout;
    plain modules only (no subclasses). Else None."""
    steps = plan(list(seq._modules.values()))
    if len(steps) != len(kinds) or any(step[0] != "conv" or not _fusable(*step[1:3]) or step[2] is None
                                       for step in steps):
        return None
    steps = [step[1:] for step in steps]
    for (c, _, a), kind in zip(steps, kinds):
        k = c.kernel_size[0]
        ok = (_is_pointwise(c) and c.groups == 1 and act_name(a) in ("relu", "relu6", "hardswish")) if kind == "p" \
            else (a is None and c.groups == c.in_channels == c.out_channels and c.kernel_size == (k, k)
                  and k % 2 == 1 and c.padding == (k // 2, k // 2) and c.stride == (stride, stride)
                  and c.dilation == (1, 1))
        if not ok:
            return None
    if any(a.in_channels != b.out_channels for (a, _, _), (b, _, _) in zip(steps[1:], steps)):
        return None
    if len({act_name(a) for _, _, a in steps if a is not None}) != 1:
        return None
    return steps


def _unit_plan(block: "ShuffleV2Block"):
    """(steps, act, channels): the (conv, bn, act) triples of branch2 ([branch1's after them at
    stride > 1]) and the unit's input channels when the shuffle_v2_block kernel covers the unit,
    else None. Kept while the children are the same modules."""
    b1, b2 = block._modules["branch1"], block._modules["branch2"]
    mods = tuple(b1._modules.values()) + (None,) + tuple(b2._modules.values())
    kept = block.__dict__.get("_fastops_unit_plan")
    if kept is not None and kept[0] == mods:
        return kept[1]
    found, stride = None, block.stride
    steps2 = _steps(b2, "pdp", stride)
    steps1 = [] if stride == 1 else _steps(b1, "dp", stride)
    if steps2 is not None and steps1 is not None:
        c1, c3 = steps2[0][0], steps2[2][0]
        act = act_name(steps2[0][2])
        if stride == 1:
            ok, inp = c3.out_channels == c1.in_channels, 2 * c1.in_channels
        else:
            ok, inp = (steps1[0][0].in_channels == c1.in_channels and steps1[1][0].out_channels == c3.out_channels
                       and act_name(steps1[1][2]) == act), c1.in_channels
        if ok:
            found = (steps2 + steps1, act, inp)
    block.__dict__["_fastops_unit_plan"] = (mods, found)
    return found


def _fused_unit(block: "ShuffleV2Block", x: torch.Tensor):
    """The unit as one `shuffle_v2_block` kernel call (CPU, float32, channels_last, BNs in eval
    mode, no autograd, not under torch.compile), or None when that does not apply. The call is
    kept between calls (`kept_block_call`)."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()
            or torch.compiler.is_compiling() or not _extension.has_extension()):
        return None
    return kept_block_call(block, x, x.shape[1], lambda: _unit_call(block, x.shape[1]))


def _unit_call(block: "ShuffleV2Block", channels: int):
    """(op, args, tensors) of `kept_block_call` for the unit with `channels` input channels,
    float32, or None."""
    found = _unit_plan(block)
    if found is None or channels != found[2]:
        return None
    steps, act, _ = found
    if any(bn.training or bn.running_mean is None or c.weight.dtype != torch.float32 for c, bn, _ in steps):
        return None
    args = [t for c, bn, _ in steps for t in (c.weight, *folded_scale_shift(c, bn))]
    # the structure was checked above; the kernel checks the shapes again
    return (torch.ops.fastops.shuffle_v2_block.default, (*args[:9], act, block.stride, *args[9:]),
            module_tensors(*(m for c, bn, _ in steps for m in (c, bn))))


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
        if FUSED_UNITS and not torch.is_grad_enabled():
            y = _fused_unit(self, x)
            if y is not None:
                return y
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            return ops.concat_shuffle(x1, self.branch2(x2))
        return ops.concat_shuffle(self.branch1(x), self.branch2(x))
