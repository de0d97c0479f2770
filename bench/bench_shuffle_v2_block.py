"""Benchmark cases for shuffle_v2_block: ShuffleNet V2's stride-1 unit as one kernel.

Inference ("fwd", eval mode, under torch.no_grad), channels_last:
  fastops          fastops.nn.ShuffleV2Block (what fastops.optimize makes of torchvision's
                   unit), which runs the unit kernel on CPU (csrc/cpu/shuffle_v2_block.cpp)
  eager            torchvision's unit with the same weights: chunk, 1x1 conv -> BN -> ReLU,
                   depthwise conv -> BN, 1x1 conv -> BN -> ReLU, cat, channel shuffle
  compile          torch.compile of the eager unit; compile+freezing: with freezing

Shapes: ShuffleNet V2 1.0's stride-1 units (channels, map size) at 224x224 input resolution.
The roof counts the unit's input read once and output written once: what a unit that never
writes its branch's tensors moves (the FLOPs bound instead where they take longer).
"""

from __future__ import annotations

import copy
import importlib

import torch

from . import harness
from .bench_inverted_residual import shape_and_macs, trained_looking

# (channels, H): stages 2, 3 and 4 of ShuffleNet V2 1.0
LAYERS = [(116, 28), (232, 14), (464, 7)]


def _tv_unit(layer):
    torchvision = importlib.import_module("torchvision")
    c, _ = layer
    return trained_looking(torchvision.models.shufflenetv2.InvertedResidual(c, c, 1), torch.Generator().manual_seed(1))


def make_case(n, layer, dtype, layout, device) -> harness.Case:
    c, h = layer
    fmt = harness.memory_format(layout)

    def build():
        fastops = importlib.import_module("fastops")
        eager = _tv_unit(layer)
        ours = fastops.optimize(copy.deepcopy(eager))
        return tuple(m.to(device=device, dtype=dtype, memory_format=fmt).eval() for m in (eager, ours))

    shape = (n, c, h, h)
    make = harness.tensor_inputs([shape], shape, dtype, layout, "fwd", device)
    _, macs = shape_and_macs(_tv_unit(layer), c, h)
    return harness.Case(
        op=f"sv2_unit_{c}",
        shape=shape,
        dtype=dtype,
        layout=layout,
        mode="fwd",
        device=device,
        bytes_moved=2 * harness.tensor_bytes(shape, dtype),
        flops=2 * n * macs,
        make_inputs=make,
        contenders=harness.module_contenders(build, "fwd", lambda: make(0)),
        # torchvision's unit returns NCHW whatever its input (its channel shuffle ends in
        # .contiguous()); fastops' keeps the input's channels_last, as every fastops op does
        layout_checked=False,
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: N=8, channels_last, the units of stages 2 and 3. Full: every stage, N=1 and N=8."""
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["channels_last"]
    layers = LAYERS[:2] if quick else LAYERS
    return [make_case(n, layer, dtype, layout, device)
            for dtype in dtypes for n in harness.batch_sizes(quick, device) for layer in layers for layout in layouts]
