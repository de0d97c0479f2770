"""separable_conv_bn_act's Triton path (fastops/triton/separable.py: the dwconv kernel into a
float32 / float64 temporary, then the pwconv kernel; backward through both) against the
reference and its autograd, computed in float64: kernel sizes, strides, paddings, dilations,
channel multipliers, odd channel counts, N = 1, 1x1 outputs, layouts, every activation,
scale/shift given or None, float32 / float64 / bfloat16 / float16, the custom ops' autograd,
gradcheck and opcheck, and the argument checks.

Kernels run under Triton's interpreter on a machine without a GPU (tests/conftest.py): shapes
are small."""

import pytest
import torch

import fastops
from fastops import reference
from fastops.triton import separable
from helpers import TRITON_DEVICE, check_close_to_f64, expects_channels_last, poisoned_memory, triton_input

ACTS = reference.ACTIVATIONS


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _params(C, m, OC, k, dtype, has_scale, has_shift, param_dtype=None):
    KH, KW = _pair(k)
    dw = triton_input((C * m, 1, KH, KW), dtype, scale=(KH * KW) ** -0.5)
    pw = triton_input((OC, C * m, 1, 1), dtype, scale=(C * m) ** -0.5)
    # u = z * scale + shift spreads over the activations' kinks (0, +-3, 6)
    scale = triton_input((OC,), param_dtype or dtype, scale=0.5, offset=2.0) if has_scale else None
    shift = triton_input((OC,), param_dtype or dtype, scale=2.0) if has_shift else None
    return dw, pw, scale, shift


def _run(N, C, m, OC, H, W, k, stride, padding, dilation, act="relu6", dtype=torch.float32, layout="contiguous",
         has_scale=True, has_shift=True, param_dtype=None, grad_layout="contiguous"):
    """Forward and backward against the float64 reference and its autograd: values, dtypes,
    shapes and layouts of y and of the five gradients."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    x = triton_input((N, C, H, W), dtype, layout, scale=2.0)
    dw, pw, scale, shift = _params(C, m, OC, k, dtype, has_scale, has_shift, param_dtype)
    geom = (stride, padding, dilation, act)

    with poisoned_memory(x):
        y = separable.forward(x, dw, pw, scale, shift, *geom)
    d64 = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    leaves = [d64(x), d64(dw), d64(pw),
              d64(scale) if has_scale else torch.ones(OC, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True),
              d64(shift) if has_shift else torch.zeros(OC, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)]
    y64 = reference.separable_conv_bn_act(*leaves, *geom)

    fmt = torch.channels_last if expects_channels_last(layout) else torch.contiguous_format
    assert y.shape == y64.shape and y.dtype == dtype and y.is_contiguous(memory_format=fmt), (layout, y.stride())
    check_close_to_f64(y, y64.detach(), dtype)

    grad_out = triton_input(tuple(y.shape), dtype, grad_layout)
    expected = torch.autograd.grad(y64, leaves, grad_out.double())
    with poisoned_memory(x):
        grads = separable.backward(grad_out, x, dw, pw, scale, shift, *geom)
    gx, gdw, gpw, gs, gb = grads
    assert gx.shape == x.shape and gx.dtype == dtype and gx.is_contiguous(memory_format=fmt)
    assert gdw.shape == dw.shape and gdw.dtype == dtype and gdw.is_contiguous()
    assert gpw.shape == pw.shape and gpw.dtype == dtype and gpw.is_contiguous()
    assert gs.shape == gb.shape == (OC,)
    assert gs.dtype == (scale.dtype if has_scale else dtype) and gb.dtype == (shift.dtype if has_shift else dtype)
    for name, actual, exp in zip(("grad_x", "grad_dw_weight", "grad_pw_weight", "grad_scale", "grad_shift"), grads,
                                 expected):
        try:
            check_close_to_f64(actual, exp, actual.dtype, reduced=True)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# (N, C, m, OC, H, W, k, stride, padding, dilation, act, layout, has_scale, has_shift)
GEOMETRIES = [
    pytest.param(2, 3, 1, 5, 6, 5, 3, 1, 1, 1, "relu", "contiguous", True, True, id="k3-s1-p1"),
    pytest.param(2, 4, 1, 6, 7, 6, 3, 2, 1, 1, "relu6", "channels_last", True, True, id="k3-s2-cl"),
    pytest.param(1, 3, 2, 4, 6, 6, 3, 1, 2, 2, "hardswish", "strided", True, False, id="k3-d2-m2-N1-strided"),
    pytest.param(2, 5, 1, 7, 5, 4, (3, 1), (1, 2), (1, 0), 1, "silu", "permuted", False, True, id="k3x1-s1x2-permuted"),
    pytest.param(1, 2, 3, 3, 3, 3, 3, 1, 0, 1, "sigmoid", "contiguous", False, False, id="1x1_output-m3-no_affine"),
    pytest.param(2, 3, 1, 4, 5, 5, 1, 1, 0, 1, "none", "cl_sliced", True, True, id="k1-cl_sliced"),
    pytest.param(2, 3, 1, 2, 4, 4, 3, 1, 1, 1, "hardsigmoid", "expanded", True, True, id="expanded"),
    pytest.param(1, 1, 1, 1, 3, 3, 3, 1, 1, 1, "relu", "channels_last", True, True, id="C1-OC1-cl"),
]
FLOAT64_GEOMETRIES = ("k3-s2-cl", "k3x1-s1x2-permuted", "1x1_output-m3-no_affine")
GEOMETRY_DTYPES = [pytest.param(g, torch.float32, id=f"{g.id}-float32") for g in GEOMETRIES] + [
    pytest.param(g, torch.float64, id=f"{g.id}-float64") for g in GEOMETRIES if g.id in FLOAT64_GEOMETRIES
]


@pytest.mark.parametrize("geometry, dtype", GEOMETRY_DTYPES)
def test_geometry(geometry, dtype):
    N, C, m, OC, H, W, k, stride, padding, dilation, act, layout, has_scale, has_shift = geometry.values
    _run(N, C, m, OC, H, W, k, stride, padding, dilation, act, dtype, layout, has_scale, has_shift)


@pytest.mark.parametrize("act", ACTS)
def test_activations(act):
    _run(2, 3, 1, 4, 5, 4, 3, 1, 1, 1, act, torch.float32)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_half_input(dtype, layout):
    _run(2, 4, 2, 6, 6, 5, 3, 1, 1, 1, "hardswish", dtype, layout)


def test_float32_params_with_bfloat16_input():
    _run(2, 3, 1, 5, 5, 5, 3, 2, 1, 1, "silu", torch.bfloat16, "channels_last", param_dtype=torch.float32)


@pytest.mark.parametrize("grad_layout", ("channels_last", "strided"))
def test_grad_out_in_another_layout(grad_layout):
    _run(2, 3, 1, 4, 5, 5, 3, 1, 1, 1, "silu", torch.float32, "contiguous", grad_layout=grad_layout)


def test_empty_batch():
    x = torch.randn(0, 3, 5, 5, device=TRITON_DEVICE)
    dw, pw, scale, shift = _params(3, 1, 4, 3, torch.float32, True, False)
    y = separable.forward(x, dw, pw, scale, shift, (1, 1), (1, 1), (1, 1), "relu")
    assert y.shape == (0, 4, 5, 5)
    gx, gdw, gpw, gs, gb = separable.backward(y, x, dw, pw, scale, shift, (1, 1), (1, 1), (1, 1), "relu")
    assert gx.shape == x.shape and gdw.shape == dw.shape and gpw.shape == pw.shape
    assert not gdw.any() and not gpw.any() and not gs.any() and not gb.any()


# ------------------------------------------------------------------------------- custom ops


@pytest.mark.parametrize("case", [
    pytest.param((2, 3, 1, 4, 5, 5, torch.float32, "contiguous", True, True, "silu"), id="float32"),
    pytest.param((1, 2, 2, 3, 6, 5, torch.bfloat16, "channels_last", False, True, "relu6"), id="bf16-cl-shift_only"),
])
def test_autograd(case):
    """fastops.triton.separable_conv_bn_act (the custom op, autograd through its backward op)
    against autograd through the reference in float64; None arguments get no gradient."""
    N, C, m, OC, H, W, dtype, layout, has_scale, has_shift, act = case
    x = triton_input((N, C, H, W), dtype, layout, scale=2.0).requires_grad_()
    params = [t if t is None else t.requires_grad_() for t in _params(C, m, OC, 3, dtype, has_scale, has_shift)]
    y = fastops.triton.separable_conv_bn_act(x, *params, stride=2, padding=1, act=act)
    args = [x] + params
    a64 = [None if t is None else t.detach().double().requires_grad_() for t in args]
    y64 = reference.separable_conv_bn_act(*a64, stride=2, padding=1, act=act)
    check_close_to_f64(y, y64.detach(), dtype)
    g = triton_input(tuple(y.shape), dtype)
    leaves = [t for t in args if t is not None]
    expected = torch.autograd.grad(y64, [t for t in a64 if t is not None], g.double())
    for leaf, actual, exp in zip(leaves, torch.autograd.grad(y, leaves, g), expected):
        assert actual.dtype == leaf.dtype and actual.shape == leaf.shape
        check_close_to_f64(actual, exp, dtype, reduced=True)


def test_gradcheck():
    f64 = dict(dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    x = torch.randn(1, 2, 4, 3, **f64)
    dw, pw = torch.randn(4, 1, 3, 3, **f64), torch.randn(3, 4, 1, 1, **f64)
    scale, shift = torch.randn(3, **f64), torch.randn(3, **f64)
    f = lambda *t: fastops.triton.separable_conv_bn_act(*t, stride=(2, 1), padding=1, dilation=1, act="silu")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, dw, pw, scale, shift), fast_mode=True)


def test_opcheck():
    ops = fastops.triton.ops
    req = lambda t: None if t is None else t.detach().clone().requires_grad_()  # noqa: E731
    for layout, affine, geom in (("contiguous", True, ([1, 1], [1, 1], [1, 1])),
                                 ("channels_last", False, ([2, 1], [1, 0], [1, 1]))):
        x = triton_input((2, 3, 5, 4), torch.float32, layout)
        dw, pw, scale, shift = _params(3, 2, 4, 3, torch.float32, affine, affine)
        torch.library.opcheck(ops.separable_conv_bn_act.default,
                              (req(x), req(dw), req(pw), req(scale), req(shift), *geom, "hardswish"))
        y = separable.forward(x, dw, pw, scale, shift, *geom, "hardswish")
        g = triton_input(tuple(y.shape), torch.float32)
        torch.library.opcheck(ops.separable_conv_bn_act_backward.default, (g, x, dw, pw, scale, shift, *geom, "relu"))


# ------------------------------------------------------------------------------- argument errors


def _args(**over):
    args = dict(x=torch.randn(2, 3, 5, 5), dw_weight=torch.randn(6, 1, 3, 3), pw_weight=torch.randn(4, 6, 1, 1),
                scale=torch.randn(4), shift=torch.randn(4), stride=(1, 1), padding=(1, 1), dilation=(1, 1), act="relu")
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, words", [
    (dict(x=torch.randn(3, 5, 5)), ValueError, "argument 'x' must be 4-D"),
    (dict(dw_weight=torch.randn(6, 2, 3, 3)), ValueError, "argument 'dw_weight' must have shape [C*m, 1, kh, kw]"),
    (dict(dw_weight=torch.randn(4, 1, 3, 3)), ValueError, "argument 'dw_weight' has 4 output channels, which is not a multiple"),
    (dict(pw_weight=torch.randn(4, 3, 1, 1)), ValueError, "argument 'pw_weight' must have shape [OC, 6, 1, 1]"),
    (dict(pw_weight=torch.randn(4, 6, 3, 3)), ValueError, "argument 'pw_weight' must have shape [OC, 6, 1, 1]"),
    (dict(pw_weight=torch.randn(4, 6, 1, 1, dtype=torch.float64)), TypeError, "argument 'pw_weight' has dtype"),
    (dict(scale=torch.randn(6)), ValueError, "argument 'scale' must have shape [4]"),
    (dict(shift=torch.randn(3)), ValueError, "argument 'shift' must have shape [4]"),
    (dict(stride=(0, 1)), ValueError, "argument 'stride' must be >= 1"),
    (dict(padding=(0, 0), dilation=(3, 3)), ValueError, "larger than the padded input"),
    (dict(act="gelu"), ValueError, "argument 'act' must be one of"),
])
def test_argument_errors(over, exc, words):
    args = _args(**over)
    for fn in (fastops.triton.separable_conv_bn_act, separable.forward):
        with pytest.raises(exc, match=r"fastops\.separable_conv_bn_act: ") as info:
            fn(**args)
        assert words in str(info.value)
    with pytest.raises(exc, match=r"fastops\.separable_conv_bn_act_backward: ") as info:
        separable.backward(torch.randn(2, 4, 5, 5), **args)
    assert words in str(info.value)


def test_backward_grad_out_shape_error():
    with pytest.raises(ValueError, match=r"fastops\.separable_conv_bn_act_backward: argument 'grad_out' must have shape"):
        separable.backward(torch.randn(2, 4, 4, 5), **_args())
