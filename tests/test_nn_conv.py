"""fastops.nn.ConvBNAct and DepthwiseSeparable against the unfused modules they replace, with
identical weights: state_dict keys, outputs, gradients and BatchNorm state, in train and eval."""

import copy

import pytest
import torch
from torch import nn

import fastops
from helpers import randn

torchvision = pytest.importorskip("torchvision")
Conv2dNormActivation = torchvision.ops.Conv2dNormActivation


def _randomise(module):
    """Non-trivial BN state so folding is really exercised."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return module


def _pair(kwargs, act):
    """A fastops ConvBNAct and a torchvision Conv2dNormActivation with the same weights."""
    tv_act = {"relu6": nn.ReLU6, "hardswish": nn.Hardswish, "relu": nn.ReLU, "silu": nn.SiLU, None: None}[act]
    ours = fastops.nn.ConvBNAct(**kwargs, activation_layer=tv_act)
    theirs = Conv2dNormActivation(**kwargs, activation_layer=tv_act)
    _randomise(theirs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


DW_CASES = [
    dict(in_channels=24, out_channels=24, kernel_size=3, stride=1, groups=24),
    dict(in_channels=19, out_channels=19, kernel_size=5, stride=2, groups=19),
    dict(in_channels=8, out_channels=16, kernel_size=3, stride=1, groups=8, dilation=2),
    dict(in_channels=16, out_channels=16, kernel_size=3, stride=2, groups=16, norm_layer=None),
]


def test_state_dict_keys_match_torchvision():
    ours, theirs = _pair(DW_CASES[0], "relu6")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [type(m).__name__ for m in ours][:2] == ["Conv2d", "BatchNorm2d"]


@pytest.mark.parametrize("kwargs", DW_CASES, ids=str)
@pytest.mark.parametrize("act", ("relu6", "hardswish", "silu", None))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_eval_matches_unfused(kwargs, act, layout):
    ours, theirs = _pair(kwargs, act)
    ours.eval(), theirs.eval()
    x = randn((2, kwargs["in_channels"], 15, 13))
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = randn(ya.shape)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    for (name, pa), (_, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("kwargs", DW_CASES[:3], ids=str)
@pytest.mark.parametrize("momentum", (0.1, None))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_train_matches_unfused_including_running_stats(kwargs, momentum, layout):
    """Training mode: batch statistics, running stats, gradients and SGD steps as the unfused
    module's, in both layouts."""
    ours, theirs = _pair(kwargs, "hardswish")
    for m in (ours, theirs):
        m[1].momentum = momentum
    ours.train(), theirs.train()
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for step in range(3):
        x = randn((4, kwargs["in_channels"], 11, 12)).to(memory_format=fmt)
        ya, yb = ours(x), theirs(x)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        g = randn(ya.shape) / ya.numel() ** 0.5  # a well-conditioned loss: parameter steps stay small
        for opt, y in ((opt_a, ya), (opt_b, yb)):
            opt.zero_grad()
            y.backward(g)
            opt.step()
        for (name, pa), (_, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-4, msg=f"step {step}: {name}")
    for (name, ba), (_, bb) in zip(ours.named_buffers(), theirs.named_buffers()):
        torch.testing.assert_close(ba, bb, rtol=1e-5, atol=1e-6, msg=name)
    assert ours[1].num_batches_tracked.item() == 3


def _autograd_nodes(y):
    """The names of the autograd nodes y's graph reaches."""
    nodes, stack = set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node.name() not in nodes:
            nodes.add(node.name())
            stack += [n for n, _ in node.next_functions]
    return nodes


@pytest.mark.parametrize("case, layout, fastops_conv", [
    (0, "channels_last", True), (0, "nchw", True), (1, "channels_last", True), (1, "nchw", True),
    (2, "channels_last", False), (2, "nchw", False)])
def test_train_depthwise_conv_runs_the_fastops_kernel(case, layout, fastops_conv):
    """In training, a CPU float32 depthwise conv (3x3 or 5x5, stride 1 or 2, no multiplier) runs
    as dwconv_bn_act, in both layouts (for its backward kernels); others (DW_CASES[2]) keep
    ATen's convolution. The values are checked by the training tests above (DW_CASES[1] is the
    5x5 one)."""
    ours, _ = _pair(DW_CASES[case], "relu6")
    ours.train()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = randn((2, DW_CASES[case]["in_channels"], 9, 10)).to(memory_format=fmt).requires_grad_()
    nodes = _autograd_nodes(ours(x))
    assert any("DwConvBnAct" in n for n in nodes) == fastops_conv, nodes


@pytest.mark.parametrize("hw, layout, fastops_conv", [
    ((28, 29), "nchw", True), ((14, 14), "nchw", True), ((13, 15), "nchw", False),
    ((28, 29), "channels_last", True), ((5, 6), "channels_last", True)])
def test_train_pointwise_conv_runs_pwconv(hw, layout, fastops_conv):
    """In training, a float32 ungrouped 1x1 conv runs as the plain pwconv_bn_act (its forward and
    GEMM backward beat ATen's there): channels_last on any map, NCHW on maps of at least 14x14
    pixels (smaller NCHW maps keep ATen's); 28x29 takes the backward by tiles. Two SGD steps
    against torchvision's block, running stats and parameters included."""
    kwargs = dict(in_channels=10, out_channels=14, kernel_size=1)
    ours, theirs = _pair(kwargs, "relu6")
    ours.train(), theirs.train()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, theirs)]
    for step in range(2):
        x = randn((3, 10, *hw)).to(memory_format=fmt).requires_grad_()
        ya, yb = ours(x), theirs(x)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        nodes = _autograd_nodes(ya)
        assert any("PwConvBnAct" in n for n in nodes) == fastops_conv, nodes
        g = randn(ya.shape) / ya.numel() ** 0.5
        grads = [torch.autograd.grad(y, [x] + list(m.parameters()), g) for y, m in ((ya, ours), (yb, theirs))]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for opt, m, gs in zip(opts, (ours, theirs), grads):
            for p, gp in zip(m.parameters(), gs[1:]):
                p.grad = gp
            opt.step()
    for (name, ba), (_, bb) in zip(ours.named_buffers(), theirs.named_buffers()):
        torch.testing.assert_close(ba, bb, rtol=1e-5, atol=1e-6, msg=name)


def test_dense_conv_folds_bn_with_same_answer():
    ours, theirs = _pair(dict(in_channels=8, out_channels=12, kernel_size=3, groups=1), "relu6")
    ours.eval(), theirs.eval()
    x = randn((2, 8, 9, 9))
    torch.testing.assert_close(ours(x), theirs(x))


def test_depthwise_separable_is_the_mobilenet_v1_block():
    block = fastops.nn.DepthwiseSeparable(32, 64, kernel_size=3, stride=2, act="relu6")
    keys = list(block.state_dict())
    assert keys[:2] == ["0.0.weight", "0.1.weight"] and "1.0.weight" in keys
    assert block[0][0].groups == 32 and block[0][0].stride == (2, 2) and block[1][0].kernel_size == (1, 1)
    reference = nn.Sequential(
        nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6()),
        nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6()),
    )
    _randomise(reference)
    block.load_state_dict(reference.state_dict())
    for mode in ("train", "eval"):
        getattr(block, mode)(), getattr(reference, mode)()
        x = randn((2, 32, 16, 16)).to(memory_format=torch.channels_last)
        torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_depthwise_separable_training_step(layout):
    """A DepthwiseSeparable training step equals the unfused block's: output, the gradients of
    the input and of every parameter, the BN running stats."""
    block = fastops.nn.DepthwiseSeparable(24, 40, kernel_size=3, stride=1, act="relu6").train()
    reference = nn.Sequential(
        nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), nn.BatchNorm2d(24), nn.ReLU6()),
        nn.Sequential(nn.Conv2d(24, 40, 1, bias=False), nn.BatchNorm2d(40), nn.ReLU6()),
    ).train()
    _randomise(reference)
    block.load_state_dict(reference.state_dict())
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = randn((3, 24, 13, 11)).to(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = block(xa), reference(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = randn(ya.shape).to(memory_format=fmt)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    for (name, pa), (_, pb) in zip(block.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, ba), (_, bb) in zip(block.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(ba, bb, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ("train", "eval"))
def test_compile_fullgraph(mode):
    torch._dynamo.reset()
    block = _randomise(fastops.nn.DepthwiseSeparable(16, 24, act="hardswish"))
    getattr(block, mode)()
    eager = copy.deepcopy(block)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = randn((2, 16, 10, 10)).to(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_compile_no_grad_does_not_read_the_kept_plans(layout, monkeypatch):
    """Inference under torch.compile (no_grad, eval): the traced code reads none of the plans kept
    between eager calls (fastops.nn.conv._KEPT, a weak dict whose entries die with their modules;
    Dynamo once traced into it and its guards failed with IndexError when an entry died). A
    stand-in that raises on any read must not be touched; the values equal eager's."""
    from fastops.nn import conv as conv_mod

    block = _randomise(fastops.nn.DepthwiseSeparable(16, 24, act="relu6")).eval()
    x = randn((2, 16, 10, 10))
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = block(x)

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"_KEPT.{name} read while compiling")

    monkeypatch.setattr(conv_mod, "_KEPT", Untouchable())
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got = compiled(x)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("depthwise", (True, False))
def test_eval_fold_follows_every_change_of_the_folded_tensors(layout, depthwise):
    """Inference keeps the folded BN (and, on the oneDNN path that channels_last inference takes,
    the reordered weights) between calls; every way of changing what it was folded from must
    show in the next output (in-place updates, load_state_dict, eps, training steps, dtype)."""
    kwargs = DW_CASES[0] if depthwise else dict(in_channels=24, out_channels=16, kernel_size=1)
    ours, theirs = _pair(kwargs, "relu6")
    ours.eval(), theirs.eval()
    x = randn((2, 24, 9, 11))
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)

    def check(dtype=torch.float32):
        with torch.no_grad():
            torch.testing.assert_close(ours(x.to(dtype)), theirs(x.to(dtype)), rtol=1e-5, atol=1e-5)

    check()
    check()  # served from the kept fold
    with torch.no_grad():
        for m in (ours, theirs):
            m[1].running_var.mul_(3.0)
    check()
    with torch.no_grad():
        for m in (ours, theirs):
            m[1].weight.add_(0.25)
            m[1].bias.sub_(0.5)
            m[1].running_mean.add_(1.0)
    check()
    for m in (ours, theirs):
        m[1].eps = 0.5
    check()
    with torch.no_grad():
        for m in (ours, theirs):
            m[0].weight.mul_(-0.5)  # the conv's own weight (folded into the reordered weights)
    check()
    _randomise(theirs)
    ours.load_state_dict(theirs.state_dict())
    check()
    batch = randn((4, 24, 9, 11))
    for m in (ours, theirs):  # a training step moves the running stats; eval sees them
        m.train()
        m(batch)
        m.eval()
    check()
    ours.double(), theirs.double()
    check(torch.float64)
    with torch.inference_mode():
        ya = ours(x.double())
    xg = x.double().requires_grad_()  # a fold kept from inference_mode must not reach autograd
    ya2 = ours(xg)
    ya2.sum().backward()
    torch.testing.assert_close(ya, theirs(x.double()), rtol=1e-7, atol=1e-7)


def test_kept_inference_plan_is_dropped_when_what_it_decided_on_changes(monkeypatch):
    """Channels_last inference without autograd reruns the oneDNN call it made last time without
    deciding afresh. Every input to that decision that can change between calls must send the
    next call back through the full path: the layout, the dtype, a residual or none, the BN and
    activation modules, the conv's parameters (replaced, not only updated) and geometry, the BN's
    mode, and ONEDNN_CONVS (here emptied: the fastops kernel must then run)."""
    from fastops.nn import conv as conv_mod

    ours, theirs = _pair(DW_CASES[0], "relu6")
    ours.eval(), theirs.eval()
    x = randn((2, 24, 9, 11)).to(memory_format=torch.channels_last)

    def check(x=x, rtol=1e-5):
        with torch.no_grad():
            for _ in range(2):  # the second call takes the kept plan when there is one
                got = ours(x)
                torch.testing.assert_close(got, theirs(x), rtol=rtol, atol=rtol * 10)
        return got

    check()
    assert "_fastops_inference" in conv_mod._KEPT[ours[0]]
    check(x.contiguous())  # NCHW: not the oneDNN path
    got = check()
    assert got.is_contiguous(memory_format=torch.channels_last)
    for m in (ours, theirs):  # the conv's weight replaced by another Parameter
        m[0].weight = nn.Parameter(randn(m[0].weight.shape, scale=0.5))
    ours[0].weight.data.copy_(theirs[0].weight)
    check()
    ours[2], theirs[2] = nn.Hardswish(), nn.Hardswish()  # another activation
    check()
    fresh = _randomise(nn.Sequential(nn.BatchNorm2d(24)))[0]  # another BatchNorm
    ours[1], theirs[1] = copy.deepcopy(fresh), copy.deepcopy(fresh)
    check()
    for m in (ours, theirs):  # another stride
        m[0].stride = (2, 2)
    check()
    for m in (ours, theirs):  # BN back to batch statistics (the conv alone stays in eval)
        m[1].train()
    check()
    for m in (ours, theirs):
        m[1].eval()
    check()

    # this conv's plan is fastops' depthwise kernel (DWCONV_KERNEL); switched off, oneDNN's call
    monkeypatch.setattr(conv_mod, "DWCONV_KERNEL", False)
    with torch.no_grad():
        assert _op_calls(lambda: ours(x), "fastops::dwconv_bn_act") == 0
        assert _op_calls(lambda: ours(x), "mkldnn::_convolution_pointwise") == 1
    calls = []
    real = conv_mod.ops.dwconv_bn_act
    monkeypatch.setattr(conv_mod.ops, "dwconv_bn_act", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(conv_mod, "ONEDNN_CONVS", set())
    check()
    assert len(calls) == 2, "with ONEDNN_CONVS emptied the kept oneDNN plan must not run"


def _op_calls(fn, name):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name == name for e in prof.events())


@pytest.mark.parametrize("kwargs,kernel", [
    (dict(in_channels=24, out_channels=24, kernel_size=3, groups=24), True),
    (dict(in_channels=40, out_channels=40, kernel_size=5, groups=40), True),
    (dict(in_channels=19, out_channels=19, kernel_size=3, groups=19, norm_layer=None), True),
    (dict(in_channels=24, out_channels=24, kernel_size=3, stride=2, groups=24), True),
    (dict(in_channels=17, out_channels=17, kernel_size=5, stride=2, groups=17), True),
    (dict(in_channels=24, out_channels=24, kernel_size=3, stride=3, groups=24), False),  # stride 3: oneDNN
    (dict(in_channels=16, out_channels=16, kernel_size=3, stride=2, groups=16, hw=(192, 176)), True),  # > 2 MiB
    (dict(in_channels=24, out_channels=48, kernel_size=3, groups=24), False),  # multiplier 2
    (dict(in_channels=8, out_channels=8, kernel_size=3, groups=8), False),  # < 16 channels
    (dict(in_channels=24, out_channels=24, kernel_size=7, groups=24), False),  # 7x7
    (dict(in_channels=24, out_channels=24, kernel_size=3, groups=24, dilation=2), False),
], ids=str)
@pytest.mark.parametrize("act", ("relu6", "hardswish", None))
def test_depthwise_inference_kernel_or_onednn(kwargs, kernel, act, monkeypatch):
    """Channels_last float32 inference: 3x3 and 5x5 depthwise convs with stride 1 or 2, >= 16
    channels, no multiplier and no dilation, of any size, run fastops' kernel (once per call, the
    first call and the kept plan after it alike), the other depthwise convs oneDNN's; bfloat16
    goes to oneDNN, autograd to the differentiable op. Every answer equals the unfused modules'."""
    kwargs = dict(kwargs)
    hw = kwargs.pop("hw", (11, 13))
    ours, theirs = _pair(kwargs, act)
    ours.eval(), theirs.eval()
    x = randn((2, kwargs["in_channels"], *hw)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = theirs(x)
        for _ in range(3):
            out = []
            assert _op_calls(lambda: out.append(ours(x)), "fastops::dwconv_bn_act") == (1 if kernel else 0)
            torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
            assert out[0].is_contiguous(memory_format=torch.channels_last)
        from fastops.nn import conv as conv_mod

        for switch in (False, True, False, True):  # either kept plan gives way to the other
            monkeypatch.setattr(conv_mod, "DWCONV_KERNEL", switch)
            out = []
            assert _op_calls(lambda: out.append(ours(x)), "fastops::dwconv_bn_act") == (1 if kernel and switch else 0)
            torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        half = copy.deepcopy(ours).bfloat16()
        assert _op_calls(lambda: half(x.bfloat16()), "mkldnn::_convolution_pointwise") == 1
    xg = x.clone().requires_grad_()
    y = ours(xg)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    y.sum().backward()
    assert xg.grad is not None


@pytest.mark.parametrize("kwargs", DW_CASES, ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_depthwise_nchw_inference_keeps_its_kernel_plan(kwargs, dtype, monkeypatch):
    """NCHW depthwise inference (no oneDNN path takes it) runs dwconv_bn_act's kernel as a kept
    plan, like the channels_last one: after the first call, neither the checked Python op nor
    the BN fold is called again, and the answers stay the unfused modules'. A channels_last
    input, another dtype or a parameter update sends the next call back through the full path."""
    from fastops.nn import conv as conv_mod

    ours, theirs = _pair(kwargs, "hardswish")
    ours.eval(), theirs.eval()
    x = randn((2, kwargs["in_channels"], 13, 10), scale=1.0).to(dtype)
    ours.to(dtype)

    def check(x, dtype=dtype, module=ours):
        got = module(x.to(dtype))  # against theirs with the same (rounded) parameters, in float32
        expected = copy.deepcopy(theirs).to(ours[0].weight.dtype).float()(x.to(dtype).float())
        assert got.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol * expected.abs().max().item())
        return got

    with torch.no_grad():
        check(x)
        calls = []
        for name in ("folded_scale_shift", "folded_conv"):
            monkeypatch.setattr(conv_mod, name, lambda *a, _n=name: calls.append(_n))
        monkeypatch.setattr(conv_mod.ops, "dwconv_bn_act", lambda *a, **k: calls.append("op"))
        for _ in range(2):
            assert _op_calls(lambda: check(x), "fastops::dwconv_bn_act") == 1
            assert check(x).is_contiguous()  # (outside the profiler: the redispatched call)
        assert calls == []
        monkeypatch.undo()
        check(x.to(memory_format=torch.channels_last))  # another layout: the plan gives way
        check(x)
        # another dtype, on a copy (bf16 would round ours' parameters for the checks after it)
        other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
        check(x, other, copy.deepcopy(ours).to(other))
        check(x)
        for m in (ours, theirs):  # a buffer or parameter updated in place
            m[1].running_mean.add_(0.25) if isinstance(m[1], nn.BatchNorm2d) else m[0].bias.data.add_(0.25)
        check(x)


def test_inference_plan_is_seen_by_dispatch_modes():
    """The kept kernel plan calls the op past its autograd layer (inference_call), but a Python
    dispatch mode active around the call still sees the op, and gets the same answer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    ours, theirs = _pair(DW_CASES[0], "relu6")
    ours.eval(), theirs.eval()
    x = randn((2, 24, 9, 11)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = theirs(x)
        ours(x), ours(x)  # the second call runs the kept plan
        with Record() as mode:
            got = ours(x)
    assert "fastops.dwconv_bn_act.default" in mode.ops
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("kwargs", [DW_CASES[0], dict(in_channels=24, out_channels=16, kernel_size=1)], ids=str)
@pytest.mark.parametrize("fmt", (torch.channels_last, torch.contiguous_format), ids=str)
def test_inference_on_a_channel_slice(kwargs, fmt):
    """A channel slice of a channels_last tensor (ShuffleNet V2's x.chunk(2, 1)) takes the oneDNN
    path like a channels_last tensor, and gives a channels_last output; an NCHW slice takes the
    fastops kernels. Both equal the unfused modules."""
    from fastops.nn import conv as conv_mod

    ours, theirs = _pair(kwargs, "relu")
    ours.eval(), theirs.eval()
    x = randn((2, 48, 9, 7)).contiguous(memory_format=fmt)
    for half in x.chunk(2, dim=1):
        with torch.no_grad():
            for _ in range(2):
                got, expected = ours(half), theirs(half.contiguous())
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        assert got.is_contiguous(memory_format=fmt)
        assert ("_fastops_inference" in conv_mod._KEPT.get(ours[0], {})) == (fmt == torch.channels_last)


@pytest.mark.parametrize("act", ("none", "relu"))
def test_kept_inference_plan_with_and_without_residual(act):
    """conv_bn_act with a residual (oneDNN's binary post-op) and without, alternating on one conv:
    each call gets its own answer, never the other's kept plan."""
    from fastops.nn.conv import conv_bn_act

    conv = nn.Conv2d(24, 16, 1, bias=False)
    bn = _randomise(nn.Sequential(nn.BatchNorm2d(16)))[0]
    conv.eval(), bn.eval()
    act_mod = None if act == "none" else nn.ReLU()
    x = randn((2, 24, 7, 9)).to(memory_format=torch.channels_last)
    r = randn((2, 16, 7, 9)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        plain = bn(conv(x))
        for residual in (None, r, r, None, None, r.contiguous(), r):
            got = conv_bn_act(x, conv, bn, act_mod, residual=residual)
            expected = plain if residual is None else plain + residual
            expected = expected if act_mod is None else act_mod(expected)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("groups", (1, 2))
@pytest.mark.parametrize("k", (1, 3))
def test_residual_relu_bfloat16_channels_last(groups, k):
    """conv_bn_act + residual + ReLU in bfloat16 channels_last inference (ShuffleNet V1's units):
    a grouped conv there once reached a torch internal assert (oneDNN's binary post-op falls back
    to an add_relu with no bfloat16 kernel); now it takes another path, with the same answer."""
    from fastops.nn.conv import conv_bn_act

    conv = nn.Conv2d(16, 16, k, padding=k // 2, groups=groups, bias=False)
    bn = _randomise(nn.Sequential(nn.BatchNorm2d(16)))[0]
    conv.eval(), bn.eval()
    x = randn((2, 16, 6, 7), scale=1.0).to(memory_format=torch.channels_last)
    r = randn((2, 16, 6, 7), scale=1.0).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = torch.relu(bn(conv(x)) + r)
        conv.bfloat16(), bn.bfloat16()
        got = conv_bn_act(x.bfloat16(), conv, bn, nn.ReLU(), residual=r.bfloat16())
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("kwargs", [DW_CASES[0], dict(in_channels=24, out_channels=40, kernel_size=1),
                                    dict(in_channels=24, out_channels=16, kernel_size=3, stride=2, groups=2)], ids=str)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_eval_bfloat16(kwargs, layout):
    ours, theirs = _pair(kwargs, "hardswish")
    ours.eval(), theirs.eval()
    x = randn((2, 24, 9, 11), scale=1.0)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = theirs(x)
        got = ours.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=x_format(x))
    torch.testing.assert_close(got.float(), expected, rtol=3e-2, atol=3e-2 * expected.abs().max().item())


def x_format(x):
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


@pytest.mark.parametrize("kwargs", DW_CASES + [dict(in_channels=8, out_channels=8, kernel_size=5, stride=2, groups=8,
                                                     dilation=2, padding=3)], ids=str)
@pytest.mark.parametrize("act", ("relu6", "hardswish", "silu", None))
def test_inference_without_autograd_channels_last(kwargs, act):
    """The oneDNN path (CPU, channels_last, no autograd): every geometry of DW_CASES (multiplier,
    dilation, stride, no BN) and every post-op activation, output kept channels_last."""
    ours, theirs = _pair(kwargs, act)
    ours.eval(), theirs.eval()
    x = randn((2, kwargs["in_channels"], 13, 11)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        got, expected = ours(x), theirs(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert got.is_contiguous(memory_format=torch.channels_last)
