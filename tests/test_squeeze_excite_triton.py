"""squeeze_excite's Triton kernels (fastops/triton/squeeze_excite.py: forward, backward) against
the reference and its autograd, computed in float64: odd channel and squeeze counts, N = 1, 1x1
planes, planes and channel counts spanning several tiles, layouts, every activation and gate,
biases given or None, 2-D and 1x1-conv-shaped weights, float32 / float64 / bfloat16 / float16,
the custom ops' autograd, gradcheck and opcheck, and the argument checks.

Kernels run under Triton's interpreter on a machine without a GPU (tests/conftest.py): shapes
are small."""

import importlib

import pytest
import torch

import fastops
from fastops import reference
from helpers import TRITON_DEVICE, check_close_to_f64, expects_channels_last, make_layout, poisoned_memory, triton_input

# (fastops.triton.squeeze_excite is the public function; this is the kernels' module)
se = importlib.import_module("fastops.triton.squeeze_excite")

ACTS = reference.ACTIVATIONS


def _params(C, S, dtype, has_b1, has_b2, conv_shaped, param_dtype=None):
    """w1, b1, w2, b2 whose pre-activations spread over the activations' kinks (0, +-3, 6)."""
    param_dtype = param_dtype or dtype
    w1 = triton_input((S, C), dtype, scale=3.0 / C ** 0.5)
    w2 = triton_input((C, S), dtype, scale=3.0 / S ** 0.5)
    if conv_shaped:
        w1, w2 = w1[:, :, None, None], w2[:, :, None, None]
    b1 = triton_input((S,), param_dtype, scale=1.0, offset=0.5) if has_b1 else None
    b2 = triton_input((C,), param_dtype, scale=2.0) if has_b2 else None
    return w1, b1, w2, b2


def _run(N, C, S, H, W, act="relu", gate="hardsigmoid", dtype=torch.float32, layout="contiguous", has_b1=True,
         has_b2=True, conv_shaped=False, param_dtype=None, grad_layout="contiguous"):
    """Forward and backward launchers against the float64 reference and its autograd: values,
    dtypes, shapes and layouts of y and of the five gradients."""
    # x's plane means spread around 0 with a few units' spread, so the FC inputs matter
    x = triton_input((N, C, H, W), dtype, layout, scale=2.0) + triton_input((N, C, 1, 1), dtype, scale=2.0)
    x = make_layout(x, layout)
    w1, b1, w2, b2 = _params(C, S, dtype, has_b1, has_b2, conv_shaped, param_dtype)

    with poisoned_memory(x):
        y = se.forward(x, w1, b1, w2, b2, act, gate)
    leaves = [x.detach().double().requires_grad_(), w1.double().requires_grad_(),
              (b1.double() if has_b1 else torch.zeros(S, dtype=torch.float64, device=TRITON_DEVICE)).requires_grad_(),
              w2.double().requires_grad_(),
              (b2.double() if has_b2 else torch.zeros(C, dtype=torch.float64, device=TRITON_DEVICE)).requires_grad_()]
    y64 = reference.squeeze_excite(*leaves, act, gate)

    fmt = torch.channels_last if expects_channels_last(layout) else torch.contiguous_format
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous(memory_format=fmt), (layout, y.stride())
    check_close_to_f64(y, y64.detach(), dtype)

    grad_out = triton_input((N, C, H, W), dtype, grad_layout)
    expected = torch.autograd.grad(y64, leaves, grad_out.double())
    with poisoned_memory(x):
        grads = se.backward(grad_out, x, w1, b1, w2, b2, act, gate)
    gx, gw1, gb1, gw2, gb2 = grads
    assert gx.shape == x.shape and gx.dtype == dtype and gx.is_contiguous(memory_format=fmt)
    assert gw1.shape == w1.shape and gw1.dtype == w1.dtype and gw2.shape == w2.shape and gw2.dtype == w2.dtype
    assert gb1.shape == (S,) and gb1.dtype == (b1.dtype if has_b1 else dtype)
    assert gb2.shape == (C,) and gb2.dtype == (b2.dtype if has_b2 else dtype)
    # float32 gradients may be off the truth by up to 4x what the reference composition in float32
    # is off it: grad_w1 sums over N products of an FC's input and a gradient that itself sums
    # over C, whose terms can cancel, and on a GPU (approximate exp and division) the kernel's
    # 3.0e-6 on HW1-S1-b1_only exceeded the 1e-6 floor where float32 eager is off by ~1e-6 too
    floor = [0.0] * 5
    if dtype == torch.float32:
        leaves32 = [t.detach().float().requires_grad_() for t in leaves]
        expected32 = torch.autograd.grad(reference.squeeze_excite(*leaves32, act, gate), leaves32, grad_out.float())
        floor = [4 * (e32.double() - e).abs().max().item() for e32, e in zip(expected32, expected)]
    for name, actual, exp, f32_err in zip(("grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2"), grads, expected,
                                         floor):
        try:
            check_close_to_f64(actual, exp, actual.dtype, reduced=name != "grad_x", atol=f32_err or None)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# (N, C, S, H, W, act, gate, layout, has_b1, has_b2, conv_shaped)
GEOMETRIES = [
    pytest.param(2, 6, 3, 5, 4, "relu", "hardsigmoid", "contiguous", True, True, False, id="small"),
    pytest.param(2, 7, 5, 3, 3, "silu", "sigmoid", "channels_last", True, True, True, id="C7-S5-cl-conv_shaped"),
    pytest.param(1, 5, 2, 4, 6, "hardswish", "hardsigmoid", "strided", False, True, False, id="N1-strided-b2_only"),
    pytest.param(3, 9, 1, 1, 1, "relu6", "sigmoid", "contiguous", True, False, True, id="HW1-S1-b1_only"),
    pytest.param(2, 4, 4, 1, 1, "none", "hardsigmoid", "channels_last", False, False, False, id="HW1-cl-no_bias"),
    pytest.param(2, 3, 2, 4, 5, "relu", "silu", "permuted", True, True, False, id="permuted"),
    pytest.param(2, 5, 3, 3, 4, "silu", "hardsigmoid", "offset", True, True, False, id="offset"),
    pytest.param(3, 6, 2, 3, 3, "hardswish", "sigmoid", "expanded", True, True, False, id="expanded"),
    pytest.param(2, 5, 3, 3, 4, "relu", "hardsigmoid", "cl_sliced", True, True, True, id="cl_sliced"),
    pytest.param(1, 1, 1, 3, 2, "relu", "sigmoid", "contiguous", True, True, False, id="C1"),
    # several pixel steps (NCHW tiles: 256 pixels) and channel blocks (channels_last: 64 channels)
    pytest.param(2, 5, 3, 17, 19, "silu", "hardsigmoid", "contiguous", True, True, False, id="multi_tile-nchw"),
    pytest.param(2, 70, 8, 2, 3, "relu", "hardsigmoid", "channels_last", True, True, False, id="multi_tile-cl"),
]
FLOAT64_GEOMETRIES = ("C7-S5-cl-conv_shaped", "HW1-S1-b1_only", "cl_sliced", "multi_tile-nchw")
GEOMETRY_DTYPES = [pytest.param(g, torch.float32, id=f"{g.id}-float32") for g in GEOMETRIES] + [
    pytest.param(g, torch.float64, id=f"{g.id}-float64") for g in GEOMETRIES if g.id in FLOAT64_GEOMETRIES
]


@pytest.mark.parametrize("geometry, dtype", GEOMETRY_DTYPES)
def test_geometry(geometry, dtype):
    N, C, S, H, W, act, gate, layout, has_b1, has_b2, conv_shaped = geometry.values
    _run(N, C, S, H, W, act, gate, dtype, layout, has_b1, has_b2, conv_shaped)


@pytest.mark.parametrize("act", ACTS)
def test_activations(act):
    """Every activation as act and as gate."""
    _run(2, 6, 3, 3, 4, act, "hardsigmoid", torch.float32)
    _run(2, 6, 3, 3, 4, "relu", act, torch.float64)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_half_input(dtype, layout):
    _run(2, 6, 3, 7, 5, "relu", "hardsigmoid", dtype, layout)


@pytest.mark.parametrize("dtype, param_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16),
                                               (torch.float64, torch.float32)],
                         ids=str)
def test_bias_dtypes(dtype, param_dtype):
    """Biases in another dtype than x: used as float32 (float64 for float64 x); their grads come
    back in their own dtype."""
    _run(2, 5, 3, 4, 4, "silu", "sigmoid", dtype, "channels_last", param_dtype=param_dtype)


@pytest.mark.parametrize("grad_layout", ("channels_last", "strided", "expanded"))
def test_grad_out_in_another_layout(grad_layout):
    _run(2, 5, 3, 4, 3, "silu", "hardsigmoid", torch.float32, "contiguous", grad_layout=grad_layout)


def test_empty_batch():
    x = torch.randn(0, 4, 3, 3, device=TRITON_DEVICE)
    w1, b1, w2, b2 = _params(4, 2, torch.float32, True, False, False)
    y = se.forward(x, w1, b1, w2, b2, "relu", "sigmoid")
    assert y.shape == x.shape
    gx, gw1, gb1, gw2, gb2 = se.backward(y, x, w1, b1, w2, b2, "relu", "sigmoid")
    assert gx.shape == x.shape and gw1.shape == w1.shape and gw2.shape == w2.shape
    assert not gw1.any() and not gb1.any() and not gw2.any() and not gb2.any() and gb2.shape == (4,)


# ------------------------------------------------------------------------------- custom ops


@pytest.mark.parametrize("case", [
    pytest.param((2, 6, 3, 4, 5, "relu", "hardsigmoid", torch.float32, "contiguous", True, True), id="float32"),
    pytest.param((2, 5, 2, 3, 3, "silu", "sigmoid", torch.float32, "channels_last", False, True), id="cl-b2_only"),
    pytest.param((1, 4, 2, 3, 4, "hardswish", "hardsigmoid", torch.bfloat16, "channels_last", True, False),
                 id="bf16-b1_only"),
])
def test_autograd(case):
    """fastops.triton.squeeze_excite (the custom op, autograd through its backward op) against
    autograd through the reference in float64; a None bias gets no gradient."""
    N, C, S, H, W, act, gate, dtype, layout, has_b1, has_b2 = case
    x = make_layout(triton_input((N, C, H, W), dtype, scale=2.0), layout).requires_grad_()
    params = [t if t is None else t.requires_grad_() for t in _params(C, S, dtype, has_b1, has_b2, False)]
    y = fastops.triton.squeeze_excite(x, *params, act, gate)
    leaves = [x] + [t for t in params if t is not None]
    l64 = [t.detach().double().requires_grad_() for t in leaves]
    it = iter(l64[1:])
    args64 = [l64[0]] + [None if t is None else next(it) for t in params]
    y64 = reference.squeeze_excite(*args64, act, gate)
    check_close_to_f64(y, y64.detach(), dtype)
    g = triton_input(tuple(x.shape), dtype)
    for leaf, actual, exp in zip(leaves, torch.autograd.grad(y, leaves, g), torch.autograd.grad(y64, l64, g.double())):
        assert actual.dtype == leaf.dtype and actual.shape == leaf.shape
        check_close_to_f64(actual, exp, dtype, reduced=True)


@pytest.mark.parametrize("act, gate, has_b", [("silu", "sigmoid", True), ("none", "hardsigmoid", False)])
def test_gradcheck(act, gate, has_b):
    f64 = dict(dtype=torch.float64, device=TRITON_DEVICE)
    x = torch.randn(2, 3, 2, 2, **f64, requires_grad=True)
    w1 = torch.randn(2, 3, **f64, requires_grad=True)
    w2 = torch.randn(3, 2, 1, 1, **f64, requires_grad=True)
    b1 = torch.randn(2, **f64, requires_grad=True) if has_b else None
    b2 = torch.randn(3, **f64, requires_grad=True) if has_b else None

    def f(x, w1, w2, b1=None, b2=None):
        return fastops.triton.squeeze_excite(x, w1, b1, w2, b2, act, gate)

    assert torch.autograd.gradcheck(f, (x, w1, w2) + ((b1, b2) if has_b else ()), fast_mode=True)


def test_opcheck():
    ops = fastops.triton.ops
    req = lambda t: None if t is None else t.detach().clone().requires_grad_()  # noqa: E731
    for layout, has_b in (("contiguous", True), ("channels_last", False), ("strided", True)):
        x = triton_input((2, 5, 3, 4), torch.float32, layout, scale=2.0)
        w1, b1, w2, b2 = _params(5, 3, torch.float32, has_b, has_b, layout == "channels_last")
        torch.library.opcheck(ops.squeeze_excite.default, (req(x), req(w1), req(b1), req(w2), req(b2), "relu", "sigmoid"))
        g = triton_input(tuple(x.shape), torch.float32)
        torch.library.opcheck(ops.squeeze_excite_backward.default, (g, x, w1, b1, w2, b2, "silu", "hardsigmoid"))


# ------------------------------------------------------------------------------- argument errors


def _args(**over):
    args = dict(x=torch.randn(2, 6, 3, 3), w1=torch.randn(3, 6), b1=torch.randn(3), w2=torch.randn(6, 3),
                b2=torch.randn(6), act="relu", gate="hardsigmoid")
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, words", [
    (dict(x=torch.randn(6, 3, 3)), ValueError, "argument 'x' must be 4-D"),
    (dict(x=torch.ones(2, 6, 3, 3, dtype=torch.int32)), TypeError, "argument 'x' must be a floating-point"),
    (dict(x=torch.randn(2, 6, 0, 3)), ValueError, "argument 'x' has an empty plane"),
    (dict(w1=torch.randn(3, 5)), ValueError, "argument 'w1' must have shape [S, 6] or [S, 6, 1, 1]"),
    (dict(w1=torch.randn(3, 6, 3, 3)), ValueError, "argument 'w1' must have shape [S, 6]"),
    (dict(w2=torch.randn(6, 4)), ValueError, "argument 'w2' must have shape [6, 3] or [6, 3, 1, 1]"),
    (dict(w2=torch.randn(5, 3)), ValueError, "argument 'w2' must have shape [6, 3]"),
    (dict(w1=torch.randn(3, 6, dtype=torch.float64)), TypeError, "argument 'w1' has dtype"),
    (dict(b1=torch.randn(6)), ValueError, "argument 'b1' must have shape [3]"),
    (dict(b2=torch.randn(3)), ValueError, "argument 'b2' must have shape [6]"),
    (dict(act="gelu"), ValueError, "argument 'act' must be one of"),
    (dict(gate="tanh"), ValueError, "argument 'gate' must be one of"),
])
def test_argument_errors(over, exc, words):
    args = _args(**over)
    for fn in (fastops.triton.squeeze_excite, se.forward):
        with pytest.raises(exc, match=r"fastops\.squeeze_excite: ") as info:
            fn(**args)
        assert words in str(info.value)
    x = args["x"]
    with pytest.raises(exc, match=r"fastops\.squeeze_excite_backward: ") as info:
        se.backward(x.clone(), **args)
    assert words in str(info.value)


def test_backward_grad_out_error():
    args = _args()
    with pytest.raises(ValueError, match=r"fastops\.squeeze_excite_backward: argument 'grad_out' has shape"):
        se.backward(torch.randn(2, 6, 3, 2), **args)
