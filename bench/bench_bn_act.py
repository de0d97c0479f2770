"""Benchmark cases for bn_act_train: training-mode BatchNorm (batch statistics) + activation.

  fastops   fastops.ops.bn_act_train(x, weight, bias, eps, act): statistics pass, then normalise +
            affine + activation in one pass (backward: gradient sums, then grad_x)
  eager     act(F.batch_norm(x, None, None, weight, bias, training=True)), same layout
  compile   torch.compile of the eager function

Shapes are MobileNet V2 / V3 feature maps at N=8 (the BN + ReLU6 / hardswish after each conv).
Bytes moved (the roof), per element of x: fwd reads x and writes y (2 tensors); fwd+bwd adds
reading g and x and writing dx (5 tensors). The statistics pass reads x once more, which the
roof does not count: a fused pass that reached it would have to compute the statistics in the
convolution before it (design.md §3).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from . import harness

ACTS = {"relu6": F.relu6, "hardswish": F.hardswish, "relu": F.relu}
# (N, C, H, W, act)
SHAPES = [
    (8, 144, 56, 56, "relu6"),
    (8, 32, 112, 112, "relu6"),
    (8, 384, 14, 14, "relu6"),
    (8, 960, 7, 7, "hardswish"),
]
TENSORS_MOVED = {"fwd": 2, "fwd+bwd": 5}


def make_case(shape, dtype, layout, mode, device) -> harness.Case:
    n, c, h, w, act = shape
    fmt = harness.memory_format(layout)
    gen = torch.Generator().manual_seed(0)
    base_x = (torch.randn((n, c, h, w), generator=gen) * 2 + 0.5).to(device=device, dtype=dtype)
    base_g = torch.randn((n, c, h, w), generator=gen).to(device=device, dtype=dtype)
    weight = (torch.rand(c, generator=gen) + 0.5).to(device=device, dtype=dtype)
    bias = torch.randn(c, generator=gen).to(device=device, dtype=dtype)
    train = mode == "fwd+bwd"

    def make(_k):
        x = base_x.clone(memory_format=fmt).requires_grad_(train)
        args = (x, weight.clone().requires_grad_(train), bias.clone().requires_grad_(train))
        return {"args": args, "grad": base_g.clone(memory_format=fmt) if train else None}

    def eager(x, wt, b):
        return ACTS[act](F.batch_norm(x, None, None, wt, b, training=True, eps=1e-5))

    def fastops_fn():
        ops = importlib.import_module("fastops").ops
        return lambda x, wt, b: ops.bn_act_train(x, wt, b, 1e-5, act)[0]

    return harness.Case(
        op=f"bn_act_train+{act}",
        shape=(n, c, h, w),
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=TENSORS_MOVED[mode] * harness.tensor_bytes((n, c, h, w), dtype),
        make_inputs=make,
        contenders=harness.standard_contenders(fastops_fn, eager, mode),
        truth=harness.float64_truth(eager, mode),
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: the first two shapes, channels_last (both layouts for the first), fwd and fwd+bwd.
    Full: every shape, both layouts."""
    if dtypes is None:
        dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32]
    shapes = SHAPES[:2] if quick else SHAPES
    derived = harness.model_layers("bn_act")  # --model-layers: the networks' own BN + act layers
    if derived is not None:
        shapes = [(n, d["C"], d["H"], d["W"], d["act"]) for n in harness.batch_sizes(quick, device)
                  for d in derived if d["act"] in ACTS]
    out = []
    for i, shape in enumerate(shapes):
        if layouts is not None:
            shape_layouts = list(layouts)
        elif quick:
            shape_layouts = ["channels_last"] + (["nchw"] if i == 0 and device != "cuda" else [])
        else:
            shape_layouts = ["nchw", "channels_last"]
        for dtype in dtypes:
            for layout in shape_layouts:
                for mode in harness.MODES:
                    out.append(make_case(shape, dtype, layout, mode, device))
    return out
