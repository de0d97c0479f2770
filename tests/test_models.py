"""fastops.models against torchvision's (timm's, for Xception) networks: identical state_dict keys
and shapes, their weights load and give the same eval outputs, a training step gives the same
loss, gradients and BatchNorm buffers; the registry; torch.compile without graph breaks. Small
resolutions so the suite stays fast."""

import copy

import pytest
import torch

import fastops
from helpers import assert_scaled_close, check_module_parity, randn, randomise_bn

torchvision = pytest.importorskip("torchvision")

TV_MODELS = [
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "resnext50_32x4d",
]


def _theirs(name, **kw):
    if name == "xception":
        timm = pytest.importorskip("timm")
        return timm.create_model("legacy_xception", **kw)
    return getattr(torchvision.models, name)(**kw)


def _pair(name, seed=0, **kw):
    """(fastops model, upstream model) with the upstream's (randomised-BN) weights loaded."""
    torch.manual_seed(seed)
    theirs = randomise_bn(_theirs(name, **kw), seed)
    ours = fastops.models.create_model(name, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("name", TV_MODELS + ["xception"])
def test_state_dict_layout_is_upstreams(name):
    ours, theirs = fastops.models.create_model(name), _theirs(name)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert [t.shape for t in a.values()] == [t.shape for t in b.values()]


@pytest.mark.parametrize("name", TV_MODELS + ["xception"])
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_upstream_weights_give_upstream_outputs(name, layout):
    ours, theirs = _pair(name, num_classes=17)
    ours.eval(), theirs.eval()
    size = 75 if name == "xception" else 64
    x = randn((2, 3, size, size + 3), scale=1.0)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (2, 17)
    assert_scaled_close(a, b, rtol=1e-4)


@pytest.mark.parametrize("name, kw, size", [
    ("mobilenet_v2", dict(width_mult=0.5), 64), ("mobilenet_v3_small", {}, 64), ("shufflenet_v2_x0_5", {}, 64),
    ("squeezenet1_1", {}, 48), ("resnext50_32x4d", {}, 64), ("xception", {}, 48),
])
def test_training_step_matches_upstream(name, kw, size):
    """Loss, every gradient, the BN buffers and the parameters after two SGD steps (momentum,
    weight decay) equal the upstream model's; dropout is switched off in both (its masks are
    random). In float64: a float32 network in training mode has ReLU6/ReLU inputs within 1e-5 of
    a kink, and a rounding difference that moves one across changes the input gradient by a few
    percent (measured: one flip in MobileNet V2's last layer moves it 4%), whichever of two
    correct implementations computes it. The float32 loss is checked too."""
    ours, theirs = _pair(name, num_classes=10, **kw)
    for m in list(ours.modules()) + list(theirs.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = randn((2, 3, size, size), scale=1.0).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (2,), generator=torch.Generator().manual_seed(1))
    ours32, theirs32 = copy.deepcopy(ours).train(), copy.deepcopy(theirs).train()
    la = torch.nn.functional.cross_entropy(ours32(x), labels)
    lb = torch.nn.functional.cross_entropy(theirs32(x), labels)
    assert_scaled_close(la, lb, rtol=1e-4)
    ours.double(), theirs.double()
    check_module_parity(ours, theirs, x.double(), "train", rtol=1e-9, grad_rtol=1e-8, steps=2)


def test_builders_arguments():
    assert fastops.models.mobilenet_v2(width_mult=0.5).features[0][0].out_channels == 16
    assert fastops.models.mobilenet_v2(num_classes=7).classifier[1].out_features == 7
    tv = torchvision.models.mobilenet_v2(width_mult=0.75)
    assert list(fastops.models.mobilenet_v2(width_mult=0.75).state_dict()) == list(tv.state_dict())
    with pytest.raises(ValueError, match="mobilenet_v2.*width_mult"):
        fastops.models.mobilenet_v2(width_mult=0)


def test_registry():
    names = fastops.models.list_models()
    for name in TV_MODELS + ["xception"]:
        assert name in names and callable(getattr(fastops.models, name))
    assert fastops.models.list_models("shufflenet_v2*") == [f"shufflenet_v2_x{s}" for s in ("0_5", "1_0", "1_5", "2_0")]
    model = fastops.models.create_model("squeezenet1_1", num_classes=3)
    assert model.classifier[1].out_channels == 3
    with pytest.raises(ValueError, match="create_model.*unknown model 'nope'"):
        fastops.models.create_model("nope")


def test_kaiming_init_as_torchvision():
    """Conv weights Kaiming-normal fan_out (std sqrt(2 / fan_out)), BN 1/0, linear N(0, 0.01)."""
    torch.manual_seed(0)
    model = fastops.models.mobilenet_v2()
    conv = model.features[-1][0]  # 320 -> 1280 1x1: fan_out = 1280
    assert abs(conv.weight.std().item() - (2.0 / 1280) ** 0.5) < 0.05 * (2.0 / 1280) ** 0.5
    bn = model.features[-1][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
    assert abs(model.classifier[1].weight.std().item() - 0.01) < 0.001


@pytest.mark.parametrize("mode", ("eval", "train"))
def test_compile_fullgraph(mode):
    torch._dynamo.reset()
    model = randomise_bn(fastops.models.mobilenet_v3_small(num_classes=10))
    getattr(model, mode)()
    x = randn((2, 3, 48, 48), scale=1.0).to(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    if mode == "eval":
        assert_scaled_close(got, model(x), rtol=1e-4)
    else:
        got.sum().backward()
        assert model.features[1].block[0][0].weight.grad is not None


def test_export_eval():
    """torch.export of a fastops network (eval) runs the exported program with the same outputs."""
    model = randomise_bn(fastops.models.mobilenet_v3_small(num_classes=10)).eval()
    x = randn((2, 3, 48, 48), scale=1.0).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
    program = torch.export.export(model, (x,))
    assert_scaled_close(program.module()(x), expected, rtol=1e-5)
