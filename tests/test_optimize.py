"""fastops.optimize: torchvision and timm models and plain Sequential stacks keep their outputs,
state_dict and training behaviour, and run fastops modules afterwards."""

import copy

import pytest
import torch
from torch import nn

import fastops
from fastops import nn as fnn
from helpers import assert_scaled_close, check_module_parity, randn, randomise_bn

torchvision = pytest.importorskip("torchvision")

# model -> a twin that must appear after optimize
TV_CASES = {
    "mobilenet_v2": fnn.InvertedResidual, "mobilenet_v3_large": fnn.SqueezeExcite,
    "shufflenet_v2_x0_5": fnn.ShuffleV2Block, "squeezenet1_1": fnn.Fire, "resnet18": fnn.BasicBlock,
    "resnext50_32x4d": fnn.Bottleneck,
}


def _eval_pair(model, x):
    model.eval()
    optimized = fastops.optimize(model)
    with torch.no_grad():
        assert_scaled_close(optimized(x), model(x), rtol=1e-4)
    return optimized


@pytest.mark.parametrize("name", sorted(TV_CASES))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_torchvision_models_keep_outputs(name, layout):
    torch.manual_seed(0)
    model = randomise_bn(getattr(torchvision.models, name)(num_classes=10))
    x = randn((2, 3, 64, 67), scale=1.0)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    optimized = _eval_pair(model, x)
    assert list(optimized.state_dict()) == list(model.state_dict())
    kinds = {type(m) for m in optimized.modules()}
    assert TV_CASES[name] in kinds
    assert not any(type(m).__module__.startswith("fastops") for m in model.modules()), "the original was changed"


def test_timm_models_keep_outputs():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomise_bn(timm.create_model("legacy_xception", num_classes=10))
    optimized = _eval_pair(model, randn((2, 3, 71, 71), scale=1.0).to(memory_format=torch.channels_last))
    kinds = {type(m) for m in optimized.modules()}
    assert {fnn.XceptionBlock, fnn.SeparableConv2d, fnn.FusedSequential} <= kinds
    model = randomise_bn(timm.create_model("mobilenetv3_small_050", num_classes=10))
    optimized = _eval_pair(model, randn((2, 3, 64, 64), scale=1.0))
    assert fnn.Hardswish in {type(m) for m in optimized.modules()}


def _plain():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)),
        nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.Hardswish(), nn.ChannelShuffle(3),
        nn.Conv2d(24, 24, 1, groups=3), nn.BatchNorm2d(24), nn.Hardsigmoid(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5),
    )


@pytest.mark.parametrize("mode", ("eval", "train"))
def test_plain_modules_train_and_eval_like_the_original(mode):
    torch.manual_seed(0)
    model = randomise_bn(_plain())
    optimized, summary = fastops.optimize(model, return_summary=True)
    assert summary["torch.nn.modules.container.Sequential -> fastops.nn.FusedSequential"] == 2
    assert summary["torch.nn.modules.channelshuffle.ChannelShuffle -> fastops.nn.ChannelShuffle"] == 1
    assert [s[0] for s in fnn.sequential.plan(list(optimized))][:4] == ["conv", "module", "conv", "module"]
    check_module_parity(optimized, model, randn((2, 3, 17, 15), scale=1.0), mode, steps=2 if mode == "train" else 1)


def test_training_step_of_an_optimized_torchvision_model():
    """A training step of optimize(mobilenet_v2) equals the original's (float64: see
    test_models.test_training_step_matches_upstream for why)."""
    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10, dropout=0.0)).double()
    optimized = fastops.optimize(model)
    x = randn((2, 3, 48, 48), dtype=torch.float64, scale=1.0)
    check_module_parity(optimized, model, x, "train", rtol=1e-9, grad_rtol=1e-8, steps=2)


def test_inplace_and_summary(capsys):
    model = _plain()
    same = fastops.optimize(model, inplace=True, verbose=True)
    assert same is model and type(model) is fnn.FusedSequential
    out = capsys.readouterr().out
    assert "fastops.optimize: 5 modules replaced" in out and "fastops.nn.Hardsigmoid" in out
    again, summary = fastops.optimize(model, return_summary=True)  # already fused: nothing left to do
    assert not summary and type(again) is fnn.FusedSequential


def test_unknown_modules_are_left_alone():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) * 2

    model = randomise_bn(Custom()).eval()
    optimized = fastops.optimize(model)
    assert type(optimized) is Custom and type(optimized.conv) is nn.Conv2d
    x = randn((1, 3, 8, 8))
    torch.testing.assert_close(optimized(x), model(x))


def test_argument_errors():
    with pytest.raises(TypeError, match="fastops.optimize: model must be an nn.Module"):
        fastops.optimize(copy.deepcopy)


def test_optimized_model_copies_pickles_and_trains_after_loading(tmp_path):
    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.shufflenet_v2_x0_5(num_classes=10)).eval()
    optimized = fastops.optimize(model)
    x = randn((2, 3, 64, 64), scale=1.0).to(memory_format=torch.channels_last)
    with torch.no_grad():
        optimized(x)  # fills the kept folds / reordered weights; they must not break saving
    again = fastops.optimize(optimized)  # deep-copies a model that has run inference
    with torch.no_grad():
        assert_scaled_close(again(x), model(x), rtol=1e-4)
    torch.save(optimized, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded.stage2[0]) is fnn.ShuffleV2Block
    with torch.no_grad():
        assert_scaled_close(loaded(x), model(x), rtol=1e-4)
    loaded.train()
    loaded(x).sum().backward()
    assert loaded.conv1[0].weight.grad is not None
