"""The network blocks of fastops.nn against the torchvision (timm, for Xception) blocks they
replace, with identical weights: state_dict keys, outputs, gradients of the input and of every
parameter, and BatchNorm buffers after training steps; eval (BN folded into the kernels) and
train (batch statistics); NCHW, channels_last and non-contiguous inputs; odd sizes, N=1."""

from functools import partial

import pytest
import torch
from torch import nn

import fastops
from fastops import nn as fnn
from helpers import check_module_parity, make_layout, randn, randomise_bn

torchvision = pytest.importorskip("torchvision")
tvm = torchvision.models

LAYOUTS = ("contiguous", "channels_last", "strided")
MODES = ("eval", "train")


def _pair(ours, theirs, seed=0):
    """ours with theirs' (randomised) weights."""
    torch.manual_seed(seed)
    for p in theirs.parameters():
        with torch.no_grad():
            p.copy_(torch.randn_like(p) * (1.0 / max(1, p[0].numel()) ** 0.5))
    randomise_bn(theirs, seed)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _input(c, n=2, h=9, w=11, layout="contiguous"):
    return make_layout(randn((n, c, h, w), scale=1.0), layout)


V2_CASES = [(16, 16, 1, 6), (16, 24, 2, 6), (8, 8, 1, 1), (12, 20, 1, 4), (10, 10, 2, 3)]


@pytest.mark.parametrize("case", V2_CASES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inverted_residual_v2(case, mode, layout):
    inp, oup, stride, t = case
    ours, theirs = _pair(fnn.InvertedResidual(inp, oup, stride, t), tvm.mobilenetv2.InvertedResidual(inp, oup, stride, t))
    assert ours.use_res_connect == theirs.use_res_connect
    check_module_parity(ours, theirs, _input(inp, layout=layout), mode, steps=2 if mode == "train" else 1)


def _v3_pair(inp, k, exp, out, se, act, stride, dilation=1):
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    cnf = tvm.mobilenetv3.InvertedResidualConfig(inp, k, exp, out, se, act, stride, dilation, 1.0)
    theirs = tvm.mobilenetv3.InvertedResidual(cnf, norm)
    ours = fnn.InvertedResidual.v3(inp, k, exp, out, se, act, stride, dilation, norm_layer=norm)
    return _pair(ours, theirs)


V3_CASES = [(16, 3, 16, 16, True, "RE", 2, 1), (24, 5, 72, 24, True, "HS", 1, 1), (16, 3, 40, 24, False, "HS", 2, 1),
            (24, 3, 64, 24, False, "RE", 1, 1), (16, 5, 48, 16, True, "HS", 2, 2)]


@pytest.mark.parametrize("case", V3_CASES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inverted_residual_v3(case, mode, layout):
    ours, theirs = _v3_pair(*case)
    check_module_parity(ours, theirs, _input(case[0], layout=layout), mode, steps=2 if mode == "train" else 1)


@pytest.mark.parametrize("n", (1, 3))
def test_inverted_residual_odd_sizes_and_batch(n):
    ours, theirs = _pair(fnn.InvertedResidual(8, 8, 1, 6), tvm.mobilenetv2.InvertedResidual(8, 8, 1, 6))
    for mode in MODES:
        if n > 1 or mode == "eval":  # training BN needs more than one value per channel (both raise)
            check_module_parity(ours, theirs, _input(8, n=n, h=1, w=1), mode)
        check_module_parity(ours, theirs, _input(8, n=n, h=7, w=5, layout="channels_last"), mode)


@pytest.mark.parametrize("case", [(24, 48, 2), (48, 48, 1), (20, 20, 1), (20, 36, 2)], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_shuffle_v2_block(case, mode, layout):
    inp, oup, stride = case
    ours, theirs = _pair(fnn.ShuffleV2Block(inp, oup, stride), tvm.shufflenetv2.InvertedResidual(inp, oup, stride))
    check_module_parity(ours, theirs, _input(inp, layout=layout), mode, steps=2 if mode == "train" else 1)


@pytest.mark.parametrize("case", [(16, 8, 12, 12), (13, 5, 7, 9)], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fire(case, mode, layout):
    ours, theirs = _pair(fnn.Fire(*case), tvm.squeezenet.Fire(*case))
    check_module_parity(ours, theirs, _input(case[0], layout=layout), mode)


def _downsample(inp, out, stride, cls):
    return cls(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))


RESNET_CASES = [
    ("Bottleneck", 64, 16, 1, False, 1, 64), ("Bottleneck", 32, 16, 2, True, 4, 8), ("Bottleneck", 24, 8, 1, True, 2, 16),
    ("BasicBlock", 16, 16, 1, False, 1, 64), ("BasicBlock", 16, 24, 2, True, 1, 64),
]


@pytest.mark.parametrize("case", RESNET_CASES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_resnet_blocks(case, mode, layout):
    name, inp, planes, stride, down, groups, width = case
    expansion = getattr(fnn, name).expansion
    kw = dict(groups=groups, base_width=width)
    ours = getattr(fnn, name)(inp, planes, stride, _downsample(inp, planes * expansion, stride, fnn.FusedSequential)
                              if down else None, **kw)
    theirs = getattr(tvm.resnet, name)(inp, planes, stride, _downsample(inp, planes * expansion, stride, nn.Sequential)
                                       if down else None, **kw)
    _pair(ours, theirs)
    check_module_parity(ours, theirs, _input(inp, layout=layout), mode)


XCEPTION_CASES = [(8, 16, 2, 2, False, True), (16, 16, 3, 1, True, True), (16, 24, 2, 2, True, False)]


@pytest.mark.parametrize("case", XCEPTION_CASES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_xception_block(case, mode, layout):
    timm_xception = pytest.importorskip("timm.models.xception")
    inp, out, reps, strides, start_with_relu, grow_first = case
    ours = fnn.XceptionBlock(inp, out, reps, strides, start_with_relu, grow_first)
    theirs = timm_xception.Block(inp, out, reps, strides, start_with_relu, grow_first)
    _pair(ours, theirs)
    check_module_parity(ours, theirs, _input(inp, layout=layout), mode)


def _plain_net():
    return nn.Sequential(
        nn.Conv2d(6, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU(inplace=True),       # pwconv + BN + act
        nn.Conv2d(12, 12, 3, 2, 1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),  # dwconv + BN + act
        nn.Conv2d(12, 16, 3, 1, 1, bias=True), nn.Hardswish(),                              # dense conv + bias + act
        nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16),                                           # conv bias + BN, no act
        nn.Conv2d(16, 8, 3, 1, 2, dilation=2, groups=2, bias=False), nn.BatchNorm2d(8), nn.GELU(),  # act unknown
        nn.ChannelShuffle(2), nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8),
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_sequential_equals_sequential(mode, layout):
    theirs = _plain_net()
    ours = fnn.FusedSequential(*[m for m in _plain_net()])
    _pair(ours, theirs)
    steps = [s[0] for s in fnn.sequential.plan(list(ours))]
    assert steps == ["conv", "conv", "conv", "conv", "conv", "module", "module", "conv"]
    check_module_parity(ours, theirs, _input(6, layout=layout), mode, steps=2 if mode == "train" else 1)


@pytest.mark.parametrize("mode", MODES)
def test_fused_sequential_residual_is_added_after_everything(mode):
    theirs = _plain_net()
    ours = fnn.FusedSequential(*[m for m in _plain_net()])
    _pair(ours, theirs)
    getattr(ours, mode)(), getattr(theirs, mode)()
    x = _input(6, h=8, w=10)
    r = randn((2, 8, 4, 5))
    torch.testing.assert_close(ours(x, residual=r), theirs(x) + r, rtol=1e-4, atol=1e-4)
    # ... also when the last child is an activation (the add must follow it, not precede it)
    ours2, theirs2 = fnn.FusedSequential(*list(_plain_net())[:-2]), nn.Sequential(*list(_plain_net())[:-2])
    _pair(ours2, theirs2)
    getattr(ours2, mode)(), getattr(theirs2, mode)()
    torch.testing.assert_close(ours2(x, residual=r), theirs2(x) + r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_conv_bn_act_residual_and_shuffle(mode):
    """conv_bn_act's contract: shuffle(act(bn(conv(x)) + residual)), on each of its paths."""
    torch.manual_seed(3)
    for conv in (nn.Conv2d(12, 18, 1, groups=3, bias=False), nn.Conv2d(12, 18, 3, 1, 1, groups=3, bias=False),
                 nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False)):
        bn = randomise_bn(nn.BatchNorm2d(conv.out_channels))
        conv.train(mode == "train"), bn.train(mode == "train")
        x = _input(12, layout="channels_last")
        r = randn((2, conv.out_channels, 9, 11), scale=1.0)
        for act in ("relu6", "hardswish", None):
            expected = fastops.reference.activation(bn(conv(x)) + r, act or "none")
            expected = fastops.reference.channel_shuffle(expected, 3)
            got = fnn.conv_bn_act(x, conv, bn, act, residual=r, shuffle_groups=3)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_block_argument_errors():
    with pytest.raises(ValueError, match="InvertedResidual.*stride"):
        fnn.InvertedResidual(8, 8, 3, 6)
    with pytest.raises(ValueError, match="InvertedResidual.v3.*activation"):
        fnn.InvertedResidual.v3(8, 3, 16, 8, False, "GELU", 1)
    with pytest.raises(ValueError, match="ShuffleV2Block.*inp"):
        fnn.ShuffleV2Block(10, 24, 1)
    with pytest.raises(ValueError, match="XceptionBlock.*reps"):
        fnn.XceptionBlock(8, 8, 0)
    with pytest.raises(ValueError, match="BasicBlock.*groups"):
        fnn.BasicBlock(8, 8, groups=2)


def test_fused_sequential_follows_replaced_children():
    """The plan is kept between calls and made again when a child is replaced."""
    seq = fnn.FusedSequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    randomise_bn(seq).eval()
    x = _input(4)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), nn.Sequential.forward(seq, x))
        seq[2] = nn.Hardswish()
        torch.testing.assert_close(seq(x), nn.Sequential.forward(seq, x))
        del seq[2]
        torch.testing.assert_close(seq(x), nn.Sequential.forward(seq, x), rtol=1e-5, atol=1e-5)
