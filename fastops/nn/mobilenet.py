"""`InvertedResidual`: MobileNet V2's block (expand 1x1 -> depthwise -> linear 1x1, residual when
the shapes allow) and MobileNet V3's (optional squeeze-excite, hardswish or ReLU, kernel 3 or 5),
with torchvision's parameter names, on fused kernels: each conv + BN + activation is one kernel,
and the residual add happens in the projection's epilogue."""

from typing import Callable, Optional

import torch
from torch import nn

from .. import _extension
from .conv import ConvBNAct, _fusable, _is_pointwise, act_name, folded_scale_shift, kept_block_call, module_tensors
from .sequential import FusedSequential, plan
from .squeeze_excite import SqueezeExcite


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """v rounded to the nearest multiple of divisor, at least min_value (default divisor) and not
    below 90% of v: the channel rounding of the MobileNet papers (and torchvision)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


# Whether inference without autograd runs a whole inverted residual block (expand, depthwise, [SE,]
# project) as one `inverted_residual` kernel on CPU, the expanded tensors never written to memory.
# Measured on torchvision's MobileNet V2 (2 cores, channels_last, its 16 expanding blocks,
# interleaved, against the per-conv oneDNN path): N=8 40.9 -> 35.2 ms, N=1 9.2 -> 7.6 ms; the
# blocks alone 1.45-1.98x eager and 1.02-1.07x torch.compile with freezing (bench/, N=8), and
# 1.80-2.27x / 1.22-1.38x since the depthwise step became dwconv_bn_act's tiled kernel
# (bench/results/cpu-2026-11-30-001946). Blocks without expansion (the first of MobileNet V2
# and V3: depthwise, [SE,] project) too, the depthwise result never written: N=8, interleaved
# against the per-conv path, MobileNet V2's features.1 (32 -> 16 at 112x112) 1.29x, V3-Large's
# (16 -> 16 + x) 1.52x.
FUSED_BLOCKS = True


def _block_steps(seq: FusedSequential):
    """(steps, act, se) when `seq` is a block the inverted_residual kernel covers, else None:
    steps are the (conv, bn, act) triples of [1x1 conv + BN + act (the expansion; absent in a
    block without one, as MobileNet V2's first),] depthwise k x k (k odd, padding k // 2, square
    stride, no dilation) + BN + the same act, and 1x1 conv + BN; between the last two an optional
    SqueezeExcite (ReLU, Hardsigmoid gate, biases: MobileNet V3's), returned as `se`. Plain
    modules only (no subclasses); activation relu / relu6 / hardswish. Kept while the children
    are the same modules."""
    mods = tuple(seq._modules.values())
    kept = seq.__dict__.get("_fastops_block_steps")
    if kept is not None and kept[0] == mods:
        return kept[1]
    steps, se, se_at = [], None, 0
    for step in plan(list(mods)):
        if step[0] == "conv":
            steps.append(step[1:])
        elif isinstance(step[1], ConvBNAct) and step[1].parts() is not None:
            steps.append(step[1].parts())
        elif (type(step[1]) is SqueezeExcite and len(steps) in (1, 2) and se is None
              and act_name(step[1].activation) == "relu" and act_name(step[1].scale_activation) == "hardsigmoid"
              and step[1].fc1.bias is not None and step[1].fc2.bias is not None):
            se, se_at = step[1], len(steps)
        else:
            steps = None
            break
    found = None
    if (steps is not None and len(steps) in (2, 3) and (se is None or se_at == len(steps) - 1)
            and all(_fusable(c, bn) and bn is not None for c, bn, _ in steps)):
        *expand, (c2, _, a2), (c3, _, a3) = steps
        n2 = act_name(a2)
        k = c2.kernel_size[0]
        if (_is_pointwise(c3) and c3.groups == 1 and a3 is None
                and c2.groups == c2.in_channels == c2.out_channels == c3.in_channels
                and c2.kernel_size == (k, k) and k % 2 == 1 and c2.padding == (k // 2, k // 2)
                and c2.dilation == (1, 1) and c2.stride[0] == c2.stride[1]
                and n2 in ("relu", "relu6", "hardswish")
                and all(_is_pointwise(c1) and c1.groups == 1 and c1.out_channels == c2.in_channels
                        and act_name(a1) == n2 for c1, _, a1 in expand)):
            found = (steps, n2, se)
    seq.__dict__["_fastops_block_steps"] = (mods, found)
    return found


def _fused_block(seq: FusedSequential, x: torch.Tensor, residual: bool):
    """The block as one `inverted_residual` kernel (CPU, float32, channels_last, BNs in eval
    mode, no autograd, not under torch.compile), or None when that does not apply. Blocks with
    squeeze-excite only when there are at least as many images as threads: the kernel then runs
    one image per thread, where the per-conv path splits each conv across the threads. The call
    is kept between calls (`kept_block_call`)."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()
            or torch.compiler.is_compiling() or not _extension.has_extension()):
        return None
    many = x.shape[0] >= torch.get_num_threads()
    return kept_block_call(seq, x, (residual, many), lambda: _block_call(seq, residual, many))


def _block_call(seq: FusedSequential, residual: bool, many_images: bool):
    """(op, args, tensors) of `kept_block_call` for the block, float32, or None."""
    found = _block_steps(seq)
    if found is None:
        return None
    steps, act, se = found
    if any(bn.training or bn.running_mean is None or c.weight.dtype != torch.float32 for c, bn, _ in steps):
        return None
    if se is not None and (not many_images or se.fc1.weight.dtype != torch.float32):
        return None
    *expand, (c2, bn2, _), (c3, bn3, _) = steps
    expand_args = (None, None, None)
    if expand:
        c1, bn1, _ = expand[0]
        expand_args = (c1.weight, *folded_scale_shift(c1, bn1))
    (s2, b2), (s3, b3) = folded_scale_shift(c2, bn2), folded_scale_shift(c3, bn3)
    se_mods = () if se is None else (se.fc1, se.fc2)
    se_args = tuple(t for fc in se_mods for t in (fc.weight, fc.bias))
    # the structure was checked above; the kernel checks the shapes again
    args = (*expand_args, c2.weight, s2, b2, c3.weight, s3, b3, c2.stride[0], act, residual, *se_args)
    return torch.ops.fastops.inverted_residual.default, args, module_tensors(
        *(m for c, bn, _ in steps for m in (c, bn)), *se_mods)


class InvertedResidual(nn.Module):
    """MobileNet V2's inverted residual, `InvertedResidual(inp, oup, stride, expand_ratio)`, with
    the children of `torchvision.models.mobilenetv2.InvertedResidual` (`conv`: [expand
    ConvBNAct,] depthwise ConvBNAct, 1x1 Conv2d, BatchNorm2d). `InvertedResidual.v3(...)` builds
    MobileNet V3's flavour with the children of torchvision's V3 block (`block`: [expand,]
    depthwise, [SqueezeExcite,] project ConvBNAct). Either way `use_res_connect` says whether the
    input is added to the output (stride 1 and equal channels); the add runs in the projection's
    epilogue."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"fastops.nn.InvertedResidual: stride must be 1 or 2, got {stride}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, norm_layer=norm_layer, activation_layer=nn.ReLU6),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ]
        self.conv = FusedSequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    @classmethod
    def v3(cls, input_channels: int, kernel: int, expanded_channels: int, out_channels: int, use_se: bool,
           activation: str, stride: int, dilation: int = 1,
           norm_layer: Optional[Callable[..., nn.Module]] = None) -> "InvertedResidual":
        """MobileNet V3's block, with torchvision's arguments (its InvertedResidualConfig's fields;
        activation "HS" for hardswish or "RE" for ReLU) and its children (`block`)."""
        if stride not in (1, 2):
            raise ValueError(f"fastops.nn.InvertedResidual.v3: stride must be 1 or 2, got {stride}")
        if activation not in ("HS", "RE"):
            raise ValueError(f"fastops.nn.InvertedResidual.v3: activation must be 'HS' or 'RE', got {activation!r}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.use_res_connect = stride == 1 and input_channels == out_channels
        layers = []
        if expanded_channels != input_channels:
            layers.append(ConvBNAct(input_channels, expanded_channels, 1, norm_layer=norm_layer, activation_layer=act))
        layers.append(ConvBNAct(expanded_channels, expanded_channels, kernel, 1 if dilation > 1 else stride,
                                dilation=dilation, groups=expanded_channels, norm_layer=norm_layer,
                                activation_layer=act))
        if use_se:
            layers.append(SqueezeExcite(expanded_channels, make_divisible(expanded_channels // 4, 8)))
        layers.append(ConvBNAct(expanded_channels, out_channels, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = FusedSequential(*layers)
        self.out_channels = out_channels
        self._is_cn = stride > 1
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self._modules["block"] if "block" in self._modules else self._modules["conv"]
        residual = x if self.use_res_connect else None
        if isinstance(seq, FusedSequential):
            if not torch.is_grad_enabled() and FUSED_BLOCKS:
                y = _fused_block(seq, x, self.use_res_connect)
                if y is not None:
                    return y
            return seq(x, residual=residual)
        y = seq(x)
        return y if residual is None else y + residual
