"""Benchmark cases for squeeze_excite: MobileNet V3's squeeze-and-excitation block.

  fastops   fastops.nn.SqueezeExcite (two passes over x: pool, then scale)
  eager     torchvision.ops.SqueezeExcitation with the same weights (pool, fc1, ReLU, fc2,
            Hardsigmoid, multiply), same layout
  compile   torch.compile of the eager module; compile+freezing: with freezing (inference only)

Shapes: the SE layers of MobileNet V3 Large at N=8 (channels, squeeze channels, map size). The
roof counts reading x and writing y once (fwd), plus reading g, x and writing dx (fwd+bwd); the
pooling pass re-reads x, which a fused kernel cannot avoid (the scale depends on all of x).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from . import harness

# (C, S, H, W)
LAYERS = [(72, 24, 28, 28), (120, 32, 28, 28), (480, 120, 14, 14), (672, 168, 14, 14), (960, 240, 7, 7)]


def make_case(n, layer, dtype, layout, mode, device) -> harness.Case:
    c, s, h, w = layer
    fmt = harness.memory_format(layout)

    def build():
        torchvision = importlib.import_module("torchvision")
        fastops = importlib.import_module("fastops")
        torch.manual_seed(1)
        eager = torchvision.ops.SqueezeExcitation(c, s, scale_activation=nn.Hardsigmoid)
        ours = fastops.nn.SqueezeExcite(c, s)
        ours.load_state_dict(eager.state_dict())
        return tuple(m.to(device=device, dtype=dtype, memory_format=fmt).eval() for m in (eager, ours))

    shape = (n, c, h, w)
    make = harness.tensor_inputs([shape], shape, dtype, layout, mode, device)
    return harness.Case(
        op="squeeze_excite",
        shape=shape,
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=(2 if mode == "fwd" else 5) * harness.tensor_bytes(shape, dtype),
        make_inputs=make,
        contenders=harness.module_contenders(build, mode, lambda: make(0)),
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: the first three layers, N=8, both layouts, inference; training of the second.
    Full: every layer, N=1 and N=8, inference and training."""
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["nchw", "channels_last"]
    batches = harness.batch_sizes(quick, device)
    derived = harness.model_layers("squeeze_excite")  # --model-layers: the networks' own SE layers
    layers = (LAYERS[:3] if quick else LAYERS) if derived is None else [(d["C"], d["S"], d["H"], d["W"]) for d in derived]
    out = []
    for dtype in dtypes:
        for n in batches:
            for i, layer in enumerate(layers):
                for layout in layouts:
                    out.append(make_case(n, layer, dtype, layout, "fwd", device))
                    if not quick or (derived is None and i == 1):
                        out.append(make_case(n, layer, dtype, layout, "fwd+bwd", device))
    return out
