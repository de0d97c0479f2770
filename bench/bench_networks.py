"""Benchmark cases for whole networks: torchvision's MobileNet V2, MobileNet V3-Large and
ShuffleNet V2 1.0 (quick; full adds MobileNet V3-Small, ShuffleNet V2 0.5, SqueezeNet 1.1,
ResNeXt-50, the networks torchvision lacks: MobileNet V1, ShuffleNet V1 g=3, Xception, and N=1),
224x224 images (Xception 299x299).

  fastops   fastops.optimize(the torchvision model): the same weights, fused blocks
  fastops.models  fastops' own builder of the network, loaded with the torchvision weights
  eager     the torchvision model, same layout. For the networks torchvision lacks: the fastops
            builder's model run as plain PyTorch modules (its twin: the same children and
            weights; each fused block's class swapped for one whose forward is plain conv / BN /
            act / shuffle modules; Xception: timm's legacy_xception), and fastops = the builder
  compile   torch.compile of the torchvision model
  compile+freezing  the same with torch._inductor.config.freezing=True (inference only)

Inference (fwd): eval mode, under torch.no_grad. Training (fwd+bwd; MobileNet V2, full: every
network, at the throughput batch): a training step in train mode (BatchNorm on batch
statistics, running stats updated): forward, backward into every parameter's .grad, then an SGD
step (momentum 0.9, weight decay 1e-4, the seed's recipe; lr 1e-3, small, so that the weights
stay near their start over the timed calls) and the gradients cleared. The shape column is
the input's; a network has no single roof (GB/s and roof stay empty); images/s is reported.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util

import torch

from . import harness

QUICK = ["mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0"]
FULL = QUICK + ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "resnext50_32x4d",
                "mobilenet_v1", "shufflenet_v1", "xception"]
SIZES = {"xception": 299}
TWINLESS = ("mobilenet_v1", "shufflenet_v1", "xception")  # not in torchvision
TRAIN_QUICK = ["mobilenet_v2"]  # training steps; full: every network


class _PlainShuffleV1Block(torch.nn.Module):
    """fastops.nn.ShuffleV1Block's computation from its children, as plain modules."""

    def forward(self, x):
        h = self.conv1(x)  # conv1 / conv2 / conv3: plain Sequentials of conv, BN [, ReLU]
        if self.conv1[0].groups > 1:
            h = torch.nn.functional.channel_shuffle(h, self.groups)
        h = self.conv3(self.conv2(h))
        if self.stride == 1:
            return torch.relu(h + x)
        return torch.cat([torch.nn.functional.avg_pool2d(x, 3, 2, 1), torch.relu(h)], 1)


def plain_twin(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """The eager baseline of a network torchvision lacks: a copy of fastops' `model` computed by
    plain PyTorch modules (the same children and weights). Xception: timm's legacy_xception with
    the model's state_dict (the keys are timm's)."""
    if name == "xception":
        twin = importlib.import_module("timm").create_model("legacy_xception", pretrained=False)
        twin.load_state_dict(model.state_dict())
        return twin
    fastops = importlib.import_module("fastops")
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, (fastops.nn.ConvBNAct, fastops.nn.DepthwiseSeparable)):
            m.__class__ = torch.nn.Sequential
        elif isinstance(m, fastops.nn.ShuffleV1Block):
            m.__class__ = _PlainShuffleV1Block
    return twin


def _contenders(name: str, dtype, layout: str, mode: str, device: str, sample) -> dict:
    fmt = harness.memory_format(layout)

    def build_eager():
        torch.manual_seed(0)
        if name in TWINLESS:  # the fastops builder's network as plain modules
            model = plain_twin(name, importlib.import_module("fastops").models.create_model(name))
        else:
            model = getattr(importlib.import_module("torchvision").models, name)()
        return model.to(device=device, dtype=dtype, memory_format=fmt).train(mode != "fwd")

    def build_fastops():
        if name in TWINLESS:
            torch.manual_seed(0)
            model = importlib.import_module("fastops").models.create_model(name)
            return model.to(device=device, dtype=dtype, memory_format=fmt).train(mode != "fwd")
        return importlib.import_module("fastops").optimize(build_eager())

    def runner(model):
        if mode == "fwd":
            def run(s):
                with torch.no_grad():
                    return model(*s["args"])
            return run
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)

        def run(s):
            # a training step in train mode (the running stats move as in training). What is
            # returned, and so checked against eager, is the output of the first step (before any
            # weight moved): the gradients of a deep float32 network differ by a few percent
            # wherever rounding moves a ReLU input across its kink (tests/test_models.py checks
            # training parity in float64 instead). The seed makes the eager-mode contenders draw
            # the same dropout masks (the classifier's Dropout), whatever their builds drew before
            # (fastops.models' builder initialises a network first: it was shown as "mismatch",
            # off by 0.43). torch.compile draws its own (still "mismatch", off by ~2, with or
            # without inductor's fallback_random).
            torch.manual_seed(0)
            y = model(*s["args"])
            y.backward(s["grad"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            return y.detach()
        return run

    def build_builder():  # fastops.models' own network, with the torchvision model's weights
        eager = build_eager()
        model = importlib.import_module("fastops").models.create_model(name)
        model.load_state_dict(eager.state_dict())
        return model.to(device=device, dtype=dtype, memory_format=fmt).train(mode != "fwd")

    contenders = {"fastops": lambda: runner(build_fastops()), "eager": lambda: runner(build_eager()),
                  **harness.compile_contenders(build_eager, runner, mode, sample),
                  "fastops.models": lambda: runner(build_builder())}
    if name in TWINLESS:
        del contenders["fastops.models"]  # "fastops" is the builder's network already
    return contenders


def make_case(name, n, dtype, layout, mode, device) -> harness.Case:
    size = SIZES.get(name, 224)
    x_shape = (n, 3, size, size)
    gen = torch.Generator().manual_seed(0)
    base_x = torch.randn(x_shape, generator=gen).to(device=device, dtype=dtype)
    base_g = torch.randn((n, 1000), generator=gen).to(device=device, dtype=dtype)

    def make(k: int) -> dict:
        # the image needs no gradient: a training step differentiates the weights
        x = base_x.clone(memory_format=harness.memory_format(layout))
        return {"args": (x,), "grad": base_g.clone() if mode == "fwd+bwd" else None}

    return harness.Case(
        op=name,
        shape=x_shape,
        dtype=dtype,
        layout=layout,
        mode=mode,
        device=device,
        bytes_moved=0,
        items=n,  # images per call: images/s
        make_inputs=make,
        contenders=_contenders(name, dtype, layout, mode, device, lambda: make(0)),
        label="network",
    )


def cases(quick: bool, device: str, dtypes=None, layouts=None) -> list[harness.Case]:
    if importlib.util.find_spec("torchvision") is None:
        return []
    dtypes = harness.default_dtypes(device, dtypes)
    layouts = layouts or ["channels_last"]
    batches = harness.batch_sizes(quick, device)
    out = []
    for dtype in dtypes:
        for layout in layouts:
            names = QUICK if quick else [n for n in FULL if n != "xception" or importlib.util.find_spec("timm")]
            for name in names:
                out += [make_case(name, n, dtype, layout, "fwd", device) for n in batches]
            for name in TRAIN_QUICK if quick else names:
                out.append(make_case(name, batches[-1], dtype, layout, "fwd+bwd", device))
    return out
