"""Benchmark cases for dwconv_bn_act: depthwise conv + BatchNorm + activation.

Inference ("fwd", eval mode, under torch.no_grad):
  fastops          fastops.nn.ConvBNAct (BN folded into the fused kernel)
  eager            conv -> BN -> act as torch modules, same weights, same layout
  compile          torch.compile of the eager block
  compile+freezing the same with torch._inductor.config.freezing=True (BN folded into the conv)
Training ("fwd+bwd", train mode: batch-stat BN, forward + backward):
  fastops          fastops.nn.ConvBNAct, and fastops.nn.DepthwiseSeparable (the "separable" cases:
                   the MobileNet V1 block, depthwise then pointwise ConvBNAct)
  eager / compile  the same block unfused

Shapes are the MobileNet V2/V3 depthwise layers the issue names. Bytes for the roof: read x,
write y (fwd); in fwd+bwd additionally read g, read x, write dx (weights are negligible).
"""

from __future__ import annotations

import copy
import importlib

import torch
from torch import nn

from . import harness

# (C, H, W, k, stride, act) -- from the issue: MobileNet V2 / V3 depthwise layers
LAYERS = [
    (144, 56, 56, 3, 1, "relu6"),
    (96, 112, 112, 3, 2, "relu6"),
    (384, 14, 14, 3, 1, "relu6"),
    (960, 7, 7, 3, 1, "relu6"),
    (72, 56, 56, 5, 2, "hardswish"),
    (672, 14, 14, 5, 1, "hardswish"),
]
ACT_MODULES = {"relu6": nn.ReLU6, "hardswish": nn.Hardswish, "relu": nn.ReLU}
# (C_in, C_out, H, W) -- MobileNet V1 depthwise-separable blocks (3x3, stride 1, ReLU6)
SEPARABLE = [(128, 128, 56, 56), (512, 512, 14, 14)]


def _eager_block(c, k, stride, act):
    block = nn.Sequential(
        nn.Conv2d(c, c, k, stride, (k - 1) // 2, groups=c, bias=False), nn.BatchNorm2d(c), ACT_MODULES[act]()
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fixed weights (every contender builds its own copy) and a trained-looking BN
        block[0].weight.copy_(torch.randn(block[0].weight.shape, generator=gen) * 0.3)
        block[1].weight.copy_(torch.rand(c, generator=gen) + 0.5)
        block[1].bias.copy_(torch.randn(c, generator=gen))
        block[1].running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        block[1].running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return block


def contenders(c, h, w, k, stride, act, mode, layout, dtype, device, make_sample):
    fmt = harness.memory_format(layout)

    def blocks():
        eager = _eager_block(c, k, stride, act).to(device=device, dtype=dtype, memory_format=fmt)
        fastops = importlib.import_module("fastops")
        ours = fastops.nn.ConvBNAct(c, c, k, stride, groups=c, activation_layer=ACT_MODULES[act]).to(
            device=device, dtype=dtype, memory_format=fmt
        )
        ours.load_state_dict(eager.state_dict())
        for m in (eager, ours):
            m.train(mode == "fwd+bwd")
        return eager, ours

    def runner(module):
        if mode == "fwd":
            def run(s):
                with torch.no_grad():
                    return module(s["args"][0])
            return run

        def run(s):
            x = s["args"][0]
            return torch.autograd.grad(module(x), [x] + list(module.parameters()), s["grad"])

        return run

    return {"fastops": lambda: runner(blocks()[1]), "eager": lambda: runner(blocks()[0]),
            **harness.compile_contenders(lambda: blocks()[0], runner, mode, make_sample)}


def make_case(n, layer, dtype, layout, mode, device) -> harness.Case:
    c, h, w, k, stride, act = layer
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    elem = torch.empty((), dtype=dtype).element_size()
    x_bytes, y_bytes = n * c * h * w * elem, n * c * oh * ow * elem
    moved = x_bytes + y_bytes if mode == "fwd" else 2 * x_bytes + 2 * y_bytes + x_bytes
    fmt = harness.memory_format(layout)
    gen = torch.Generator().manual_seed(0)
    base_x = torch.randn((n, c, h, w), generator=gen).to(device=device, dtype=dtype)
    base_g = torch.randn((n, c, oh, ow), generator=gen).to(device=device, dtype=dtype)

    def make(_k):
        x = base_x.clone(memory_format=fmt)
        if mode == "fwd":
            return {"args": (x,), "grad": None}
        return {"args": (x.requires_grad_(),), "grad": base_g.clone(memory_format=fmt)}

    return harness.Case(
        op=f"dwconv{k}x{k}s{stride}+bn+{act}",
        shape=(n, c, h, w),
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=moved,
        flops=(1 if mode == "fwd" else 3) * 2 * n * c * oh * ow * k * k,
        make_inputs=make,
        contenders=contenders(c, h, w, k, stride, act, mode, layout, dtype, device, lambda: make(0)),
    )


def make_separable_case(n, block, dtype, layout, device) -> harness.Case:
    """Training step (forward + backward, batch-stat BN) of a DepthwiseSeparable block."""
    cin, cout, h, w = block
    fmt = harness.memory_format(layout)
    elem = torch.empty((), dtype=dtype).element_size()
    x_bytes, y_bytes = n * cin * h * w * elem, n * cout * h * w * elem
    gen = torch.Generator().manual_seed(0)
    base_x = torch.randn((n, cin, h, w), generator=gen).to(device=device, dtype=dtype)
    base_g = torch.randn((n, cout, h, w), generator=gen).to(device=device, dtype=dtype)

    def make(_k):
        return {"args": (base_x.clone(memory_format=fmt).requires_grad_(),), "grad": base_g.clone(memory_format=fmt)}

    def modules(dt=dtype):
        fastops = importlib.import_module("fastops")
        eager = nn.Sequential(
            nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)),
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True)),
        )
        # the same weights for every contender (each builds its own copy; until 2026-11-30 each
        # drew its own, and the outputs were checked against another network's: "mismatch")
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            eager[0][0].weight.copy_(torch.randn(eager[0][0].weight.shape, generator=gen) * 0.3)
            eager[1][0].weight.copy_(torch.randn(eager[1][0].weight.shape, generator=gen) / cin ** 0.5)
            for bn in (eager[0][1], eager[1][1]):
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
        ours = fastops.nn.DepthwiseSeparable(cin, cout, 3, 1, act="relu6")
        ours.load_state_dict(eager.state_dict())
        return [m.to(device=device, dtype=dt, memory_format=fmt).train() for m in (eager, ours)]

    def runner(module):
        def run(s):
            x = s["args"][0]
            return torch.autograd.grad(module(x), [x] + list(module.parameters()), s["grad"])

        return run

    def truth(s):  # the eager twin in float64
        x = s["args"][0].detach().double().contiguous(memory_format=fmt).requires_grad_()
        return runner(modules(torch.float64)[0])({"args": (x,), "grad": s["grad"].double().contiguous(memory_format=fmt)})

    return harness.Case(
        op="separable3x3+bn+relu6",
        shape=(n, cin, h, w),
        dtype=dtype,
        layout=layout,
        mode="fwd+bwd",
        device=device,
        # x read twice (forward, backward), y written, g read, dx written (weights negligible)
        bytes_moved=3 * x_bytes + 2 * y_bytes,
        make_inputs=make,
        contenders={
            "fastops": lambda: runner(modules()[1]),
            "eager": lambda: runner(modules()[0]),
            **harness.compile_contenders(lambda: modules()[0], runner, "fwd+bwd", lambda: make(0)),
        },
        truth=truth,
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    """Quick: N=8 inference in both layouts, training at the first shape and of the first
    DepthwiseSeparable block. Full: N=1 and N=8, inference and training, every shape and layout."""
    if dtypes is None:
        dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32]
    layouts = layouts or (["channels_last"] if device == "cuda" and quick else ["nchw", "channels_last"])
    batches = harness.batch_sizes(quick, device)
    derived = harness.model_layers("depthwise")  # --model-layers: the networks' own layers instead
    layers = LAYERS if derived is None else [
        (d["C"], d["H"], d["W"], d["k"], d["stride"], "relu6") for d in derived if d["OC"] == d["C"] and d["dilation"] == 1]
    out = []
    for dtype in dtypes:
        for n in batches:
            for layer in layers:
                for layout in layouts:
                    out.append(make_case(n, layer, dtype, layout, "fwd", device))
                    if not quick or (derived is None and layer is LAYERS[0]):
                        out.append(make_case(n, layer, dtype, layout, "fwd+bwd", device))
            for block in [] if derived is not None else SEPARABLE if not quick else SEPARABLE[:1]:
                for layout in layouts:
                    out.append(make_separable_case(n, block, dtype, layout, device))
    return out
