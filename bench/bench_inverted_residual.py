"""Benchmark cases for inverted_residual: MobileNet V2's / V3's block as one kernel.

Inference ("fwd", eval mode, under torch.no_grad), channels_last:
  fastops          fastops.nn.InvertedResidual (what fastops.optimize makes of torchvision's
                   block), which runs the block kernel on CPU (csrc/cpu/inverted_residual.cpp)
  eager            torchvision's block with the same weights: expand conv -> BN -> act,
                   depthwise conv -> BN -> act, [SE,] project conv -> BN [+ x]
  compile          torch.compile of the eager block; compile+freezing: with freezing (the BNs
                   folded, each conv one oneDNN call with its activation as a post-op)

Shapes: MobileNet V2 blocks (inp, oup, stride, expand ratio) and MobileNet V3-Large blocks
(inp, kernel, expanded, oup, SE, activation, stride), at 224x224 input resolution. The roof
counts the block's input read once and output written once: what a block that never writes
its expanded tensors moves, so the fraction says how close the kernel comes to that ideal (the
FLOPs bound instead where they take longer).
"""

from __future__ import annotations

import copy
import importlib

import torch
from torch import nn

from . import harness

# ("v2", inp, oup, stride, expand, H) / ("v3", inp, kernel, expanded, oup, se, act, stride, H)
LAYERS = [
    ("v2", 16, 24, 2, 6, 112),
    ("v2", 24, 24, 1, 6, 56),
    ("v2", 32, 32, 1, 6, 28),
    ("v2", 64, 64, 1, 6, 14),
    ("v2", 160, 160, 1, 6, 7),
    ("v3", 24, 5, 72, 40, True, "RE", 2, 56),
    ("v3", 80, 3, 184, 80, False, "HS", 1, 14),
    ("v3", 112, 5, 672, 160, True, "HS", 2, 14),
    ("v2", 32, 16, 1, 1, 112),  # MobileNet V2's first block: no expansion (depthwise, project)
]


def _tv_block(layer):
    torchvision = importlib.import_module("torchvision")
    gen = torch.Generator().manual_seed(1)
    if layer[0] == "v2":
        _, inp, oup, stride, expand, _ = layer
        block = torchvision.models.mobilenetv2.InvertedResidual(inp, oup, stride, expand)
    else:
        from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig

        _, inp, k, exp, oup, se, act, stride, _ = layer
        block = InvertedResidual(InvertedResidualConfig(inp, k, exp, oup, se, act, stride, 1, 1.0), nn.BatchNorm2d)
    return trained_looking(block, gen)


def trained_looking(block: nn.Module, gen: torch.Generator) -> nn.Module:
    """block in eval mode with fixed random weights (every contender builds its own copy) and
    BatchNorms whose statistics and affine look trained."""
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (p.shape[1:].numel() ** -0.5 if p.dim() > 1 else 0.1))
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return block.eval()


def _name(layer) -> str:
    if layer[0] == "v2":
        _, inp, oup, stride, expand, _ = layer
        return f"ir_v2_{inp}-{inp * expand}-{oup}_s{stride}"
    _, inp, k, exp, oup, se, act, stride, _ = layer
    return f"ir_v3_{inp}-{exp}-{oup}_k{k}_s{stride}{'_se' if se else ''}_{act.lower()}"


def shape_and_macs(block, inp, h):
    """The block's output shape (C, H, W) and multiply-adds per image (its convs, hooked)."""
    macs = 0

    def count(m, args, out):
        nonlocal macs
        macs += out.shape[2] * out.shape[3] * out.shape[1] * m.weight.shape[1:].numel()

    hooks = [m.register_forward_hook(count) for m in block.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        out = block(torch.zeros((1, inp, h, h)))
    for hook in hooks:
        hook.remove()
    return tuple(out.shape[1:]), macs


def make_case(n, layer, dtype, layout, device) -> harness.Case:
    h = layer[-1]
    inp = layer[1]
    fmt = harness.memory_format(layout)

    def build():
        fastops = importlib.import_module("fastops")
        eager = _tv_block(layer)
        ours = fastops.optimize(copy.deepcopy(eager))
        return tuple(m.to(device=device, dtype=dtype, memory_format=fmt).eval() for m in (eager, ours))

    shape = (n, inp, h, h)
    make = harness.tensor_inputs([shape], shape, dtype, layout, "fwd", device)
    out_shape, macs = shape_and_macs(_tv_block(layer), inp, h)
    return harness.Case(
        op=_name(layer),
        shape=shape,
        dtype=dtype,
        layout=layout,
        mode="fwd",
        device=device,
        bytes_moved=harness.tensor_bytes(shape, dtype) + harness.tensor_bytes((n,) + out_shape, dtype),
        flops=2 * n * macs,
        make_inputs=make,
        contenders=harness.module_contenders(build, "fwd", lambda: make(0)),
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: N=8, channels_last, the V2 blocks at 56x56 and 14x14, the V3 SE block at 56x56 and
    V2's first block (no expansion). Full: every block, N=1 and N=8."""
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["channels_last"]
    layers = [LAYERS[1], LAYERS[3], LAYERS[5], LAYERS[8]] if quick else LAYERS
    return [make_case(n, layer, dtype, layout, device)
            for dtype in dtypes for n in harness.batch_sizes(quick, device) for layer in layers for layout in layouts]
