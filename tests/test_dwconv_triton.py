"""dwconv_bn_act's Triton kernels (fastops/triton/dwconv.py: forward, backward) against the
reference and its autograd, computed in float64: kernel sizes, strides, dilations, paddings,
channel multipliers, layouts, every activation, scale/shift given or None, float32 / bfloat16 /
float64 (and float16), and the argument checks.

On a machine without a GPU the kernels run under Triton's interpreter (tests/conftest.py), which
pays per program and per operation: the shapes are small, and picked to still span several
channel blocks and pixel tiles."""

import pytest
import torch

from fastops import reference
from fastops.triton import dwconv
from helpers import TRITON_DEVICE, check_close_to_f64, expects_channels_last, poisoned_memory, triton_input

ACTS = reference.ACTIVATIONS


def _run(N, C, m, H, W, k, stride, padding, dilation, act="silu", dtype=torch.float32, layout="contiguous",
         has_scale=True, has_shift=True, param_dtype=None, grad_layout="contiguous"):
    """Forward and backward of the kernel and of the reference (float64, autograd); compares
    values, dtypes, shapes and layouts of y, grad_x, grad_weight, grad_scale, grad_shift."""
    KH, KW = (k, k) if isinstance(k, int) else k
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    param_dtype = param_dtype or dtype
    OC = C * m
    x = triton_input((N, C, H, W), dtype, layout)
    weight = triton_input((OC, 1, KH, KW), dtype, scale=(KH * KW) ** -0.5)
    # u = z * scale + shift spreads over the activations' kinks (0, +-3, 6)
    scale = triton_input((OC,), param_dtype, scale=0.5, offset=1.0) if has_scale else None
    shift = triton_input((OC,), param_dtype, scale=2.0) if has_shift else None

    with poisoned_memory(x):
        y = dwconv.forward(x, weight, scale, shift, stride, padding, dilation, act)

    # the truth: float64 reference; absent scale/shift as ones/zeros so that their grads exist
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    s64 = (scale.double() if has_scale else torch.ones(OC, dtype=torch.float64, device=TRITON_DEVICE)).requires_grad_()
    b64 = (shift.double() if has_shift else torch.zeros(OC, dtype=torch.float64, device=TRITON_DEVICE)).requires_grad_()
    y64 = reference.dwconv_bn_act(x64, w64, s64, b64, stride, padding, dilation, act)

    assert y.shape == y64.shape and y.dtype == dtype and y.device == x.device
    fmt = torch.channels_last if expects_channels_last(layout) else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), (layout, y.stride())
    check_close_to_f64(y, y64, dtype)

    grad_out = triton_input(tuple(y.shape), dtype, grad_layout)
    expected = torch.autograd.grad(y64, (x64, w64, s64, b64), grad_out.double())
    with poisoned_memory(x):
        grads = dwconv.backward(grad_out, x, weight, scale, shift, stride, padding, dilation, act)
    gx, gw, gs, gb = grads
    assert gx.shape == x.shape and gx.dtype == dtype and gx.is_contiguous(memory_format=fmt)
    assert gw.shape == weight.shape and gw.dtype == weight.dtype and gw.is_contiguous()
    assert gs.shape == (OC,) and gs.dtype == (scale.dtype if has_scale else dtype)
    assert gb.shape == (OC,) and gb.dtype == (shift.dtype if has_shift else dtype)
    for name, actual, exp in zip(("grad_x", "grad_weight", "grad_scale", "grad_shift"), grads, expected):
        # a float32 parameter gradient is compared at float32's tolerance
        tol_dtype = actual.dtype if actual.dtype != torch.float16 else dtype
        try:
            check_close_to_f64(actual, exp, tol_dtype, reduced=True)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# (N, C, m, H, W, k, stride, padding, dilation, act, layout, has_scale, has_shift)
GEOMETRIES = [
    pytest.param(2, 3, 1, 9, 9, 3, 1, 1, 1, "relu", "contiguous", True, True, id="k3-s1-p1"),
    pytest.param(2, 3, 2, 9, 8, 3, 2, 1, 1, "relu6", "channels_last", True, True, id="k3-s2-m2-cl"),
    pytest.param(1, 4, 1, 11, 10, 5, 1, 2, 2, "hardswish", "strided", True, False, id="k5-d2-strided-scale_only"),
    pytest.param(2, 2, 2, 12, 9, 7, 2, 3, 1, "hardsigmoid", "permuted", False, True, id="k7-s2-m2-permuted-shift_only"),
    pytest.param(1, 3, 1, 7, 9, 1, 2, 1, 1, "sigmoid", "contiguous", False, False, id="k1-s2-p1(>k//2)-no_affine"),
    pytest.param(2, 3, 2, 8, 8, 4, 1, 1, 1, "silu", "channels_last", True, True, id="k4-p1(<k//2)-m2-cl"),
    pytest.param(1, 2, 1, 6, 7, 2, 2, 1, 2, "none", "cl_sliced", True, True, id="k2-s2-d2-cl_sliced"),
    pytest.param(1, 5, 1, 3, 3, 3, 1, 0, 1, "silu", "contiguous", True, True, id="1x1_output"),
    pytest.param(1, 3, 2, 5, 5, 3, 2, 0, 2, "hardswish", "channels_last", True, True, id="1x1_output-s2-d2-cl"),
    pytest.param(2, 3, 1, 9, 9, 3, 1, 3, 2, "relu6", "contiguous", True, True, id="k3-d2-p3(>k//2)"),
    pytest.param(1, 2, 2, 9, 10, 5, 2, 4, 2, "relu", "contiguous", True, True, id="k5-s2-d2-p4(>k//2)-m2"),
    pytest.param(1, 2, 1, 2, 3, 3, 1, 1, 1, "silu", "contiguous", True, True, id="kernel_wider_than_input"),
    pytest.param(1, 2, 3, 10, 11, (3, 5), (2, 1), (2, 0), (1, 2), "hardswish", "contiguous", True, True,
                 id="k3x5-s2x1-p2x0-d1x2-m3"),
    # several channel blocks and pixel tiles in both layouts
    pytest.param(1, 9, 1, 13, 11, 3, 1, 1, 1, "silu", "contiguous", True, True, id="multi_tile-nchw"),
    pytest.param(2, 20, 2, 5, 6, 3, 1, 1, 1, "silu", "channels_last", True, True, id="multi_tile-cl"),
    # channels_last with multiplier 1: the channels_last kernel (_forward_cl_kernel; the backward
    # is the generic one): channel blocks that divide C (24: 8) or leave a masked tail (20: 8),
    # several pixel tiles of a row (W 70 -> 64-pixel tiles), padding wider than the kernel
    pytest.param(2, 24, 1, 7, 9, 3, 1, 1, 1, "relu6", "channels_last", True, True, id="cl_kernel-k3-s1"),
    pytest.param(1, 20, 1, 9, 8, 5, 2, 1, 2, "hardswish", "channels_last", True, False,
                 id="cl_kernel-k5-s2-d2-p1-tail"),
    pytest.param(1, 16, 1, 3, 70, 3, 1, 4, 1, "silu", "channels_last", False, True, id="cl_kernel-p4-wide_row"),
    pytest.param(1, 8, 1, 10, 11, (3, 5), (3, 1), (2, 0), (1, 2), "relu", "channels_last", True, True,
                 id="cl_kernel-k3x5-s3x1-d1x2"),
    pytest.param(2, 8, 1, 3, 3, 3, 2, 0, 1, "sigmoid", "channels_last", True, True, id="cl_kernel-1x1_output"),
]


# float64 (the kernels' other code path) on the geometries that exercise the most index arithmetic
FLOAT64_GEOMETRIES = ("k7-s2-m2-permuted-shift_only", "k2-s2-d2-cl_sliced", "k3x5-s2x1-p2x0-d1x2-m3", "multi_tile-cl",
                      "cl_kernel-k5-s2-d2-p1-tail")
GEOMETRY_DTYPES = [pytest.param(g, torch.float32, id=f"{g.id}-float32") for g in GEOMETRIES] + [
    pytest.param(g, torch.float64, id=f"{g.id}-float64") for g in GEOMETRIES if g.id in FLOAT64_GEOMETRIES
]


@pytest.mark.parametrize("geometry, dtype", GEOMETRY_DTYPES)
def test_geometry(geometry, dtype):
    N, C, m, H, W, k, stride, padding, dilation, act, layout, has_scale, has_shift = geometry.values
    # the channels_last kernels' geometries with a channels_last grad_out: their backward too
    grad_layout = "channels_last" if geometry.id.startswith("cl_kernel") else "contiguous"
    _run(N, C, m, H, W, k, stride, padding, dilation, act, dtype, layout, has_scale, has_shift,
         grad_layout=grad_layout)


CL_KERNELS = ("_forward_cl_kernel", "_backward_gz_cl_kernel", "_grad_x_cl_kernel")


@pytest.mark.parametrize("layout, grad_layout, expected", (
    ("contiguous", "contiguous", ()), ("channels_last", "channels_last", CL_KERNELS),
    ("channels_last", "contiguous", CL_KERNELS[:1]), ("cl_sliced", "channels_last", ())))
def test_channels_last_kernels_taken(monkeypatch, layout, grad_layout, expected):
    """Dense channels_last input with multiplier 1 runs _forward_cl_kernel, and with a dense
    channels_last grad_out the channels_last backward kernels; other inputs the generic kernels;
    all against the reference."""
    launched = []

    class Spy:
        def __init__(self, name):
            self.name, self.real = name, getattr(dwconv, name)

        def __getitem__(self, grid):
            launched.append(self.name)
            return self.real[grid]

    for name in CL_KERNELS:
        monkeypatch.setattr(dwconv, name, Spy(name))
    _run(1, 12, 1, 6, 5, 3, 1, 1, 1, "relu6", torch.float32, layout, grad_layout=grad_layout)
    assert tuple(launched) == expected


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_activations(act, dtype):
    _run(2, 3, 2, 7, 6, 3, 1, 1, 1, act, dtype, "contiguous")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_channels_last_kernel_activations(act, dtype):
    _run(2, 16, 1, 5, 6, 3, 2, 1, 1, act, dtype, "channels_last", param_dtype=torch.float32,
         grad_layout="channels_last")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_float32_params_with_half_input(dtype, layout):
    """scale/shift in float32 while x is bfloat16/float16: their grads come back in float32."""
    _run(2, 3, 2, 7, 6, 3, 2, 1, 1, "hardswish", dtype, layout, param_dtype=torch.float32)


@pytest.mark.parametrize("grad_layout", ("channels_last", "strided"))
def test_grad_out_in_another_layout(grad_layout):
    _run(2, 3, 1, 6, 7, 3, 1, 1, 1, "silu", torch.float32, "contiguous", grad_layout=grad_layout)


@pytest.mark.parametrize("act", ("relu", "relu6", "hardswish", "hardsigmoid"))
def test_activation_kinks(act):
    """u exactly at the kinks (0, 6, -3, 3): derivatives as PyTorch's (relu'(0) = 0, ...)."""
    x = torch.tensor([-3.0, 0.0, 3.0, 6.0, -1.5, 4.5], dtype=torch.float64, device=TRITON_DEVICE).repeat(2, 2, 1, 1)
    w = torch.ones(4, 1, 1, 1, dtype=torch.float64, device=TRITON_DEVICE)  # 1x1, m = 2: z = x exactly
    y = dwconv.forward(x, w, None, None, (1, 1), (0, 0), (1, 1), act)
    x64, w64 = x.clone().requires_grad_(), w.clone().requires_grad_()
    y64 = reference.dwconv_bn_act(x64, w64, None, None, 1, 0, 1, act)
    torch.testing.assert_close(y, y64.detach())
    g = torch.rand_like(y64) + 0.5
    gx, gw, _, gb = dwconv.backward(g, x, w, None, None, (1, 1), (0, 0), (1, 1), act)
    egx, egw = torch.autograd.grad(y64, (x64, w64), g)
    torch.testing.assert_close(gx, egx)
    torch.testing.assert_close(gw, egw)


def test_empty_batch():
    x = torch.randn(0, 3, 5, 5, device=TRITON_DEVICE)
    w = torch.randn(6, 1, 3, 3, device=TRITON_DEVICE)
    y = dwconv.forward(x, w, None, None, (1, 1), (1, 1), (1, 1), "relu")
    assert y.shape == (0, 6, 5, 5)
    gx, gw, gs, gb = dwconv.backward(y, x, w, None, None, (1, 1), (1, 1), (1, 1), "relu")
    assert gx.shape == x.shape and gw.shape == w.shape and gs.shape == gb.shape == (6,)
    assert not gw.any() and not gs.any() and not gb.any()


def _args(**over):
    args = dict(
        x=torch.randn(2, 3, 5, 5), weight=torch.randn(6, 1, 3, 3), scale=torch.randn(6), shift=torch.randn(6),
        stride=(1, 1), padding=(1, 1), dilation=(1, 1), act="relu",
    )
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, words", [
    (dict(x=torch.randn(3, 5, 5)), ValueError, "'x' must be 4-D"),
    (dict(x=torch.randn(2, 3, 5, 5).to(torch.int32)), TypeError, "'x' must be a floating-point"),
    (dict(weight=torch.randn(6, 2, 3, 3)), ValueError, "'weight' must have shape"),
    (dict(weight=torch.randn(6, 3, 3)), ValueError, "'weight' must have shape"),
    (dict(weight=torch.randn(4, 1, 3, 3), scale=None, shift=None), ValueError, "not a multiple"),
    (dict(weight=torch.randn(6, 1, 3, 3, dtype=torch.float64)), TypeError, "'weight' has dtype"),
    (dict(stride=(0, 1)), ValueError, "'stride' must be >= 1"),
    (dict(dilation=(1, 0)), ValueError, "'dilation' must be >= 1"),
    (dict(padding=(-1, 0)), ValueError, "'padding' must be >= 0"),
    (dict(weight=torch.randn(6, 1, 9, 3), padding=(1, 1)), ValueError, "larger than the padded input"),
    (dict(dilation=(3, 1), padding=(0, 0)), ValueError, "larger than the padded input"),
    (dict(act="gelu"), ValueError, "'act' must be one of"),
    (dict(scale=torch.randn(3)), ValueError, "'scale' must have shape [6]"),
    (dict(shift=torch.randn(6, 1)), ValueError, "'shift' must have shape [6]"),
    (dict(scale=torch.ones(6, dtype=torch.int64)), TypeError, "'scale' must be a floating-point"),
])
def test_argument_errors(over, exc, words):
    args = _args(**over)
    with pytest.raises(exc, match="fastops.dwconv_bn_act") as info:
        dwconv.forward(**args)
    assert words in str(info.value)
    with pytest.raises(exc, match="fastops.dwconv_bn_act_backward"):
        dwconv.backward(torch.randn(2, 6, 5, 5), **args)


def test_backward_grad_out_shape_error():
    with pytest.raises(ValueError, match=r"fastops\.dwconv_bn_act_backward: argument 'grad_out' must have shape"):
        dwconv.backward(torch.randn(2, 6, 4, 5), **_args())
