"""FusedSequential's replay (fastops/nn/sequential.py): in CPU inference a Sequential of fastops
modules records the one kernel call each child makes and runs the recorded calls on later
forwards, without the children's Python. The replay must give exactly what the modules give,
and must stop the moment anything the children's decisions read changes: weights and BN
statistics (in place, loaded, assigned, swapped through .data), train / eval mode, the children
themselves, hooks, fastops' switches, the input's shape and the thread count."""

import copy

import pytest
import torch
from torch import nn

import fastops
from fastops import nn as fnn
from fastops.nn import conv as fconv
from fastops.nn import mobilenet as fmobilenet
from fastops.nn import sequential as fsequential
from helpers import num_threads, randn, randomise_bn


def _net(seed=0):
    """The first blocks of a fastops MobileNet V3-Large (stem, blocks with and without
    squeeze-excite, ReLU and hardswish), random weights and BN statistics, eval mode."""
    torch.manual_seed(seed)
    net = fastops.models.mobilenet_v3_large().features[:8]
    for p in net.parameters():
        with torch.no_grad():
            p.copy_(torch.randn_like(p) * p[0].numel() ** -0.5)
    return randomise_bn(net, seed).eval()


def _x(h=40, w=36, n=2):
    torch.manual_seed(1)
    return randn((n, 3, h, w), scale=1.0).to(memory_format=torch.channels_last)


def _modules_output(net, x, monkeypatch):
    """net(x) in inference with the replay off: what the modules compute."""
    monkeypatch.setattr(fsequential, "REPLAY", False)
    with torch.inference_mode():
        y = net(x)
    monkeypatch.setattr(fsequential, "REPLAY", True)
    return y


def _kept_calls(net):
    return fconv._KEPT[net]["_fastops_replay"][-1]


def _kernel_ops(net):
    """The ops the kept replay of net calls straight (the rest: modules and oneDNN closures)."""
    return [fn.func.__self__ for fn, _ in _kept_calls(net) if hasattr(fn, "func")]


def test_replay_runs_the_kernels_without_the_modules(monkeypatch):
    net, x = _net(), _x()
    assert type(net) is fnn.FusedSequential
    expected = _modules_output(net, x, monkeypatch)
    forwards = []
    original = fnn.InvertedResidual.forward

    def counted(self, x):
        forwards.append(self)
        return original(self, x)

    monkeypatch.setattr(fnn.InvertedResidual, "forward", counted)
    with torch.inference_mode():
        first = net(x)  # records
        recorded = len(forwards)
        again = [net(x) for _ in range(2)]  # replays
    assert recorded == sum(isinstance(m, fnn.InvertedResidual) for m in net) == 7
    assert len(forwards) == recorded, "the replay called the blocks' forward"
    for y in (first, *again):
        assert torch.equal(y, expected)
    # every child is one kernel call: the stem and the depthwise-only first block included
    calls = _kept_calls(net)
    assert len(calls) == len(net) and not any(isinstance(fn, nn.Module) for fn, _ in calls)
    assert _kernel_ops(net).count(torch.ops.fastops.inverted_residual.default) == 7


def test_replay_of_whole_networks(monkeypatch):
    """fastops' MobileNet V2 and ShuffleNet V2 and an optimized torchvision MobileNet V2 give
    the modules' output, bit for bit, on every call."""
    torchvision = pytest.importorskip("torchvision")
    nets = [fastops.models.mobilenet_v2(), fastops.models.shufflenet_v2_x1_0(),
            fastops.optimize(torchvision.models.mobilenet_v2())]
    x = _x(64, 56)
    for net in nets:
        randomise_bn(net).eval()
        expected = _modules_output(net, x, monkeypatch)
        with torch.inference_mode():
            for _ in range(3):
                assert torch.equal(net(x), expected)


def _change_weight(net):
    with torch.no_grad():  # the stem's conv runs on a reordered copy of its weight (oneDNN)
        net[0][0].weight.mul_(1.5)


def _change_bn(net):
    with torch.no_grad():
        net[4].block[1][1].running_var.mul_(3.0)


def _load(net):
    net.load_state_dict(_net(seed=5).state_dict())


def _assign(net):
    net.load_state_dict(_net(seed=6).state_dict(), assign=True)


def _swap_data(net):
    conv = net[0][0]
    conv.weight.data = conv.weight.data * -1.0  # a new storage; the version counter is not bumped


def _replace_child(net):
    net[5] = _net(seed=7)[5]


def _delete_child(net):
    del net[7]


def _append_child(net):
    net.append(nn.Hardswish())


def _hook(net):
    net[6].register_forward_hook(lambda module, args, out: out * 2.0)


def _pre_hook(net):
    net[1].register_forward_pre_hook(lambda module, args: (args[0] * 0.5,))


def _own_forward(net):
    block = net[6]
    block.forward = lambda x: type(block).forward(block, x) + 1.0


def _class_swap(net):
    class Shifted(fnn.InvertedResidual):
        def forward(self, x):
            return super().forward(x) - 1.0

    net[2].__class__ = Shifted


def _bn_eps(net):
    net[4].block[1][1].eps = 0.5


def _conv_stride(net):
    net[0][0].stride = (1, 1)


def _conv_padding(net):
    net[0][0].padding = (2, 2)


CHANGES = {
    "bn_eps": _bn_eps, "conv_stride": _conv_stride, "conv_padding": _conv_padding,
    "weight_in_place": _change_weight, "bn_statistics": _change_bn, "load_state_dict": _load,
    "load_state_dict_assign": _assign, "weight_data_swapped": _swap_data, "child_replaced": _replace_child,
    "child_deleted": _delete_child, "child_appended": _append_child, "forward_hook": _hook,
    "forward_pre_hook": _pre_hook, "instance_forward": _own_forward, "class_swapped": _class_swap,
}


@pytest.mark.parametrize("change", CHANGES)
def test_replay_follows_changes(change, monkeypatch):
    net, x = _net(), _x()
    with torch.inference_mode():
        before = net(x)
        assert torch.equal(net(x), before)  # replayed
    CHANGES[change](net)
    expected = _modules_output(net, x, monkeypatch)
    assert expected.shape != before.shape or not torch.equal(expected, before), "the change changed nothing"
    with torch.inference_mode():
        for _ in range(2):  # recorded again, then replayed
            assert torch.equal(net(x), expected)


def test_replay_follows_train_mode(monkeypatch):
    """In train mode (under no_grad: batch statistics, running statistics updated) the modules
    run, every call."""
    net, x = _net(), _x()
    with torch.no_grad():
        net(x), net(x)
    twin = copy.deepcopy(net).train()
    net.train()
    with torch.no_grad():
        for _ in range(2):
            monkeypatch.setattr(fsequential, "REPLAY", False)
            expected = twin(x)
            monkeypatch.setattr(fsequential, "REPLAY", True)
            assert torch.equal(net(x), expected)
    for a, b in zip(net.buffers(), twin.buffers()):
        assert torch.equal(a, b)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), twin.eval()(x))


def test_replay_follows_switches_shapes_and_threads(monkeypatch):
    net = _net()
    with torch.inference_mode():
        for x in (_x(), _x(33, 47), _x(n=3)):
            expected = _modules_output(net, x, monkeypatch)
            assert torch.equal(net(x), expected) and torch.equal(net(x), expected)
        x = _x()
        assert torch.ops.fastops.inverted_residual.default in _kernel_ops(net)
        monkeypatch.setattr(fmobilenet, "FUSED_BLOCKS", False)
        expected = _modules_output(net, x, monkeypatch)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
        assert torch.ops.fastops.inverted_residual.default not in _kernel_ops(net)
        monkeypatch.setattr(fmobilenet, "FUSED_BLOCKS", True)
        net(x)
        key = fconv._KEPT[net]["_fastops_replay"][0]
        with num_threads(1):
            expected = _modules_output(net, x, monkeypatch)
            assert torch.equal(net(x), expected)
            assert fconv._KEPT[net]["_fastops_replay"][0] != key


def test_other_modules_run_as_modules(monkeypatch):
    """A child that is not fastops' (its forward may do more than its kernel call) is called as
    a module on every replay."""
    calls = []

    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(1)
            return self.inner(x)

    net = _net()
    net[3] = Counting(net[3])
    x = _x()
    expected = _modules_output(net, x, monkeypatch)
    calls.clear()
    with torch.inference_mode():
        for _ in range(3):
            assert torch.equal(net(x), expected)
    assert len(calls) == 3
    assert any(fn is net[3] for fn, _ in _kept_calls(net))


def test_no_replay_under_autograd_profiler_or_compile():
    net, x = _net(), _x()
    with torch.inference_mode():
        expected = net(x)
        net(x)
    y = net(x.clone().requires_grad_())  # autograd: the modules' differentiable path
    assert y.requires_grad
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        assert torch.equal(net(x), expected)
    names = {e.name for e in prof.events()}
    assert "fastops::inverted_residual" in names, "the profiler must see the kernels (no replay)"
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)


def test_relu6_with_other_bounds_is_not_fused():
    """A ReLU6 whose bounds were changed on the instance is not the fused ops' relu6: conv_bn_act
    runs the modules, before and after a kept inference plan and a replay were made."""
    block = fnn.FusedSequential(fnn.ConvBNAct(8, 8, 3, groups=8, activation_layer=nn.ReLU6),
                                fnn.ConvBNAct(8, 12, 1, activation_layer=nn.ReLU6))
    randomise_bn(block, 3).eval()
    x = randn((2, 8, 9, 7), scale=2.0).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        block(x), block(x)
    for layer in block:
        layer[2].max_val = 1.0
    expected = x
    for conv, bn, act in block:
        expected = torch.clamp(bn(conv(expected)), 0.0, 1.0)
    with torch.inference_mode():
        for _ in range(2):
            torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
