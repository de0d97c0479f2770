"""MobileNet V1 and ShuffleNet V1 (the paper networks torchvision lacks) and ShuffleV1Block:
parameter and multiply-add counts against the papers, shapes and layouts, the registry, and
the fused forward against a plain conv / bn / relu forward from the same modules (eval and
train: outputs, gradients, BatchNorm buffers)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastops
import fastops.models.shufflenet_v1  # noqa: F401  (registers shufflenet_v1)
from fastops import reference
from fastops.models import create_model, list_models
from fastops.models.mobilenet_v1 import mobilenet_v1
from fastops.models.shufflenet_v1 import shufflenet_v1
from fastops.nn.shufflenet_v1 import ShuffleV1Block
from helpers import randn

TOL = dict(rtol=1e-4, atol=1e-4)  # float32
TOL64 = dict(rtol=1e-8, atol=1e-8)


# ---- plain (unfused) forwards, written from the modules' children ----

def _plain(cba, x):
    """A ConvBNAct as the plain nn.Sequential it is: conv, bn [, act] modules one after another."""
    return nn.Sequential.forward(cba, x)


def plain_block(b, x):
    h = F.relu(b.conv1[1](b.conv1[0](x)))
    if b.conv1[0].groups > 1:
        h = reference.channel_shuffle(h, b.groups)
    h = b.conv2[1](b.conv2[0](h))
    h = b.conv3[1](b.conv3[0](h))
    if b.stride == 1:
        return F.relu(h + x)
    return torch.cat([F.avg_pool2d(x, 3, 2, 1), F.relu(h)], 1)


def plain_mobilenet_v1(m, x):
    x = _plain(m.features[0], x)
    for block in m.features[1:]:
        x = _plain(block[1], _plain(block[0], x))
    return m.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def plain_shufflenet_v1(m, x):
    x = m.maxpool(_plain(m.conv1, x))
    for stage in (m.stage2, m.stage3, m.stage4):
        for block in stage:
            x = plain_block(block, x)
    return m.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


PLAIN = {"mobilenet_v1": plain_mobilenet_v1, "shufflenet_v1": plain_shufflenet_v1}


def count_macs(model, plain_forward, size=224):
    """Multiply-adds of one 1x3xHxW image (eval, no_grad): each conv out_h * out_w * out_c *
    (in_c / groups) * kh * kw, each Linear in * out; counted by forward hooks over the plain
    forward (the fused eval path hands the conv's weights to kernels without calling the conv)."""
    total, calls = [0], []

    def conv_hook(m, inputs, out):
        total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        calls.append(m)

    def linear_hook(m, inputs, out):
        total[0] += m.in_features * m.out_features
        calls.append(m)

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook) for m in layers]
    try:
        model.eval()
        with torch.no_grad():
            plain_forward(model, randn((1, 3, size, size)))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == len(layers) and set(map(id, calls)) == set(map(id, layers)), "a layer ran twice or never"
    return total[0]


def _randomise(module):
    """Non-trivial BN state (so folding really changes the kernels) and a classifier with O(1)
    weights and biases (so the output is not dominated by the bias)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, m.in_features ** -0.5)
                m.bias.normal_()
    return module


def _grads(model, forward, x, g=None):
    """(output, {"input": x's gradient, parameter name: gradient}, g) of forward(model, x)
    backpropagating g (random normal when None)."""
    x = x.detach().clone().requires_grad_()
    y = forward(model, x)
    if g is None:
        g = randn(y.shape, scale=1.0)
    y.backward(g.to(y.dtype))
    grads = {"input": x.grad, **{name: p.grad for name, p in model.named_parameters()}}
    assert all(v is not None for v in grads.values()), [k for k, v in grads.items() if v is None]
    return y, grads, g


def _close32(scaled):
    """float32 comparison at rtol=atol=1e-4; `scaled`: atol 1e-4 of expected's largest magnitude."""
    def close(actual, expected, what):
        tol = dict(TOL)
        if scaled:
            tol["atol"] = max(tol["atol"], tol["rtol"] * expected.detach().abs().max().item())
        torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")
    return close


def _close64(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL64, msg=lambda m: f"{what}: {m}")


def _check_buffers(a, b, close):
    """BatchNorm buffers after one training step: running statistics close, one batch tracked."""
    buffers_b = dict(b.named_buffers())
    for name, buf in a.named_buffers():
        close(buf, buffers_b[name], name)
    assert all(m.num_batches_tracked.item() == 1 for m in a.modules() if isinstance(m, nn.BatchNorm2d))


def check_fused_vs_plain(module, plain_forward, x, train, scaled=False):
    """module (fused) against plain_forward on deep copies, in eval or train mode.

    float32: the output at rtol=atol=1e-4 (eval: also under no_grad, the cached-fold path;
    train: also the BatchNorm buffers after the step). With `scaled` (whole networks) atol is
    1e-4 of the largest expected magnitude: through ~30 BatchNorms over few samples the plain
    float32 forward is itself ~1e-4 off the exact output (the fused one no more).

    Gradients (of the input and of every parameter) are compared in float64, where the same
    fastops kernels run, at rtol=atol=1e-8 (with the output and buffers). Not in float32: there a
    ReLU input within rounding of zero lands on either side of the kink depending on summation
    order, and one such flip moves a gradient by ~1% (measured: shufflenet_v1 in training mode,
    input gradient off by 0.2 at a scale of 18 where the plain path's own error was 5e-4); and
    in training mode the plain float32 gradients themselves stray over 1e-4 from the exact ones."""
    module64 = copy.deepcopy(module).double()
    ref, ref64 = copy.deepcopy(module), copy.deepcopy(module).double()
    for m in (module, ref, module64, ref64):
        m.train(train)
    close32 = _close32(scaled)
    if not train:
        with torch.no_grad():
            close32(module(x), plain_forward(ref, x), "no_grad output")
    y = module(x)
    close32(y, plain_forward(ref, x), "output")
    if train:
        _check_buffers(module, ref, close32)

    x64 = x.double()
    ya, grads_a, g = _grads(module64, lambda m, t: m(t), x64)
    yb, grads_b, _ = _grads(ref64, plain_forward, x64, g)
    _close64(ya, yb, "float64 output")
    assert grads_a.keys() == grads_b.keys()
    for name, ga in grads_a.items():
        _close64(ga, grads_b[name], f"grad of {name}")
    if train:
        _check_buffers(module64, ref64, _close64)
    return y


# ---- parameter and multiply-add counts against the papers ----

def test_mobilenet_v1_params_and_macs_match_the_paper():
    model = mobilenet_v1()
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    macs = count_macs(model, plain_mobilenet_v1)
    assert abs(macs - 569e6) / 569e6 < 0.01, macs
    assert macs == 568_740_352


SHUFFLENET_PAPER_MACS = {1: 143e6, 2: 140e6, 3: 137e6, 4: 133e6, 8: 137e6}  # Table 2, ShuffleNet 1x
SHUFFLENET_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                       8: (384, 768, 1536)}  # stages 2-4 at 1x, Table 1


@pytest.mark.parametrize("groups", sorted(SHUFFLENET_PAPER_MACS))
def test_shufflenet_v1_macs_match_the_paper(groups):
    macs = count_macs(shufflenet_v1(groups=groups), plain_shufflenet_v1)
    paper = SHUFFLENET_PAPER_MACS[groups]
    assert abs(macs - paper) / paper < 0.03, macs
    if groups == 3:  # "ShuffleNet 1x (g = 3)": 140 MFLOPs
        assert abs(macs - 140e6) / 140e6 < 0.03, macs


@pytest.mark.parametrize("width_mult, paper", [(0.5, 38e6), (2.0, 524e6)])
def test_shufflenet_v1_scaled_macs_match_the_paper(width_mult, paper):
    macs = count_macs(shufflenet_v1(groups=3, width_mult=width_mult), plain_shufflenet_v1)
    assert abs(macs - paper) / paper < 0.03, macs


def test_shufflenet_v1_structure():
    model = shufflenet_v1(groups=3)
    assert [name for name, _ in model.named_children()] == ["conv1", "maxpool", "stage2", "stage3", "stage4", "fc"]
    assert model.conv1.out_channels == 24 and model.fc.in_features == 960
    assert [len(s) for s in (model.stage2, model.stage3, model.stage4)] == [4, 8, 4]
    for stage, out in zip((model.stage2, model.stage3, model.stage4), (240, 480, 960)):
        assert stage[0].stride == 2 and all(b.stride == 1 for b in stage[1:])
        assert all(b.out_channels == out and b.groups == 3 for b in stage)
    assert model.stage2[0].conv1[0].groups == 1 and model.stage3[0].conv1[0].groups == 3
    assert model.stage2[0].conv3[0].out_channels == 240 - 24 and model.stage2[1].conv1[0].out_channels == 60


def test_mobilenet_v1_structure():
    model = mobilenet_v1()
    assert len(model.features) == 14 and isinstance(model.features[0], fastops.nn.ConvBNAct)
    assert all(isinstance(b, fastops.nn.DepthwiseSeparable) for b in model.features[1:])
    strides = [b[0][0].stride[0] for b in model.features[1:]]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[1].in_features == 1024
    assert sum(type(m) is nn.ReLU for m in model.modules()) == 27  # one per conv, ReLU (not ReLU6)


# ---- builders: width multipliers, shapes, layouts, registry, argument checks ----

@pytest.mark.parametrize("name, kwargs", [
    ("mobilenet_v1", dict(width_mult=0.5)),
    ("mobilenet_v1", dict(width_mult=0.25)),
    ("mobilenet_v1", dict(width_mult=1.0, dropout=0.2)),
    ("shufflenet_v1", dict(groups=3, width_mult=0.5)),
    ("shufflenet_v1", dict(groups=8, width_mult=0.5)),
    ("shufflenet_v1", dict(groups=4, width_mult=0.5)),
    ("shufflenet_v1", dict(groups=3, width_mult=2.0)),
    ("shufflenet_v1", dict(groups=1, width_mult=0.25)),
], ids=str)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_output_shape(name, kwargs, layout):
    model = create_model(name, num_classes=10, **kwargs)
    x = randn((2, 3, 64, 64))
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    for train in (False, True):
        model.train(train)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (2, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize("width_mult", (0.25, 0.5))
def test_mobilenet_v1_width_multiplier(width_mult):
    model = mobilenet_v1(width_mult=width_mult, num_classes=10)
    assert model.features[0].out_channels == max(8, int(32 * width_mult))
    assert model.classifier[1].in_features == int(1024 * width_mult)


@pytest.mark.parametrize("groups", (1, 2, 3, 4, 8))
@pytest.mark.parametrize("width_mult", (0.25, 0.5, 1.5, 2.0))
def test_shufflenet_v1_width_multiplier_channels_divide(groups, width_mult):
    model = shufflenet_v1(groups=groups, width_mult=width_mult, num_classes=10)
    assert model.conv1.out_channels % groups == 0
    for i, stage in enumerate((model.stage2, model.stage3, model.stage4)):
        out = stage[0].out_channels
        assert out % (4 * groups) == 0 and abs(out - width_mult * SHUFFLENET_CHANNELS[groups][i]) <= 2 * groups
        for b in stage:
            assert b.conv3[0].out_channels % groups == 0 and b.conv2[0].out_channels % groups == 0


def test_registry():
    assert "mobilenet_v1" in list_models() and "shufflenet_v1" in list_models("shufflenet*")
    model = create_model("shufflenet_v1", groups=8, num_classes=10)
    assert model.groups == 8 and model.fc.out_features == 10
    assert model.stage4[0].out_channels == 1536
    assert create_model("mobilenet_v1", num_classes=10).classifier[1].out_features == 10


@pytest.mark.parametrize("groups", (0, 5, 6, 16))
def test_bad_groups_raise(groups):
    with pytest.raises(ValueError, match="shufflenet_v1: groups"):
        shufflenet_v1(groups=groups)
    with pytest.raises(ValueError, match="groups"):
        create_model("shufflenet_v1", groups=groups)


def test_block_rejects_channels_that_do_not_divide():
    with pytest.raises(ValueError, match="groups"):
        ShuffleV1Block(24, 200, groups=3, stride=2)  # bottleneck 50 is not a multiple of 3
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        ShuffleV1Block(24, 48, groups=2, stride=1)


# ---- fused against plain ----

BLOCK_CASES = [  # in, out, groups, stride, first_group_conv
    (24, 240, 3, 2, False),
    (240, 240, 3, 1, True),
    (60, 120, 3, 2, True),
    (36, 36, 1, 1, True),
    (24, 144, 1, 2, False),
    (32, 32, 2, 1, True),
    (16, 64, 8, 2, True),
    (64, 64, 8, 1, True),
    (12, 48, 4, 2, False),
    (64, 64, 4, 1, True),
]


def test_block_children_and_attributes():
    b = ShuffleV1Block(24, 240, 3, 2, first_group_conv=False)
    assert [name for name, _ in b.named_children()] == ["conv1", "conv2", "conv3"]
    assert (b.stride, b.groups, b.out_channels) == (2, 3, 240)
    assert b.conv1[0].groups == 1 and b.conv1[0].out_channels == 60 and isinstance(b.conv1[2], nn.ReLU)
    assert b.conv2[0].groups == 60 and b.conv2[0].stride == (2, 2) and len(b.conv2) == 2
    assert b.conv3[0].groups == 3 and b.conv3[0].out_channels == 216 and len(b.conv3) == 2


@pytest.mark.parametrize("stride", (1, 2))
def test_block_eval_runs_fused_kernels_only(stride):
    """In inference every conv of the unit runs inside a fused kernel (no nn.Conv2d forward)."""
    b = _randomise(ShuffleV1Block(48, 48 if stride == 1 else 96, 3, stride)).eval()
    x = randn((2, 48, 9, 11))
    with torch.no_grad():
        expected = plain_block(copy.deepcopy(b), x)
    called = []
    for m in b.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda *a: called.append(a[0]))
    with torch.no_grad():
        torch.testing.assert_close(b(x), expected, **TOL)
    assert not called


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "in{}-out{}-g{}-s{}-fgc{}".format(*c))
@pytest.mark.parametrize("n, layout", [(1, "nchw"), (3, "nchw"), (3, "channels_last")])
@pytest.mark.parametrize("train", (False, True), ids=("eval", "train"))
def test_block_fused_matches_plain(case, n, layout, train):
    cin, cout, groups, stride, fgc = case
    block = _randomise(ShuffleV1Block(cin, cout, groups, stride, first_group_conv=fgc))
    x = randn((n, cin, 9, 11), scale=1.0)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    y = check_fused_vs_plain(block, plain_block, x, train)
    assert y.shape == (n, cout, 9 if stride == 1 else 5, 11 if stride == 1 else 6)


MODEL_CASES = [
    ("mobilenet_v1", dict(width_mult=0.25, num_classes=10)),
    ("shufflenet_v1", dict(groups=3, width_mult=0.5, num_classes=10)),
]


@pytest.mark.parametrize("name, kwargs", MODEL_CASES, ids=[name for name, _ in MODEL_CASES])
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("train", (False, True), ids=("eval", "train"))
def test_model_fused_matches_plain(name, kwargs, layout, train):
    model = _randomise(create_model(name, **kwargs))
    x = randn((3, 3, 57, 63), scale=1.0)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    y = check_fused_vs_plain(model, PLAIN[name], x, train, scaled=True)
    assert y.shape == (3, 10)
