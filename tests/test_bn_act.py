"""bn_act_train (training-mode BatchNorm + activation) through fastops.ops (C++ CPU kernels; CUDA
kernels where a GPU is present): outputs, batch statistics and gradients against the float64
reference and against nn.BatchNorm2d + activation; layouts, dtypes, odd shapes, a large mean,
gradcheck, opcheck, compile, errors. The Triton kernels have their own sweep in
test_bn_act_triton.py."""

import pytest
import torch
import torch.nn.functional as F

import fastops
from fastops import reference
from helpers import TOL, make_layout, poisoned_memory, randn

ACTS = reference.ACTIVATIONS


def _case(device, dtype, shape, affine=True, layout="contiguous", offset=0.0):
    x = make_layout((randn(shape, torch.float32, device, scale=1.5) + offset).to(dtype), layout)
    c = shape[1]
    weight = randn((c,), torch.float32, device, scale=1.0) if affine else None
    bias = randn((c,), torch.float32, device, scale=1.0) if affine else None
    return x, weight, bias


def _d(t):
    return None if t is None else t.double()


def _close(actual, expected, dtype, scale=None):
    tol = TOL[dtype]
    scale = max(1.0, expected.abs().max().item()) if scale is None else scale
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol["rtol"], atol=tol["rtol"] * scale)


def _expected_format(x):
    return fastops._layout.conv_output_format(x)


SHAPES = [(2, 3, 5, 7), (1, 17, 4, 4), (3, 33, 1, 1), (2, 40, 6, 5), (1, 1, 9, 2), (4, 16, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "strided", "permuted"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64, torch.float16), ids=str)
def test_forward_matches_reference(device, shape, layout, dtype):
    x, weight, bias = _case(device, dtype, shape, layout=layout)
    with poisoned_memory(x):
        y, mean, var = fastops.ops.bn_act_train(x, weight, bias, 1e-3, "hardswish")
    ey, emean, evar = reference.bn_act_train(x.double(), _d(weight), _d(bias), 1e-3, "hardswish")
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous(memory_format=_expected_format(x))
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == stat and var.dtype == stat and mean.shape == (shape[1],)
    stat_tol = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # exact inputs
    _close(mean, emean, stat_tol)
    _close(var, evar, stat_tol)
    _close(y, ey, dtype)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("affine", (True, False))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_every_activation_forward_and_backward(device, act, affine, layout):
    x, weight, bias = _case(device, torch.float32, (3, 21, 5, 6), affine, layout)
    params = [t.detach().requires_grad_() for t in (x, weight, bias) if t is not None]
    xr = params[0]
    wr, br = (params[1], params[2]) if affine else (None, None)
    y, mean, var = fastops.ops.bn_act_train(xr, wr, br, 1e-5, act)
    ex = [t.detach().double().requires_grad_() for t in params]
    ey, emean, evar = reference.bn_act_train(ex[0], ex[1] if affine else None, ex[2] if affine else None, 1e-5, act)
    _close(y, ey, torch.float32)
    g = randn(y.shape, torch.float32, device)
    got = torch.autograd.grad(y, params, g)
    want = torch.autograd.grad(ey, ex, g.double())
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
def test_matches_batch_norm_module_then_activation(device, layout, dtype):
    """The op is F.batch_norm(training=True) + act, gradients included. (A smooth activation:
    eager rounds the BN output to bfloat16 before the activation, the kernel does not, so at a
    kink of relu6 the two may legitimately pick different sides.)"""
    x, weight, bias = _case(device, dtype, (4, 24, 7, 9), layout=layout)
    a = x.detach().requires_grad_()
    w1, b1 = weight.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()
    y, _, _ = fastops.ops.bn_act_train(a, w1, b1, 1e-5, "silu")
    b_ = x.detach().requires_grad_()
    w2, b2 = weight.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()
    ey = F.silu(F.batch_norm(b_, None, None, w2, b2, training=True, eps=1e-5))
    _close(y, ey, dtype)
    g = randn(y.shape, dtype, device)
    for p, q in zip(torch.autograd.grad(y, (a, w1, b1), g), torch.autograd.grad(ey, (b_, w2, b2), g)):
        _close(p, q, dtype)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_large_mean_keeps_variance_accurate(device, layout):
    """x = 1000 + small noise: E[x^2] - E[x]^2 in float would lose the variance entirely."""
    x, weight, bias = _case(device, torch.float32, (8, 20, 12, 12), layout=layout, offset=1000.0)
    y, mean, var = fastops.ops.bn_act_train(x, weight, bias, 1e-5, "none")
    ey, emean, evar = reference.bn_act_train(x.double(), _d(weight), _d(bias), 1e-5, "none")
    torch.testing.assert_close(var.double(), evar, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), emean, rtol=1e-6, atol=0)
    torch.testing.assert_close(y.double(), ey, rtol=1e-3, atol=2e-3)  # x - mean is exact to ~1e-4 in float


def test_mobilenet_shape_many_chunks_and_threads(device):
    x, weight, bias = _case(device, torch.float32, (8, 144, 28, 28), layout="channels_last")
    y, mean, var = fastops.ops.bn_act_train(x, weight, bias, 1e-5, "relu6")
    ey, emean, evar = reference.bn_act_train(x.double(), _d(weight), _d(bias), 1e-5, "relu6")
    _close(mean, emean, torch.float32)
    _close(var, evar, torch.float32)
    _close(y, ey, torch.float32)
    g = randn(y.shape, torch.float32, device).contiguous(memory_format=torch.channels_last)
    got = fastops.ops.bn_act_train_backward(g, x, mean, var, weight, bias, 1e-5, "relu6")
    want = reference.bn_act_train_backward(g.double(), x.double(), emean, evar, _d(weight), _d(bias), 1e-5, "relu6")
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_large_planes_sum_in_several_chunks(device, layout):
    """Planes of more than 4096 values (NCHW sums in float over 256 vectors at a time, then in
    double) and more than 256 pixels per thread (channels_last): every chunk boundary is crossed."""
    x, weight, bias = _case(device, torch.float32, (2, 3, 70, 71), layout=layout, offset=3.0)
    y, mean, var = fastops.ops.bn_act_train(x, weight, bias, 1e-5, "hardswish")
    ey, emean, evar = reference.bn_act_train(x.double(), _d(weight), _d(bias), 1e-5, "hardswish")
    _close(mean, emean, torch.float32)
    _close(var, evar, torch.float32)
    _close(y, ey, torch.float32)
    g = randn(y.shape, torch.float32, device)
    got = fastops.ops.bn_act_train_backward(g, x, mean, var, weight, bias, 1e-5, "hardswish")
    want = reference.bn_act_train_backward(g.double(), x.double(), emean, evar, _d(weight), _d(bias), 1e-5, "hardswish")
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


def test_backward_op_outputs(device):
    """dtype and layout of the backward op's outputs; grads of None weight/bias as if 1 / 0."""
    x, weight, bias = _case(device, torch.bfloat16, (2, 18, 4, 5), layout="channels_last")
    y, mean, var = fastops.ops.bn_act_train(x, weight, bias, 1e-5, "silu")
    g = randn(y.shape, torch.bfloat16, device)
    gx, gw, gb = fastops.ops.bn_act_train_backward(g, x, mean, var, weight.half(), None, 1e-5, "silu")
    assert gx.dtype == torch.bfloat16 and gx.is_contiguous(memory_format=torch.channels_last)
    assert gw.dtype == torch.float16 and gb.dtype == torch.float32
    want = reference.bn_act_train_backward(g.double(), x.double(), mean.double(), var.double(), weight.half().double(), None, 1e-5, "silu")
    _close(gx, want[0], torch.bfloat16)
    _close(gw, want[1], torch.float16)
    _close(gb, want[2], torch.float32)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("act", ("hardswish", "silu", "none"))
def test_gradcheck_float64(device, layout, act):
    x, weight, bias = _case(device, torch.float64, (2, 3, 3, 4), layout=layout)
    inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    f = lambda a, b, c: torch.ops.fastops.bn_act_train(a, b, c, 1e-3, act)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)


def _opcheck_cases(ns, device):
    cases = []
    for layout, affine, act in (("contiguous", True, "relu6"), ("channels_last", False, "hardswish"), ("strided", True, "silu")):
        x, weight, bias = _case(device, torch.float32, (2, 5, 3, 4), affine, layout)
        req = lambda t: None if t is None else t.detach().requires_grad_()  # noqa: E731
        y, mean, var = ns.bn_act_train(x, weight, bias, 1e-5, act)
        g = randn(y.shape, torch.float32, device)
        cases.append((ns.bn_act_train.default, (req(x), req(weight), req(bias), 1e-5, act)))
        cases.append((ns.bn_act_train_backward.default, (g, x, mean, var, weight, bias, 1e-5, act)))
    return cases


@pytest.mark.parametrize("case", range(6))
def test_opcheck(device, case):
    op, args = _opcheck_cases(torch.ops.fastops, device)[case]
    torch.library.opcheck(op, args)


def test_registered_kernels():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for op in ("bn_act_train", "bn_act_train_backward"):
        qual = f"fastops::{op}"
        assert has(qual, "CPU") and has(qual, "Meta"), qual
        if fastops.has_cuda_kernels():
            assert has(qual, "CUDA"), qual
    assert has("fastops::bn_act_train", "Autograd")


@pytest.mark.parametrize("backend", ("aot_eager", "inductor"))
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def f(x, w, b):
        y, mean, var = fastops.ops.bn_act_train(x, w, b, 1e-5, "hardswish")
        return (y * 2).sum() + mean.sum() + var.sum()

    x = randn((2, 8, 5, 6)).to(memory_format=torch.channels_last).requires_grad_()
    w, b = randn((8,)).requires_grad_(), randn((8,)).requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(f(x, w, b), (x, w, b))
    for a, c in zip(got, want):
        _close(a, c, torch.float32)


BAD_ARGUMENTS = [
    (dict(x=lambda x: x[0]), ValueError, "argument 'x' must be 4-D"),
    (dict(x=lambda x: x.to(torch.int32)), TypeError, "argument 'x' must be a floating-point tensor"),
    (dict(x=lambda x: x[:1, :, :1, :1]), ValueError, "batch statistics need more than 1"),
    (dict(weight=lambda w: w[:3]), ValueError, "argument 'weight' must have shape [4]"),
    (dict(bias=lambda b: b.view(2, 2)), ValueError, "argument 'bias' must have shape [4]"),
    (dict(weight=lambda w: w.to(torch.int64)), TypeError, "argument 'weight' must be a floating-point tensor"),
    (dict(eps=-1.0), ValueError, "argument 'eps' must be"),
    (dict(act="gelu"), ValueError, "argument 'act' must be one of"),
]


@pytest.mark.parametrize("change,exc,msg", BAD_ARGUMENTS, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("entry", ("ops", "torch.ops"))
def test_bad_arguments_are_clear_errors(change, exc, msg, entry):
    x, weight, bias = _case("cpu", torch.float32, (2, 4, 3, 3))
    kw = dict(x=x, weight=weight, bias=bias, eps=1e-5, act="relu6")
    for key, v in change.items():
        kw[key] = v(kw[key]) if callable(v) else v
    if entry == "torch.ops":
        call = lambda: torch.ops.fastops.bn_act_train(kw["x"], kw["weight"], kw["bias"], kw["eps"], kw["act"])  # noqa: E731
    else:
        call = lambda: fastops.ops.bn_act_train(**kw)  # noqa: E731
    pattern = "fastops.bn_act_train: .*" + msg.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(exc, match=pattern):
        call()


def test_backward_bad_grad_shape():
    x, weight, bias = _case("cpu", torch.float32, (2, 4, 3, 3))
    y, mean, var = fastops.ops.bn_act_train(x, weight, bias, 1e-5, "relu")
    with pytest.raises(ValueError, match="fastops.bn_act_train_backward: argument 'grad_out'"):
        torch.ops.fastops.bn_act_train_backward(y[:, :, :2], x, mean, var, weight, bias, 1e-5, "relu")


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_cpu_results_do_not_depend_on_threads_or_scheduling(layout):
    """The per-channel sums are added in a fixed order: the same input gives the same bits on
    every call and with any thread count (channels_last splits the pixels among threads)."""
    x, weight, bias = _case("cpu", torch.float32, (8, 40, 37, 41), layout=layout, offset=0.3)
    g = make_layout(randn(tuple(x.shape), scale=1.0), layout)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, threads, threads):
            torch.set_num_threads(n)
            xg = x.clone().requires_grad_()
            y, mean, var = fastops.ops.bn_act_train(xg, weight, bias, 1e-5, "relu6")
            y.backward(g)
            results.append((y.detach(), mean, var, xg.grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
