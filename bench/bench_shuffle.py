"""Benchmark cases for channel_shuffle and concat_shuffle (ShuffleNet V1 / V2).

  fastops   fastops.ops.channel_shuffle(x, g) / fastops.ops.concat_shuffle(a, b)
  eager     nn.ChannelShuffle(g)(x) / nn.ChannelShuffle(2)(torch.cat([a, b], 1)): torch's own,
            which keeps the memory format (torchvision's view/transpose/contiguous shuffle
            silently returns NCHW for a channels_last input)
  compile   torch.compile of the eager function

Shapes: ShuffleNet V2 1.0x's unit tails (two halves of 58 / 116 / 232 channels at 28 / 14 / 7)
and ShuffleNet V1 g=3's shuffles (240 channels at 28x28, 480 at 14x14), N=8. A shuffle only
moves data: the roof is reading the input and writing the output once.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from . import harness

SHUFFLES = [(240, 28, 28, 3), (480, 14, 14, 3), (232, 14, 14, 2)]  # (C, H, W, groups)
CONCATS = [(58, 28, 28), (116, 14, 14), (232, 7, 7)]  # (C of each half, H, W)


def shuffle_case(n, layer, dtype, layout, mode, device) -> harness.Case:
    c, h, w, g = layer
    shape = (n, c, h, w)

    eager = nn.ChannelShuffle(g)
    return harness.Case(
        op=f"channel_shuffle_g{g}",
        shape=shape,
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=(2 if mode == "fwd" else 4) * harness.tensor_bytes(shape, dtype),
        make_inputs=harness.tensor_inputs([shape], shape, dtype, layout, mode, device),
        contenders=harness.standard_contenders(
            lambda: (lambda x: importlib.import_module("fastops").ops.channel_shuffle(x, g)), eager, mode),
    )


def concat_case(n, layer, dtype, layout, mode, device) -> harness.Case:
    c, h, w = layer
    half, full = (n, c, h, w), (n, 2 * c, h, w)

    def eager(a, b):
        return nn.ChannelShuffle(2)(torch.cat([a, b], 1))

    return harness.Case(
        op="concat_shuffle",
        shape=full,
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=(2 if mode == "fwd" else 4) * harness.tensor_bytes(full, dtype),
        make_inputs=harness.tensor_inputs([half, half], full, dtype, layout, mode, device),
        contenders=harness.standard_contenders(lambda: importlib.import_module("fastops").ops.concat_shuffle, eager, mode),
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: every shape at N=8, both layouts, forward; training of the first of each. Full:
    N=1 and N=8, forward and training."""
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["nchw", "channels_last"]
    batches = harness.batch_sizes(quick, device)
    shuffles, concats = harness.model_layers("channel_shuffle"), harness.model_layers("concat_shuffle")
    derived = shuffles is not None  # --model-layers: the networks' own shuffles
    if derived:
        shuffles = [(d["C"], d["H"], d["W"], d["groups"]) for d in shuffles]
        concats = [(d["C"], d["H"], d["W"]) for d in concats]
    out = []
    for dtype in dtypes:
        for n in batches:
            for make, layers in ((shuffle_case, shuffles if derived else SHUFFLES), (concat_case, concats if derived else CONCATS)):
                for i, layer in enumerate(layers):
                    for layout in layouts:
                        out.append(make(n, layer, dtype, layout, "fwd", device))
                        if not quick or (not derived and i == 0):
                            out.append(make(n, layer, dtype, layout, "fwd+bwd", device))
    return out
