"""`stem_pool`: a network's first conv (+ BN + activation) and the max pool after it (ShuffleNet
V1 / V2: `conv1`, `maxpool`) as one `stem_conv_bn_act` kernel in inference."""

import torch
from torch import nn

from .. import _extension
from .conv import _fusable, act_name, folded_scale_shift, recorded_call
from .sequential import plan

# Whether inference without autograd runs the stem conv + max pool as one kernel on CPU, the conv
# output (4x the pooled one) never written to memory. Measured against the per-module path
# (oneDNN's conv with BN and ReLU fused, then ATen's max pool, which also writes the indices),
# ShuffleNet V2's stem, N=8, 224x224, channels_last, interleaved: 2.90 -> 1.84 ms with the input
# streamed from memory, 2.11 -> 1.58 ms cache-hot. (Without a pool the kernel only matched
# oneDNN, 0.87-1.09x, so MobileNet's stems stay on oneDNN.)
FUSED_STEMS = True


def _stem_steps(conv_mod: nn.Module, pool: nn.Module):
    """(conv, bn, act name) when `conv_mod` (a conv + BN + activation Sequential, ConvBNAct or
    FusedSequential) followed by `pool` is what the kernel covers: a plain dense conv with zero
    padding and no dilation on at most 4 input channels (an image's), a plain BatchNorm2d or
    none, an activation the kernels know or none; a plain MaxPool2d, no dilation, floor mode, no
    indices. Else None. Kept while the modules are the same."""
    mods = tuple(conv_mod._modules.values()) if isinstance(conv_mod, nn.Sequential) else ()
    key = mods + (pool,)
    kept = conv_mod.__dict__.get("_fastops_stem_steps")
    if kept is not None and kept[0] == key:
        return kept[1]
    found = None
    steps = plan(list(mods))
    if len(steps) == 1 and steps[0][0] == "conv" and type(pool) is nn.MaxPool2d:
        _, conv, bn, act = steps[0]
        name = "none" if act is None else act_name(act)
        if (name is not None and _fusable(conv, bn) and conv.groups == 1 and conv.in_channels <= 4
                and conv.dilation == (1, 1) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
                and not pool.return_indices):
            found = (conv, bn, name)
    conv_mod.__dict__["_fastops_stem_steps"] = (key, found)
    return found


def stem_pool(conv_mod: nn.Module, pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """pool(conv_mod(x)): one `stem_conv_bn_act` kernel (CPU, float32, channels_last, BN in
    eval mode, no autograd, not under torch.compile) where it applies, else the modules."""
    if (FUSED_STEMS and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and not torch.compiler.is_compiling() and _extension.has_extension()):
        found = _stem_steps(conv_mod, pool)
        if found is not None:
            conv, bn, name = found
            if (bn is None or not (bn.training or bn.running_mean is None)) and conv.weight.dtype == x.dtype \
                    and x.shape[1] == conv.in_channels:
                scale, shift = folded_scale_shift(conv, bn)
                pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
                op = torch.ops.fastops.stem_conv_bn_act.default
                args = (conv.weight, scale, shift, list(conv.stride), list(conv.padding), name,
                        pair(pool.kernel_size), pair(pool.stride if pool.stride is not None else pool.kernel_size),
                        pair(pool.padding))
                return recorded_call(op, x, *args)
    return pool(conv_mod(x))
