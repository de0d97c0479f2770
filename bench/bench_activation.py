"""Benchmark cases for fastops' activations: hardswish and hardsigmoid.

Shapes are MobileNet V3 (large, 224x224) feature maps where these activations run. The acceptance
case is hardswish on 8x240x28x28 float32 (forward), where fastops must be no slower than eager
torch.nn.functional.hardswish.

Bytes moved (the roof's numerator), per element of x:
  fwd      read x, write y                                   = 2 tensors
  fwd+bwd  read x, write y; then read g, read x, write dx    = 5 tensors
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from . import harness

OPS = {
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
}

# (N, C, H, W). MobileNet V3 large: hardswish follows the stem (16x112x112) and the expand /
# depthwise convs of the later stages (240x28x28, 672x14x14, 960x7x7).
SHAPES_N8 = [(8, 16, 112, 112), (8, 240, 28, 28), (8, 672, 14, 14), (8, 960, 7, 7)]
SHAPE_N1 = (1, 240, 28, 28)  # batch-1 inference: per-call overhead starts to show
# hardsigmoid's real home is the squeeze-excite gate, a N x C x 1 x 1 tensor: pure overhead.
SHAPE_SE_GATE = (8, 960, 1, 1)
ACCEPTANCE = ("hardswish", (8, 240, 28, 28), torch.float32, "fwd")

TENSORS_MOVED = {"fwd": 2, "fwd+bwd": 5}


def contenders(op: str, mode: str) -> dict[str, harness.ContenderFactory]:
    """fastops.ops.<op>, F.<op> and torch.compile(F.<op>) for one op and mode."""

    def fastops_fn():
        # Imported at setup time: if fastops is not importable the contender fails, the run goes on.
        return getattr(importlib.import_module("fastops").ops, op)

    return harness.standard_contenders(fastops_fn, OPS[op], mode)


def make_case(op: str, shape, dtype: torch.dtype, layout: str, mode: str, device: str) -> harness.Case:
    accept = (op, tuple(shape), dtype, mode) == ACCEPTANCE
    return harness.Case(
        op=op,
        shape=tuple(shape),
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=TENSORS_MOVED[mode] * harness.tensor_bytes(tuple(shape), dtype),
        make_inputs=harness.pointwise_inputs(tuple(shape), dtype, layout, mode, device),
        contenders=contenders(op, mode),
        accept_vs="eager" if accept else None,
        label="acceptance" if accept else "",
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """All activation cases. dtypes / layouts: lists of torch dtypes / layout names, or None for
    the defaults: CPU float32; CUDA float16, bfloat16, float32. Layouts by default: channels_last
    on CUDA (nchw too with --full); on CPU nchw, plus channels_last for the acceptance shape
    (quick) or for every shape (full)."""
    if dtypes is None:
        dtypes = [torch.float16, torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    shapes = SHAPES_N8 + [SHAPE_N1]
    bn_act, se = harness.model_layers("bn_act"), harness.model_layers("squeeze_excite")
    derived = None  # --model-layers: each op where the networks apply it
    if bn_act is not None:
        batches = harness.batch_sizes(quick, device)
        derived = {"hardswish": [(n, d["C"], d["H"], d["W"]) for n in batches for d in bn_act if d["act"] == "hardswish"],
                   "hardsigmoid": [(n, d["C"], 1, 1) for n in batches for d in se if d["gate"] == "hardsigmoid"]}
    out = []
    for op in OPS:
        op_shapes = shapes + ([SHAPE_SE_GATE] if op == "hardsigmoid" and not quick else [])
        if derived is not None:  # the SE gate's N x C x 1 x 1, for hardsigmoid
            op_shapes = list(dict.fromkeys(derived[op]))
        for shape in op_shapes:
            if layouts is not None:
                shape_layouts = list(layouts)
            elif device == "cuda":
                shape_layouts = ["channels_last"] + ([] if quick else ["nchw"])
            elif quick and shape != ACCEPTANCE[1]:
                shape_layouts = ["nchw"]
            else:
                shape_layouts = ["nchw", "channels_last"]
            for dtype in dtypes:
                for layout in shape_layouts:
                    for mode in harness.MODES:
                        out.append(make_case(op, shape, dtype, layout, mode, device))
    return out
