"""Benchmark cases for separable_conv_bn_act: depthwise conv -> 1x1 conv -> BatchNorm ->
activation (Xception's SeparableConv2d + BN + ReLU, MobileNet V1's pair without the BN between),
inference and training with frozen BN (eval mode).

  fastops   a block holding the same convs / BN, running fastops.ops.separable_conv_bn_act with
            the BN folded into scale / shift (the depthwise result stays in cache)
  eager     depthwise conv -> pointwise conv -> BN -> act, same layout
  compile   torch.compile of the eager block; compile+freezing: with freezing (inference only)

Shapes: MobileNet V1 (128 -> 128 at 56x56, 512 -> 512 at 14x14) and Xception's middle flow
(728 -> 728 at 19x19), 3x3, N=8. The roof counts reading x and writing y once.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from . import harness

# (C, OC, H, W, stride, act)
LAYERS = [(128, 128, 56, 56, 1, "relu"), (512, 512, 14, 14, 1, "relu"), (728, 728, 19, 19, 1, "relu"),
          (64, 128, 112, 112, 2, "relu")]


class EagerBlock(nn.Module):
    def __init__(self, c, oc, stride, act):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)
        self.pointwise = nn.Conv2d(c, oc, 1, bias=False)
        self.bn = nn.BatchNorm2d(oc)
        self.act_name = act
        self.act = {"relu": nn.ReLU, "relu6": nn.ReLU6, "none": nn.Identity}[act]()

    def forward(self, x):
        return self.act(self.bn(self.pointwise(self.conv1(x))))


class FastopsBlock(EagerBlock):
    def forward(self, x):
        fastops = importlib.import_module("fastops")
        scale, shift = fastops.nn.fold_bn(self.bn)
        return fastops.ops.separable_conv_bn_act(x, self.conv1.weight, self.pointwise.weight, scale, shift,
                                                 self.conv1.stride, 1, 1, self.act_name)


def make_case(n, layer, dtype, layout, mode, device) -> harness.Case:
    c, oc, h, w, stride, act = layer
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    fmt = harness.memory_format(layout)

    def build():
        gen = torch.Generator().manual_seed(1)
        eager = EagerBlock(c, oc, stride, act)
        with torch.no_grad():
            eager.conv1.weight.copy_(torch.randn(eager.conv1.weight.shape, generator=gen) * 0.3)
            eager.pointwise.weight.copy_(torch.randn(eager.pointwise.weight.shape, generator=gen) / c ** 0.5)
            eager.bn.weight.copy_(torch.rand(oc, generator=gen) + 0.5)
            eager.bn.bias.copy_(torch.randn(oc, generator=gen))
            eager.bn.running_mean.copy_(torch.randn(oc, generator=gen) * 0.1)
            eager.bn.running_var.copy_(torch.rand(oc, generator=gen) + 0.5)
        ours = FastopsBlock(c, oc, stride, act)
        ours.load_state_dict(eager.state_dict())
        return tuple(m.to(device=device, dtype=dtype, memory_format=fmt).eval() for m in (eager, ours))

    x_shape, y_shape = (n, c, h, w), (n, oc, oh, ow)
    make = harness.tensor_inputs([x_shape], y_shape, dtype, layout, mode, device)
    xb, yb = harness.tensor_bytes(x_shape, dtype), harness.tensor_bytes(y_shape, dtype)
    return harness.Case(
        op=f"separable3x3s{stride}+bn+{act}",
        shape=x_shape,
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=xb + yb if mode == "fwd" else 3 * xb + 2 * yb,
        # the depthwise 3x3 and the 1x1 GEMM; the backward about twice the forward
        flops=(1 if mode == "fwd" else 3) * 2 * n * oh * ow * c * (9 + oc),
        make_inputs=make,
        contenders=harness.module_contenders(build, mode, lambda: make(0)),
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: every layer at N=8 inference, both layouts; training of the first. Full: N=1 and
    N=8, inference and training."""
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["nchw", "channels_last"]
    batches = harness.batch_sizes(quick, device)
    derived = harness.model_layers("separable")  # --model-layers: the networks' own separable convs
    layers = LAYERS if derived is None else [
        (d["C"], d["OC"], d["H"], d["W"], d["stride"], d["act"]) for d in derived
        if d["k"] == 3 and d["dilation"] == 1 and d["act"] in ("relu", "relu6", "none")]
    out = []
    for dtype in dtypes:
        for n in batches:
            for i, layer in enumerate(layers):
                for layout in layouts:
                    out.append(make_case(n, layer, dtype, layout, "fwd", device))
                    if not quick or (derived is None and i == 0):
                        out.append(make_case(n, layer, dtype, layout, "fwd+bwd", device))
    return out
