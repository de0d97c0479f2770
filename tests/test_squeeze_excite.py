"""squeeze_excite through fastops.ops (C++ CPU kernels; CUDA kernels where a GPU is present):
values and the gradients of all five inputs against the float64 reference over layouts, odd
shapes, every act / gate, weights given as 1x1 convs or matrices, biases given or None, dtypes;
gradcheck, opcheck, compile, the module against torchvision's SqueezeExcitation with the same
state_dict, and the argument errors. The Triton kernels have their own sweep in
test_squeeze_excite_triton.py."""

import pytest
import torch
from torch import nn

import fastops
from fastops import reference
from helpers import TOL, make_layout, poisoned_memory, randn

ACTS = reference.ACTIVATIONS
LAYOUTS = ("contiguous", "channels_last", "strided", "permuted", "cl_sliced")


def _params(c, s, dtype, device, conv_shaped=True, bias=True):
    shape1, shape2 = ((s, c, 1, 1), (c, s, 1, 1)) if conv_shaped else ((s, c), (c, s))
    w1 = randn(shape1, dtype, device, scale=0.5)
    w2 = randn(shape2, dtype, device, scale=0.5)
    b1 = randn((s,), dtype, device, scale=1.0) if bias else None
    b2 = randn((c,), dtype, device, scale=1.0) if bias else None
    return w1, b1, w2, b2


def _d(t):
    return None if t is None else t.double()


def _close(actual, expected, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected, rtol=tol["rtol"],
                               atol=tol["rtol"] * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("shape", ((2, 24, 9, 7), (1, 17, 5, 5), (3, 40, 1, 1), (2, 5, 28, 28), (1, 960, 3, 3)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_gradients(device, shape, layout):
    n, c, h, w = shape
    x = make_layout(randn(shape, device=device), layout).requires_grad_()
    params = [p.requires_grad_() for p in _params(c, max(1, c // 4), torch.float32, device)]
    with poisoned_memory(x):
        y = fastops.ops.squeeze_excite(x, *params, "relu", "hardsigmoid")
    assert y.is_contiguous(memory_format=fastops._layout.conv_output_format(x))
    xd = x.detach().double().requires_grad_()
    pd = [p.detach().double().requires_grad_() for p in params]
    expected = reference.squeeze_excite(xd, *pd, "relu", "hardsigmoid")
    _close(y, expected, torch.float32)
    g = randn(y.shape, device=device)
    got = torch.autograd.grad(y, [x] + params, g)
    want = torch.autograd.grad(expected, [xd] + pd, g.double())
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("gate", ("hardsigmoid", "sigmoid", "relu6", "none"))
def test_activations(device, act, gate):
    x = randn((2, 12, 6, 5), device=device).to(memory_format=torch.channels_last)
    params = _params(12, 5, torch.float32, device, conv_shaped=False, bias=act != "relu")
    y = fastops.ops.squeeze_excite(x, *params, act, gate)
    _close(y, reference.squeeze_excite(x.double(), *map(_d, params), act, gate), torch.float32)
    g = randn(y.shape, device=device)
    got = torch.ops.fastops.squeeze_excite_backward(g, x, *params, act, gate)
    want = reference.squeeze_excite_backward(g.double(), x.double(), *map(_d, params), act, gate)
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_dtypes(device, dtype, layout):
    x = make_layout(randn((2, 20, 7, 6), dtype, device), layout)
    params = _params(20, 6, dtype, device)
    y = fastops.ops.squeeze_excite(x, *params, "relu", "hardsigmoid")
    assert y.dtype == dtype
    _close(y, reference.squeeze_excite(x.double(), *map(_d, params), "relu", "hardsigmoid"), dtype)


@pytest.mark.parametrize("threads", (1, 2, 3))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_cpu_paths_over_threads(device, layout, dtype, threads):
    """The CPU kernel's two forward paths: one image per thread from pool to scale when every
    thread has an image and S <= H*W, the two passes over the batch otherwise (N below the
    threads, or S above H*W); channels_last rows walked flat against a channel period of
    lcm(C, 16) values (C = 72: 144, 120: 240, 20: 80; 24 and 48 whole vectors) or row by row
    (C = 17, or 6 whose period is 8 rows); the fully connected layers over the batch in blocks
    of 8 rows and the rest (N = 9, S > H*W), or one row at a time; the backward's scale pass
    (row_scale with its additive term) over the same layouts."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, c, s, h, w in ((5, 72, 24, 6, 5), (3, 120, 8, 3, 3), (4, 20, 5, 5, 3), (2, 17, 30, 4, 4),
                              (1, 48, 12, 5, 5), (6, 6, 2, 7, 2), (3, 24, 40, 2, 3), (9, 20, 12, 2, 2)):
            x = make_layout(randn((n, c, h, w), dtype, device), layout)
            params = _params(c, s, dtype, device, conv_shaped=(c % 2 == 0), bias=(c != 20))
            with poisoned_memory(x):
                y = fastops.ops.squeeze_excite(x, *params, "relu", "hardsigmoid")
            _close(y, reference.squeeze_excite(x.double(), *map(_d, params), "relu", "hardsigmoid"), dtype)
            if dtype == torch.float32:
                g = randn(y.shape, dtype, device)
                got = torch.ops.fastops.squeeze_excite_backward(g, x, *params, "hardswish", "sigmoid")
                want = reference.squeeze_excite_backward(g.double(), x.double(), *map(_d, params), "hardswish",
                                                         "sigmoid")
                for a, b in zip(got, want):
                    _close(a, b, dtype)
    finally:
        torch.set_num_threads(saved)


def test_large_mean_plane(device):
    # sums over a large plane with a large mean: the pooled value must stay accurate
    x = (randn((1, 3, 150, 150), device=device, scale=1.0) + 100.0).to(memory_format=torch.channels_last)
    params = _params(3, 2, torch.float32, device)
    y = fastops.ops.squeeze_excite(x, *params, "relu", "sigmoid")
    _close(y, reference.squeeze_excite(x.double(), *map(_d, params), "relu", "sigmoid"), torch.float32)


def test_gradcheck(device):
    x = randn((2, 6, 3, 4), torch.float64, device).requires_grad_()
    params = [p.requires_grad_() for p in _params(6, 3, torch.float64, device)]
    f = lambda *t: fastops.ops.squeeze_excite(*t, "silu", "sigmoid")  # noqa: E731 (smooth: no kinks)
    assert torch.autograd.gradcheck(f, (x, *params))
    xc = randn((1, 5, 2, 3), torch.float64, device).to(memory_format=torch.channels_last).requires_grad_()
    w1, _, w2, _ = _params(5, 2, torch.float64, device, conv_shaped=False, bias=False)
    assert torch.autograd.gradcheck(lambda x_, w1_, w2_: fastops.ops.squeeze_excite(x_, w1_, None, w2_, None, "relu",
                                                                                    "hardsigmoid"),
                                    (xc, w1.requires_grad_(), w2.requires_grad_()))


def _opcheck_cases(device):
    ns = torch.ops.fastops
    x = randn((2, 8, 3, 5), device=device)
    w1, b1, w2, b2 = _params(8, 3, torch.float32, device)
    g = randn(x.shape, device=device)
    cl = x.to(memory_format=torch.channels_last)
    return [
        (ns.squeeze_excite.default, (x.requires_grad_(), w1.requires_grad_(), b1, w2, b2.requires_grad_(), "relu", "hardsigmoid")),
        (ns.squeeze_excite.default, (cl, w1.flatten(1), None, w2.flatten(1), None, "hardswish", "sigmoid")),
        (ns.squeeze_excite_backward.default, (g, x, w1, b1, w2, b2, "relu", "hardsigmoid")),
        (ns.squeeze_excite_backward.default, (g.to(memory_format=torch.channels_last), cl, w1, None, w2, None, "silu", "sigmoid")),
    ]


@pytest.mark.parametrize("case", range(4))
def test_opcheck(device, case):
    op, args = _opcheck_cases(device)[case]
    torch.library.opcheck(op, args)


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    m = fastops.nn.SqueezeExcite(8, 4).to(device)
    x = randn((2, 8, 5, 5), device=device).to(memory_format=torch.channels_last).requires_grad_()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, m(x))
    g = randn(y.shape, device=device)
    got = torch.autograd.grad(y, [x, m.fc1.weight], g)
    want = torch.autograd.grad(m(x), [x, m.fc1.weight], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("scale_activation", (nn.Hardsigmoid, nn.Sigmoid))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_module_matches_torchvision(device, scale_activation, layout):
    torchvision = pytest.importorskip("torchvision")
    ref = torchvision.ops.SqueezeExcitation(24, 8, scale_activation=scale_activation).to(device)
    m = fastops.nn.SqueezeExcite(24, 8, scale_activation=scale_activation).to(device)
    m.load_state_dict(ref.state_dict())
    assert list(m.state_dict()) == list(ref.state_dict())
    x = make_layout(randn((3, 24, 11, 7), device=device), layout)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = m(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = randn(ya.shape, device=device)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_module_inference_matches_torchvision(device, layout, monkeypatch):
    """Without autograd the module calls the kernel directly (on the CPU, past fastops.ops'
    Python checks, which must not run: they are made to fail here); the same outputs as
    torchvision's module, and the kernel's own argument errors."""
    torchvision = pytest.importorskip("torchvision")
    ref = torchvision.ops.SqueezeExcitation(40, 16, scale_activation=nn.Hardsigmoid).to(device).eval()
    m = fastops.nn.SqueezeExcite(40, 16).to(device).eval()
    m.load_state_dict(ref.state_dict())
    x = make_layout(randn((4, 40, 9, 10), device=device), layout)
    if device == "cpu":
        def fail(*args, **kwargs):
            raise AssertionError("fastops.ops.squeeze_excite called in CPU inference")
        monkeypatch.setattr(fastops.ops, "squeeze_excite", fail)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
        assert y.is_contiguous(memory_format=fastops._layout.conv_output_format(x))
        with pytest.raises(ValueError, match=r"fastops.squeeze_excite: argument 'w1' must have shape \[S, 39\]"):
            m(x[:, 1:])


def test_module_unsupported_activation_falls_back(device):
    m = fastops.nn.SqueezeExcite(6, 3, activation=nn.GELU).to(device)
    x = randn((2, 6, 4, 4), device=device)
    s = m.scale_activation(m.fc2(m.activation(m.fc1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(m(x), x * s)


def test_errors(device):
    x = randn((2, 6, 3, 3), device=device)
    w1, b1, w2, b2 = _params(6, 2, torch.float32, device)
    op = fastops.ops.squeeze_excite
    with pytest.raises(ValueError, match=r"fastops.squeeze_excite: argument 'w1' must have shape \[S, 6\]"):
        op(x, w1[:, :5], b1, w2, b2)
    with pytest.raises(ValueError, match=r"fastops.squeeze_excite: argument 'w2' must have shape \[6, 2\]"):
        op(x, w1, b1, w2[:5], b2)
    with pytest.raises(ValueError, match=r"fastops.squeeze_excite: argument 'b1' must have shape \[2\]"):
        op(x, w1, b2, w2, b2)
    with pytest.raises(TypeError, match="fastops.squeeze_excite: argument 'w2' has dtype torch.float64"):
        op(x, w1, b1, w2.double(), b2)
    with pytest.raises(ValueError, match="fastops.squeeze_excite: argument 'x' must be 4-D"):
        op(x[0], w1, b1, w2, b2)
    with pytest.raises(ValueError, match="fastops.squeeze_excite: argument 'gate' must be one of"):
        op(x, w1, b1, w2, b2, "relu", "tanh")
    with pytest.raises(ValueError, match="fastops.squeeze_excite: argument 'x' has an empty plane"):
        op(x[:, :, :0], w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"fastops.squeeze_excite: argument 'w1' must have shape \[S, 6\]"):
        torch.ops.fastops.squeeze_excite(x, w1[:, :5], b1, w2, b2, "relu", "sigmoid")
    with pytest.raises(ValueError, match="fastops.squeeze_excite: argument 'gate' must be one of"):
        torch.ops.fastops.squeeze_excite(x, w1, b1, w2, b2, "relu", "tanh")
