"""Benchmark cases for pwconv_bn_act: 1x1 conv (grouped or not) + BatchNorm (+ residual) +
activation (+ channel shuffle), inference and training with frozen BN (eval mode).

  fastops   a block holding the same conv / BN, running fastops.ops.pwconv_bn_act with the BN
            folded into scale / shift
  eager     conv -> BN -> (+ residual) -> act -> (nn.ChannelShuffle), same layout
  compile   torch.compile of the eager block; compile+freezing: with freezing (inference only)

Shapes: MobileNet V2's expand (24 -> 144 at 56x56, ReLU6) and project (144 -> 24 + residual, no
activation), ShuffleNet V1 (g=3) unit's grouped 1x1 convs (240 -> 60 + ReLU + shuffle; 60 -> 240
+ residual + ReLU), MobileNet V1's pointwise (128 -> 128 at 56x56). The roof counts the bytes of
x, residual and y once (a 1x1 conv is also compute-bound: the flops roof is what sgemm reaches).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from . import harness

ACTS = {"relu6": nn.ReLU6, "relu": nn.ReLU, "hardswish": nn.Hardswish, "none": nn.Identity}
# (C, OC, H, W, groups, act, residual, shuffle)
LAYERS = [
    (24, 144, 56, 56, 1, "relu6", False, 1),
    (144, 24, 56, 56, 1, "none", True, 1),
    (240, 60, 28, 28, 3, "relu", False, 3),
    (60, 240, 28, 28, 3, "relu", True, 1),
    (128, 128, 56, 56, 1, "relu6", False, 1),
]


class EagerBlock(nn.Module):
    def __init__(self, c, oc, groups, act, shuffle):
        super().__init__()
        self.conv = nn.Conv2d(c, oc, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(oc)
        self.act = ACTS[act]()
        self.shuffle = nn.ChannelShuffle(shuffle) if shuffle > 1 else nn.Identity()
        self.conf = (groups, act, shuffle)

    def forward(self, x, residual=None):
        y = self.bn(self.conv(x))
        if residual is not None:
            y = y + residual
        return self.shuffle(self.act(y))


class FastopsBlock(EagerBlock):
    def forward(self, x, residual=None):
        fastops = importlib.import_module("fastops")
        scale, shift = fastops.nn.fold_bn(self.bn)
        groups, act, shuffle = self.conf
        return fastops.ops.pwconv_bn_act(x, self.conv.weight, scale, shift, groups, act, residual, shuffle)


def make_case(n, layer, dtype, layout, mode, device, show_oc=False) -> harness.Case:
    c, oc, h, w, groups, act, residual, shuffle = layer
    fmt = harness.memory_format(layout)

    def build():
        gen = torch.Generator().manual_seed(1)
        eager = EagerBlock(c, oc, groups, act, shuffle)
        with torch.no_grad():
            eager.conv.weight.copy_(torch.randn(eager.conv.weight.shape, generator=gen) / (c // groups) ** 0.5)
            eager.bn.weight.copy_(torch.rand(oc, generator=gen) + 0.5)
            eager.bn.bias.copy_(torch.randn(oc, generator=gen))
            eager.bn.running_mean.copy_(torch.randn(oc, generator=gen) * 0.1)
            eager.bn.running_var.copy_(torch.rand(oc, generator=gen) + 0.5)
        ours = FastopsBlock(c, oc, groups, act, shuffle)
        ours.load_state_dict(eager.state_dict())
        return tuple(m.to(device=device, dtype=dtype, memory_format=fmt).eval() for m in (eager, ours))

    shapes = [(n, c, h, w)] + ([(n, oc, h, w)] if residual else [])
    make = harness.tensor_inputs(shapes, (n, oc, h, w), dtype, layout, mode, device)
    moved = sum(harness.tensor_bytes(s, dtype) for s in shapes) + harness.tensor_bytes((n, oc, h, w), dtype)
    if mode == "fwd+bwd":  # read x (and g) again, write dx (and d residual)
        moved += 2 * harness.tensor_bytes((n, c, h, w), dtype) + (2 if residual else 1) * harness.tensor_bytes((n, oc, h, w), dtype)
    tag = f"pwconv{'_g%d' % groups if groups > 1 else ''}{'_to%d' % oc if show_oc else ''}+bn{'+res' if residual else ''}+{act}{'+shuffle%d' % shuffle if shuffle > 1 else ''}"
    return harness.Case(
        op=tag,
        shape=(n, c, h, w),
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=moved,
        flops=(1 if mode == "fwd" else 3) * 2 * n * h * w * (c // groups) * oc,  # backward: grad x and grad w
        make_inputs=make,
        contenders=harness.module_contenders(build, mode, lambda: make(0)),
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: every layer, N=8 inference, both layouts; training for the first two. Full: N=1
    and N=8, inference and training."""
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["nchw", "channels_last"]
    batches = harness.batch_sizes(quick, device)
    derived = harness.model_layers("pointwise")  # --model-layers: the networks' own 1x1 layers instead
    layers = LAYERS if derived is None else [
        (d["C"], d["OC"], d["H"], d["W"], d["groups"], "relu", False, 1) for d in derived if d["stride"] == 1]
    out = []
    for dtype in dtypes:
        for n in batches:
            for i, layer in enumerate(layers):
                for layout in layouts:
                    out.append(make_case(n, layer, dtype, layout, "fwd", device, derived is not None))
                    if not quick or (derived is None and i < 2):
                        out.append(make_case(n, layer, dtype, layout, "fwd+bwd", device, derived is not None))
    return out
