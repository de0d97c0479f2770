"""bn_act_train's Triton kernels (fastops/triton/bn_act.py: forward, backward) against the
reference and its autograd, computed in float64: odd shapes (C = 1, H*W = 1, N = 1, several
channel blocks and pixel tiles), layouts, every activation, weight/bias given or None, float32 /
float64 / bfloat16 / float16, inputs with a large mean, the custom ops' autograd, gradcheck and
opcheck, and the argument checks.

On a machine without a GPU the kernels run under Triton's interpreter (tests/conftest.py), which
pays per program and per operation: the shapes are small, and picked to still span several
channel blocks, pixel tiles and pixel chunks."""

import pytest
import torch

import fastops
from fastops import reference
from fastops.triton import bn_act
from helpers import TRITON_DEVICE, check_close_to_f64, expects_channels_last, poisoned_memory, triton_input

ACTS = reference.ACTIVATIONS


def _params(C, has_w, has_b, dtype):
    # u = xhat * weight + bias spreads over the activations' kinks (0, +-3, 6)
    w = triton_input((C,), dtype, scale=1.0, offset=1.5) if has_w else None
    b = triton_input((C,), dtype, scale=2.0) if has_b else None
    return w, b


def _truth(x, w, b, act, eps=1e-5):
    """float64 (y, mean, var) and the leaves (x, weight, bias) to differentiate it by; absent
    weight/bias as ones/zeros so that their grads exist."""
    C = x.shape[1]
    x64 = x.detach().double().requires_grad_()
    w64 = (w.double() if w is not None else torch.ones(C, dtype=torch.float64, device=TRITON_DEVICE)).requires_grad_()
    b64 = (b.double() if b is not None else torch.zeros(C, dtype=torch.float64, device=TRITON_DEVICE)).requires_grad_()
    y64, mean64, var64 = reference.bn_act_train(x64, w64, b64, eps, act)
    return (y64, mean64.detach(), var64.detach()), (x64, w64, b64)


def _run(N, C, H, W, act="silu", dtype=torch.float32, layout="contiguous", has_w=True, has_b=True,
         param_dtype=None, grad_layout="contiguous", offset=0.0, scale=2.0, eps=1e-5):
    """Forward and backward launchers against the float64 reference and its autograd: values,
    dtypes, shapes and layouts of y, mean, var, grad_x, grad_weight, grad_bias."""
    param_dtype = param_dtype or dtype
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = triton_input((N, C, H, W), dtype, layout, scale=scale, offset=offset)
    w, b = _params(C, has_w, has_b, param_dtype)

    with poisoned_memory(x):
        y, mean, var = bn_act.forward(x, w, b, eps, act)
    (y64, mean64, var64), leaves = _truth(x, w, b, act, eps)

    fmt = torch.channels_last if expects_channels_last(layout) else torch.contiguous_format
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert y.is_contiguous(memory_format=fmt), (layout, y.stride())
    assert mean.shape == var.shape == (C,) and mean.dtype == var.dtype == stat_dtype
    # statistics: float32 accumulation, relative to the data's magnitude
    data_scale = abs(offset) + scale
    check_close_to_f64(mean, mean64, stat_dtype, atol=4 * torch.finfo(stat_dtype).eps * data_scale)
    check_close_to_f64(var, var64, stat_dtype)
    # y: the mean is known to float32's precision of |offset| (a shift of xhat of that over std),
    # which the weight scales (the GPU's summation order missed 4 eps |offset| with |w| ~ 2.5)
    gain = max(1.0, w.abs().max().item()) if w is not None else 1.0
    check_close_to_f64(y, y64.detach(), dtype, atol=4 * torch.finfo(stat_dtype).eps * abs(offset) / scale * gain)

    grad_out = triton_input(tuple(x.shape), dtype, grad_layout)
    expected = torch.autograd.grad(y64, leaves, grad_out.double())
    with poisoned_memory(x):
        grads = bn_act.backward(grad_out, x, mean, var, w, b, eps, act)
    gx, gw, gb = grads
    assert gx.shape == x.shape and gx.dtype == dtype and gx.is_contiguous(memory_format=fmt)
    assert gw.shape == gb.shape == (C,)
    assert gw.dtype == (w.dtype if has_w else stat_dtype) and gb.dtype == (b.dtype if has_b else stat_dtype)
    for name, actual, exp in zip(("grad_x", "grad_weight", "grad_bias"), grads, expected):
        # each at its own dtype's tolerance (a float32 grad_weight of bfloat16 x at float32's)
        try:
            check_close_to_f64(actual, exp, actual.dtype, reduced=True,
                         atol=16 * torch.finfo(stat_dtype).eps * abs(offset) / scale * exp.abs().max().item())
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    return x, y, mean, var, grads


# (N, C, H, W, act, layout, has_w, has_b)
GEOMETRIES = [
    pytest.param(2, 3, 5, 7, "silu", "contiguous", True, True, id="small"),
    pytest.param(2, 17, 3, 3, "relu", "channels_last", True, False, id="C17-cl-weight_only"),
    pytest.param(4, 33, 1, 1, "hardswish", "contiguous", False, True, id="HW1-C33-bias_only"),
    pytest.param(5, 6, 1, 1, "relu6", "channels_last", True, True, id="HW1-cl"),
    pytest.param(1, 1, 9, 5, "sigmoid", "contiguous", False, False, id="N1-C1-no_affine"),
    pytest.param(1, 3, 7, 6, "hardsigmoid", "channels_last", True, True, id="N1-cl"),
    pytest.param(3, 5, 4, 6, "relu6", "permuted", True, True, id="permuted"),
    pytest.param(2, 4, 5, 6, "hardsigmoid", "strided", True, True, id="strided"),
    pytest.param(2, 3, 4, 5, "none", "cl_sliced", True, True, id="cl_sliced"),
    pytest.param(3, 6, 4, 3, "silu", "offset", True, False, id="offset"),
    pytest.param(3, 5, 3, 4, "hardswish", "expanded", True, True, id="expanded_batch"),
    pytest.param(1, 4, 1, 7, "relu", "contiguous", True, True, id="H1"),
    pytest.param(2, 3, 6, 1, "silu", "strided", True, True, id="W1-strided"),
    # several channel blocks and pixel tiles (crossing images) in both layouts
    pytest.param(2, 9, 13, 11, "silu", "contiguous", True, True, id="multi_tile-nchw"),
    pytest.param(2, 70, 3, 5, "hardswish", "channels_last", True, True, id="multi_tile-cl"),
]
FLOAT64_GEOMETRIES = ("HW1-C33-bias_only", "N1-C1-no_affine", "permuted", "cl_sliced", "multi_tile-cl")
GEOMETRY_DTYPES = [pytest.param(g, torch.float32, id=f"{g.id}-float32") for g in GEOMETRIES] + [
    pytest.param(g, torch.float64, id=f"{g.id}-float64") for g in GEOMETRIES if g.id in FLOAT64_GEOMETRIES
]


@pytest.mark.parametrize("geometry, dtype", GEOMETRY_DTYPES)
def test_geometry(geometry, dtype):
    N, C, H, W, act, layout, has_w, has_b = geometry.values
    _run(N, C, H, W, act, dtype, layout, has_w, has_b)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_activations(act, dtype):
    _run(2, 5, 6, 7, act, dtype, "contiguous")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_half_input(dtype, layout):
    _run(3, 6, 5, 4, "hardswish", dtype, layout)


@pytest.mark.parametrize("dtype, param_dtype", [
    (torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float16),
    (torch.float64, torch.float32),
], ids=str)
def test_parameter_dtypes(dtype, param_dtype):
    """weight/bias in another dtype than x: computed with as float32 (float64 for float64 x);
    their grads come back in their own dtype."""
    _run(2, 4, 5, 5, "silu", dtype, "channels_last", param_dtype=param_dtype)


@pytest.mark.parametrize("grad_layout", ("channels_last", "strided", "expanded"))
def test_grad_out_in_another_layout(grad_layout):
    _run(2, 3, 6, 7, "silu", torch.float32, "contiguous", grad_layout=grad_layout)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("offset", (100.0, -3000.0))
def test_large_mean(layout, offset):
    """|mean| >> std: E[x^2] - E[x]^2 in float32 would lose the variance; the kernels' does not
    (var compared at float32's rtol, 1e-5)."""
    x, *_ = _run(3, 5, 7, 6, "hardswish", torch.float32, layout, offset=offset, scale=1.0)
    # the test has teeth: the one-pass float32 formula misses by more than the tolerance
    xf = x.float()
    naive = (xf * xf).mean(dim=(0, 2, 3)) - xf.mean(dim=(0, 2, 3)) ** 2
    truth = x.double().var(dim=(0, 2, 3), unbiased=False)
    assert ((naive.double() - truth).abs() / truth).max() > 1e-4


def test_many_chunks(monkeypatch):
    """Few reduction programs (each merging several pixel tiles) and small merge blocks (the
    chunks' partials merged over several blocks): the statistics and gradient sums stay exact,
    with a large mean to catch a lossy merge."""
    monkeypatch.setattr(bn_act, "MAX_PROGRAMS", 3)
    monkeypatch.setattr(bn_act, "MERGE_BLOCK_K", 2)
    for layout, shape in (("contiguous", (3, 3, 19, 23)), ("channels_last", (4, 5, 13, 14))):
        x = triton_input(shape, torch.float32, layout)
        plan = bn_act._Plan(x, fastops._layout.conv_output_format(x))
        # several tiles per chunk, the last one partly past the end; chunks over several merge blocks
        assert plan.tiles_per_chunk > 1 and plan.chunks > bn_act.MERGE_BLOCK_K, (plan.tiles_per_chunk, plan.chunks)
        assert plan.chunks * plan.tiles_per_chunk * plan.block_p > plan.M
        _run(*shape, "silu", torch.float32, layout, offset=50.0, scale=1.0)


def test_eps():
    """eps is used as given: a channel of near-constant values normalises by sqrt(var + eps)."""
    x, y, mean, var, _ = _run(2, 3, 4, 4, "none", torch.float32, "contiguous", scale=1e-2, eps=1e-3,
                              has_w=False, has_b=False)
    std = y.double().var(dim=(0, 2, 3), unbiased=False).sqrt()
    torch.testing.assert_close(std, (var.double() / (var.double() + 1e-3)).sqrt())
    assert std.max() < 0.6  # ~0.3; it would be 1 without eps


# ------------------------------------------------------------------------------- custom ops


def _autograd_case(N, C, H, W, act, dtype, layout, has_w, has_b):
    x = triton_input((N, C, H, W), dtype, layout, scale=2.0).requires_grad_()
    w, b = _params(C, has_w, has_b, dtype)
    w = w if w is None else w.requires_grad_()
    b = b if b is None else b.requires_grad_()
    y, mean, var = fastops.triton.bn_act_train(x, w, b, 1e-5, act)
    assert not mean.requires_grad and not var.requires_grad
    (y64, mean64, var64), (x64, w64, b64) = _truth(x, w, b, act)
    check_close_to_f64(y, y64.detach(), dtype)
    check_close_to_f64(mean, mean64, mean.dtype)
    check_close_to_f64(var, var64, var.dtype)
    g = triton_input(tuple(x.shape), dtype)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(y, leaves, g)
    expected = torch.autograd.grad(y64, [x64] + ([w64] if has_w else []) + ([b64] if has_b else []), g.double())
    fmt = torch.channels_last if expects_channels_last(layout) else torch.contiguous_format
    assert grads[0].is_contiguous(memory_format=fmt) and grads[0].dtype == dtype
    for leaf, actual, exp in zip(leaves, grads, expected):
        assert actual.dtype == leaf.dtype and actual.shape == leaf.shape
        check_close_to_f64(actual, exp, dtype, reduced=True)


@pytest.mark.parametrize("case", [
    pytest.param((2, 5, 4, 6, "silu", torch.float32, "contiguous", True, True), id="silu-float32"),
    pytest.param((3, 17, 3, 2, "relu6", torch.float32, "channels_last", True, False), id="relu6-cl-weight_only"),
    pytest.param((2, 3, 5, 5, "hardsigmoid", torch.bfloat16, "channels_last", False, True), id="bf16-cl-bias_only"),
    pytest.param((4, 6, 1, 1, "none", torch.float64, "strided", False, False), id="HW1-float64-no_affine"),
])
def test_autograd(case):
    """fastops.triton.bn_act_train (the custom op, autograd through its backward op) against
    autograd through reference.bn_act_train in float64."""
    _autograd_case(*case)


@pytest.mark.parametrize("act", ("silu", "hardswish", "none"))
def test_gradcheck(act):
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64, device=TRITON_DEVICE) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, device=TRITON_DEVICE).requires_grad_()
    f = lambda x, w, b: fastops.triton.bn_act_train(x, w, b, 1e-5, act)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)


def test_opcheck():
    ops = fastops.triton.ops
    x = triton_input((2, 3, 4, 5), torch.float32, "channels_last", scale=2.0)
    w, b = _params(3, True, True, torch.float32)
    req = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(ops.bn_act_train.default, (req(x), req(w), req(b), 1e-5, "hardswish"))
    torch.library.opcheck(ops.bn_act_train.default, (req(x), None, None, 1e-3, "none"))
    _, mean, var = bn_act.forward(x, w, b, 1e-5, "silu")
    g = triton_input(tuple(x.shape), torch.float32)
    torch.library.opcheck(ops.bn_act_train_backward.default, (g, x, mean, var, w, b, 1e-5, "silu"))
    torch.library.opcheck(ops.bn_act_train_backward.default, (g, x, mean, var, None, None, 1e-5, "relu"))


# ------------------------------------------------------------------------------- argument errors


def _args(**over):
    args = dict(x=torch.randn(2, 3, 4, 5), weight=torch.randn(3), bias=torch.randn(3), eps=1e-5, act="relu")
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, words", [
    (dict(x=torch.randn(3, 4, 5)), ValueError, "'x' must be 4-D"),
    (dict(x=torch.randn(2, 3, 4, 5).to(torch.int32)), TypeError, "'x' must be a floating-point"),
    (dict(weight=torch.randn(4)), ValueError, "'weight' must have shape [3]"),
    (dict(bias=torch.randn(3, 1)), ValueError, "'bias' must have shape [3]"),
    (dict(weight=torch.ones(3, dtype=torch.int64)), TypeError, "'weight' must be a floating-point"),
    (dict(act="gelu"), ValueError, "'act' must be one of"),
    (dict(x=torch.randn(1, 3, 1, 1)), ValueError, "batch statistics need more than 1"),
    (dict(eps=-1.0), ValueError, "'eps' must be a number >= 0"),
])
def test_argument_errors(over, exc, words):
    args = _args(**over)
    with pytest.raises(exc, match=r"fastops\.bn_act_train: ") as info:
        fastops.triton.bn_act_train(**args)
    assert words in str(info.value)
    with pytest.raises(exc, match=r"fastops\.bn_act_train: ") as info:
        bn_act.forward(**args)
    assert words in str(info.value)
    x = args["x"]
    stats = torch.ones(3)
    with pytest.raises(exc, match=r"fastops\.bn_act_train_backward: ") as info:
        bn_act.backward(x.clone(), x, stats, stats, **{k: v for k, v in args.items() if k != "x"})
    assert words in str(info.value)


def test_backward_statistics_errors():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"fastops\.bn_act_train_backward: argument 'var' must have shape \[3\]"):
        bn_act.backward(x, x, torch.ones(3), torch.ones(4), None, None, 1e-5, "none")
    with pytest.raises(ValueError, match=r"fastops\.bn_act_train_backward: argument 'grad_out' has shape"):
        bn_act.backward(x[:1], x, torch.ones(3), torch.ones(3), None, None, 1e-5, "none")
