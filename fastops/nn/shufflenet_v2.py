"""`ShuffleV2Block`: ShuffleNet V2's unit with torchvision's parameter names, on fused kernels:
each conv + BN (+ ReLU) is one kernel and the concat + channel shuffle one pass; in inference a
stride-1 unit is one `shuffle_v2_block` kernel."""

import torch
from torch import nn

from .. import _extension, ops
from .conv import _fusable, _is_pointwise, act_name, folded_scale_shift, inference_call
from .sequential import FusedSequential, plan

# Whether inference without autograd runs a stride-1 unit (split, branch2, concat + shuffle) as
# one `shuffle_v2_block` kernel on CPU: the split half read in place, the branch's tensors never
# written to memory, its result woven with the other half straight into the output.
FUSED_UNITS = True


def _unit_steps(seq: FusedSequential):
    """The (conv, bn, act) triples of branch2 when the shuffle_v2_block kernel covers it, else
    None: 1x1 conv + BN + act, depthwise k x k (k odd, padding k // 2, stride 1, no dilation) +
    BN, 1x1 conv + BN + the same act, as many channels out as in; plain modules only (no
    subclasses). Kept while the children are the same modules."""
    mods = tuple(seq._modules.values())
    kept = seq.__dict__.get("_fastops_unit_steps")
    if kept is not None and kept[0] == mods:
        return kept[1]
    steps = [step[1:] for step in plan(list(mods)) if step[0] == "conv"]
    found = None
    if len(steps) == 3 == len(plan(list(mods))) and all(_fusable(c, bn) and bn is not None for c, bn, _ in steps):
        (c1, _, a1), (c2, _, a2), (c3, _, a3) = steps
        k = c2.kernel_size[0]
        name = act_name(a1)
        if (_is_pointwise(c1) and _is_pointwise(c3) and c1.groups == 1 == c3.groups and a2 is None
                and name in ("relu", "relu6", "hardswish") and act_name(a3) == name
                and c2.groups == c2.in_channels == c2.out_channels == c1.out_channels == c3.in_channels
                and c3.out_channels == c1.in_channels and c2.kernel_size == (k, k) and k % 2 == 1
                and c2.padding == (k // 2, k // 2) and c2.stride == (1, 1) and c2.dilation == (1, 1)):
            found = (steps, name)
    seq.__dict__["_fastops_unit_steps"] = (mods, found)
    return found


def _fused_unit(seq: FusedSequential, x: torch.Tensor):
    """The stride-1 unit with branch2 `seq` as one `shuffle_v2_block` kernel (CPU, float32,
    channels_last, BNs in eval mode, no autograd, not under torch.compile), or None when that
    does not apply."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()
            or torch.compiler.is_compiling() or not _extension.has_extension()):
        return None
    found = _unit_steps(seq)
    if found is None:
        return None
    steps, act = found
    if any(bn.training or bn.running_mean is None or c.weight.dtype != x.dtype for c, bn, _ in steps):
        return None
    args = [t for c, bn, _ in steps for t in (c.weight, *folded_scale_shift(c, bn))]
    # the structure was checked above; the kernel checks the shapes again
    return inference_call(torch.ops.fastops.shuffle_v2_block.default, x, *args, act)


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
            if FUSED_UNITS and not torch.is_grad_enabled():
                y = _fused_unit(self._modules["branch2"], x)
                if y is not None:
                    return y
            x1, x2 = x.chunk(2, dim=1)
            return ops.concat_shuffle(x1, self.branch2(x2))
        return ops.concat_shuffle(self.branch1(x), self.branch2(x))
