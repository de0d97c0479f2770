"""Benchmark cases for stem_conv_bn_act: a network's first layer as one kernel.

Inference ("fwd", eval mode, under torch.no_grad), channels_last:
  fastops          the stem as fastops runs it: with a max pool, `stem_pool` (what ShuffleNet
                   V1 / V2 call), the conv + BN + ReLU + pool one stem_conv_bn_act call; without
                   one, the op called directly (fastops' modules keep MobileNet's stems on oneDNN,
                   which the kernel only matches)
  eager            conv -> BN -> activation [-> max pool] modules with the same weights
  compile          torch.compile of the eager stem; compile+freezing: with freezing

Shapes: ShuffleNet V2's stem (3 -> 24, 3x3 stride 2, ReLU, max pool 3 stride 2) and MobileNet V2's
(3 -> 32, ReLU6, no pool) at 224x224. The roof counts the image read once and the output (the
pooled one, with a pool) written once.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from . import harness
from .bench_inverted_residual import trained_looking

# (name, out channels, activation module, pool)
LAYERS = [("sv2", 24, nn.ReLU, True), ("mbv2", 32, nn.ReLU6, False)]


class _Stem(nn.Module):
    """conv1 (conv, BN, activation) [+ maxpool], as the networks lay them out."""

    def __init__(self, oc, act, pool, fused):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, oc, 3, 2, 1, bias=False), nn.BatchNorm2d(oc), act())
        self.maxpool = nn.MaxPool2d(3, 2, 1) if pool else None
        self.fused = fused

    def forward(self, x):
        if not self.fused:
            y = self.conv1(x)
            return y if self.maxpool is None else self.maxpool(y)
        fastops = importlib.import_module("fastops")
        if self.maxpool is not None:
            return importlib.import_module("fastops.nn.stem").stem_pool(self.conv1, self.maxpool, x)
        conv, bn, act = self.conv1
        scale, shift = fastops.nn.conv.folded_scale_shift(conv, bn)
        return fastops.ops.stem_conv_bn_act(x, conv.weight, scale, shift, 2, 1, fastops.nn.conv.act_name(act))


def make_case(n, layer, dtype, layout, device) -> harness.Case:
    name, oc, act, pool = layer
    fmt = harness.memory_format(layout)

    def build():
        importlib.import_module("fastops")
        eager = trained_looking(_Stem(oc, act, pool, False), torch.Generator().manual_seed(1))
        ours = _Stem(oc, act, pool, True)
        ours.load_state_dict(eager.state_dict())
        return tuple(m.to(device=device, dtype=dtype, memory_format=fmt).eval() for m in (eager, ours))

    shape = (n, 3, 224, 224)
    out = (n, oc, 56 if pool else 112, 56 if pool else 112)
    make = harness.tensor_inputs([shape], shape, dtype, layout, "fwd", device)
    return harness.Case(
        op=f"stem_{name}_3-{oc}{'_pool' if pool else ''}",
        shape=shape,
        dtype=dtype,
        layout=layout,
        mode="fwd",
        device=device,
        bytes_moved=harness.tensor_bytes(shape, dtype) + harness.tensor_bytes(out, dtype),
        flops=2 * n * 112 * 112 * oc * 27,
        make_inputs=make,
        contenders=harness.module_contenders(build, "fwd", lambda: make(0)),
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: N=8, channels_last, both stems. Full: N=1 and N=8."""
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["channels_last"]
    return [make_case(n, layer, dtype, layout, device)
            for dtype in dtypes for n in harness.batch_sizes(quick, device) for layer in LAYERS for layout in layouts]
