"""pwconv_bn_act's Triton kernels (fastops/triton/pwconv.py: forward, backward) against the
reference and its autograd, computed in float64: every group count of a small channel count,
odd channel counts, shuffle_groups, residual (in other layouts too), scale/shift given or None,
N = 1, 1x1 planes, several pixel tiles / output-channel blocks / input-channel steps, layouts,
every activation, float32 / float64 / bfloat16 / float16, the custom ops' autograd, gradcheck
and opcheck, and the argument checks.

Kernels run under Triton's interpreter on a machine without a GPU (tests/conftest.py), where a
tl.dot is slow: the shapes are tiny, and the tile limits are lowered where a test needs several
blocks."""

import pytest
import torch

import fastops
from fastops import reference
from fastops.triton import pwconv
from helpers import TRITON_DEVICE, check_close_to_f64, expects_channels_last, poisoned_memory, triton_input

ACTS = reference.ACTIVATIONS


def _run(N, C, OC, H, W, groups=1, act="silu", dtype=torch.float32, layout="contiguous", has_scale=True,
         has_shift=True, has_res=False, shuffle_groups=1, param_dtype=None, res_layout=None,
         grad_layout="contiguous"):
    """Forward and backward launchers against the float64 reference and its autograd: values,
    dtypes, shapes and layouts of y and of the five gradients."""
    param_dtype = param_dtype or dtype
    Cg = C // groups
    x = triton_input((N, C, H, W), dtype, layout)
    weight = triton_input((OC, Cg, 1, 1), dtype, scale=Cg ** -0.5)
    # u = z * scale + shift (+ residual) spreads over the activations' kinks (0, +-3, 6)
    scale = triton_input((OC,), param_dtype, scale=0.5, offset=1.5) if has_scale else None
    shift = triton_input((OC,), param_dtype, scale=2.0) if has_shift else None
    residual = triton_input((N, OC, H, W), dtype, res_layout or layout) if has_res else None

    with poisoned_memory(x):
        y = pwconv.forward(x, weight, scale, shift, groups, act, residual, shuffle_groups)

    # the truth: float64 reference; absent scale/shift/residual as ones/zeros so their grads exist
    d64 = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    leaves = [d64(x), d64(weight),
              d64(scale) if has_scale else torch.ones(OC, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True),
              d64(shift) if has_shift else torch.zeros(OC, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True),
              d64(residual) if has_res else torch.zeros(N, OC, H, W, dtype=torch.float64, device=TRITON_DEVICE,
                                                        requires_grad=True)]
    y64 = reference.pwconv_bn_act(*leaves[:4], groups, act, leaves[4], shuffle_groups)

    fmt = torch.channels_last if expects_channels_last(layout) else torch.contiguous_format
    assert y.shape == (N, OC, H, W) and y.dtype == dtype and y.is_contiguous(memory_format=fmt), (layout, y.stride())
    check_close_to_f64(y, y64.detach(), dtype)

    grad_out = triton_input((N, OC, H, W), dtype, grad_layout)
    expected = torch.autograd.grad(y64, leaves, grad_out.double())
    with poisoned_memory(x):
        grads = pwconv.backward(grad_out, x, weight, scale, shift, groups, act, residual, shuffle_groups)
    gx, gw, gs, gb, gr = grads
    assert gx.shape == x.shape and gx.dtype == dtype and gx.is_contiguous(memory_format=fmt)
    assert gw.shape == weight.shape and gw.dtype == dtype and gw.is_contiguous()
    assert gs.shape == gb.shape == (OC,)
    assert gs.dtype == (param_dtype if has_scale else dtype) and gb.dtype == (param_dtype if has_shift else dtype)
    if has_res:
        assert gr.shape == y.shape and gr.dtype == dtype and gr.is_contiguous(memory_format=fmt)
    else:  # without a residual nothing is computed for it
        assert gr.shape == (0,) and gr.dtype == dtype
    names = ("grad_x", "grad_weight", "grad_scale", "grad_shift") + (("grad_residual",) if has_res else ())
    for name, actual, exp in zip(names, grads, expected):
        try:
            check_close_to_f64(actual, exp, actual.dtype, reduced=name != "grad_residual")
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# (N, C, OC, H, W, groups, act, layout, has_scale, has_shift, has_res, shuffle_groups)
GEOMETRIES = [
    pytest.param(2, 6, 8, 3, 5, 1, "relu", "contiguous", True, True, False, 1, id="small"),
    pytest.param(2, 5, 7, 3, 3, 1, "silu", "channels_last", True, True, True, 1, id="C5-OC7-cl-residual"),
    pytest.param(1, 9, 6, 4, 3, 3, "hardswish", "strided", True, False, True, 2, id="g3-shuffle2-strided"),
    pytest.param(3, 12, 12, 1, 1, 4, "relu6", "channels_last", False, True, False, 3, id="HW1-g4-shuffle3-cl"),
    pytest.param(1, 3, 5, 2, 3, 1, "sigmoid", "permuted", False, False, True, 5, id="N1-shuffle5-permuted"),
    pytest.param(2, 4, 6, 3, 2, 2, "none", "offset", True, True, True, 1, id="g2-offset-residual"),
    pytest.param(3, 6, 6, 2, 3, 6, "hardsigmoid", "expanded", True, True, False, 2, id="depthwise_g6-expanded"),
    pytest.param(2, 4, 4, 3, 4, 2, "silu", "cl_sliced", True, True, True, 4, id="g2-shuffle4-cl_sliced"),
    pytest.param(1, 1, 1, 2, 2, 1, "relu", "contiguous", True, True, True, 1, id="C1-OC1"),
]
FLOAT64_GEOMETRIES = ("g3-shuffle2-strided", "HW1-g4-shuffle3-cl", "g2-shuffle4-cl_sliced")
GEOMETRY_DTYPES = [pytest.param(g, torch.float32, id=f"{g.id}-float32") for g in GEOMETRIES] + [
    pytest.param(g, torch.float64, id=f"{g.id}-float64") for g in GEOMETRIES if g.id in FLOAT64_GEOMETRIES
]


@pytest.mark.parametrize("geometry, dtype", GEOMETRY_DTYPES)
def test_geometry(geometry, dtype):
    N, C, OC, H, W, groups, act, layout, has_scale, has_shift, has_res, shuffle_groups = geometry.values
    _run(N, C, OC, H, W, groups, act, dtype, layout, has_scale, has_shift, has_res, shuffle_groups)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("groups", (1, 2, 3, 6))
def test_every_group_count(groups, layout):
    """Every group count that divides C = 6 (OC = 12), with a shuffle across the groups."""
    _run(2, 6, 12, 2, 3, groups, "relu", torch.float32, layout, has_res=True, shuffle_groups=groups)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_multi_block(monkeypatch, layout):
    """Several pixel tiles (crossing images), output-channel blocks per group and input-channel
    steps per dot loop, each with a ragged last one: 16-wide channel blocks, 16-pixel tiles."""
    monkeypatch.setattr(pwconv, "BLOCK_P", 16)
    monkeypatch.setattr(pwconv, "MAX_BLOCK_O", 16)
    monkeypatch.setattr(pwconv, "MAX_BLOCK_K", 16)
    # Cg = 20 (two input steps), OCg = 18 (two output blocks), 2 * 3 * 5 = 30 pixels (two tiles)
    plan = pwconv._Plan(torch.empty(2, 40, 3, 5), torch.empty(36, 20, 1, 1), 2, 3, torch.contiguous_format)
    assert plan.grid == (2, 2, 2) and plan.block_k == 16
    _run(2, 40, 36, 3, 5, 2, "hardswish", torch.float32, layout, has_res=True, shuffle_groups=3)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_activations(act, dtype):
    _run(2, 5, 6, 3, 3, 1, act, dtype, "contiguous", has_res=True, shuffle_groups=2)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_half_input(dtype, layout):
    _run(2, 8, 12, 4, 5, 2, "hardswish", dtype, layout, has_res=True, shuffle_groups=3)


@pytest.mark.parametrize("dtype, param_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                               (torch.float64, torch.float32)], ids=str)
def test_parameter_dtypes(dtype, param_dtype):
    """scale/shift in another dtype than x: used as float32 (float64 for float64 x); their grads
    come back in their own dtype."""
    _run(2, 4, 6, 3, 4, 2, "silu", dtype, "channels_last", param_dtype=param_dtype)


@pytest.mark.parametrize("layout, res_layout, grad_layout", [
    ("contiguous", "channels_last", "strided"),
    ("channels_last", "contiguous", "expanded"),
    ("channels_last", "strided", "contiguous"),
])
def test_operands_in_other_layouts(layout, res_layout, grad_layout):
    """residual and grad_out in other layouts than x: read in place or copied; the outputs keep x's."""
    _run(2, 4, 6, 3, 4, 2, "relu6", torch.float32, layout, has_res=True, shuffle_groups=2, res_layout=res_layout,
         grad_layout=grad_layout)


def test_shuffle_is_channel_shuffle():
    """shuffle_groups writes exactly channel_shuffle of the unshuffled result (bit for bit)."""
    x = triton_input((2, 6, 3, 4), torch.float32, "channels_last")
    w = triton_input((12, 2, 1, 1), torch.float32)
    plain = pwconv.forward(x, w, None, None, 3, "relu", None, 1)
    for sg in (2, 3, 4, 6, 12):
        shuffled = pwconv.forward(x, w, None, None, 3, "relu", None, sg)
        assert torch.equal(shuffled, reference.channel_shuffle(plain, sg))


@pytest.mark.parametrize("act", ("none", "hardswish"))
def test_backward_no_residual_gives_empty_grad_residual(act):
    x = triton_input((2, 8, 5, 6), torch.float32, "contiguous")
    w = triton_input((6, 8, 1, 1), torch.float32, scale=8 ** -0.5)
    sc, sh = triton_input((6,), torch.float32, offset=1.0), triton_input((6,), torch.float32)
    g = triton_input((2, 6, 5, 6), torch.float32, "contiguous")
    got = pwconv.backward(g, x, w, sc, sh, 1, act, None, 1)
    want = reference.pwconv_bn_act_backward(g.double(), x.double(), w.double(), sc.double(), sh.double(), 1, act,
                                            None, 1)
    assert got[4].shape == (0,) and want[4].shape == (0,)
    for a, b in zip(got[:4], want[:4]):
        check_close_to_f64(a, b, torch.float32, reduced=True)


def test_empty_batch():
    x = torch.randn(0, 4, 3, 3, device=TRITON_DEVICE)
    w = torch.randn(6, 2, 1, 1, device=TRITON_DEVICE)
    y = pwconv.forward(x, w, None, None, 2, "relu", None, 3)
    assert y.shape == (0, 6, 3, 3)
    gx, gw, gs, gb, gr = pwconv.backward(y, x, w, None, None, 2, "relu", None, 3)
    assert gx.shape == x.shape and gw.shape == w.shape and gs.shape == gb.shape == (6,) and gr.shape == (0,)
    assert not gw.any() and not gs.any() and not gb.any()


# ------------------------------------------------------------------------------- custom ops


@pytest.mark.parametrize("case", [
    pytest.param((2, 6, 8, 3, 4, 2, "silu", torch.float32, "contiguous", True, True, True, 2), id="float32-all"),
    pytest.param((2, 5, 7, 2, 3, 1, "relu6", torch.float32, "channels_last", False, True, False, 1), id="cl-shift_only"),
    pytest.param((1, 4, 6, 3, 3, 2, "hardswish", torch.bfloat16, "channels_last", True, False, True, 3),
                 id="bf16-scale_only-residual"),
])
def test_autograd(case):
    """fastops.triton.pwconv_bn_act (the custom op, autograd through its backward op) against
    autograd through the reference in float64; None arguments get no gradient."""
    N, C, OC, H, W, groups, act, dtype, layout, has_scale, has_shift, has_res, sg = case
    x = triton_input((N, C, H, W), dtype, layout).requires_grad_()
    w = triton_input((OC, C // groups, 1, 1), dtype, scale=(C // groups) ** -0.5).requires_grad_()
    scale = triton_input((OC,), dtype, scale=0.5, offset=1.5).requires_grad_() if has_scale else None
    shift = triton_input((OC,), dtype, scale=2.0).requires_grad_() if has_shift else None
    res = triton_input((N, OC, H, W), dtype).requires_grad_() if has_res else None
    args = [x, w, scale, shift, res]
    y = fastops.triton.pwconv_bn_act(x, w, scale, shift, groups, act, res, sg)
    a64 = [None if t is None else t.detach().double().requires_grad_() for t in args]
    y64 = reference.pwconv_bn_act(*a64[:4], groups, act, a64[4], sg)
    check_close_to_f64(y, y64.detach(), dtype)
    g = triton_input(tuple(y.shape), dtype)
    leaves = [t for t in args if t is not None]
    expected = torch.autograd.grad(y64, [t for t in a64 if t is not None], g.double())
    for leaf, actual, exp in zip(leaves, torch.autograd.grad(y, leaves, g), expected):
        assert actual.dtype == leaf.dtype and actual.shape == leaf.shape
        check_close_to_f64(actual, exp, dtype, reduced=True)


@pytest.mark.parametrize("act, groups, sg", [("silu", 2, 2), ("none", 1, 1)])
def test_gradcheck(act, groups, sg):
    f64 = dict(dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    x = torch.randn(2, 4, 2, 2, **f64)
    w = torch.randn(6, 4 // groups, 1, 1, **f64)
    scale, shift, res = torch.randn(6, **f64), torch.randn(6, **f64), torch.randn(2, 6, 2, 2, **f64)
    f = lambda x, w, s, b, r: fastops.triton.pwconv_bn_act(x, w, s, b, groups, act, r, sg)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, scale, shift, res), fast_mode=True)


def test_opcheck():
    ops = fastops.triton.ops
    req = lambda t: None if t is None else t.detach().clone().requires_grad_()  # noqa: E731
    for layout, affine, res, groups, sg in (("contiguous", True, True, 2, 3), ("channels_last", False, False, 1, 1),
                                            ("strided", True, False, 3, 2)):
        x = triton_input((2, 6, 3, 2), torch.float32, layout)
        w = triton_input((6, 6 // groups, 1, 1), torch.float32)
        scale, shift = (triton_input((6,), torch.float32), triton_input((6,), torch.float32)) if affine else (None, None)
        r = triton_input((2, 6, 3, 2), torch.float32) if res else None
        torch.library.opcheck(ops.pwconv_bn_act.default, (req(x), req(w), req(scale), req(shift), groups, "silu", req(r), sg))
        g = triton_input((2, 6, 3, 2), torch.float32)
        torch.library.opcheck(ops.pwconv_bn_act_backward.default, (g, x, w, scale, shift, groups, "hardswish", r, sg))


# ------------------------------------------------------------------------------- argument errors


def _args(**over):
    args = dict(x=torch.randn(2, 6, 3, 3), weight=torch.randn(8, 3, 1, 1), scale=torch.randn(8), shift=torch.randn(8),
                groups=2, act="relu", residual=torch.randn(2, 8, 3, 3), shuffle_groups=2)
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, words", [
    (dict(x=torch.randn(6, 3, 3)), ValueError, "argument 'x' must be 4-D"),
    (dict(x=torch.ones(2, 6, 3, 3, dtype=torch.int32)), TypeError, "argument 'x' must be a floating-point"),
    (dict(groups=4), ValueError, "argument 'groups' (4) does not divide the 6 channels of 'x'"),
    (dict(groups=0), ValueError, "argument 'groups' must be an int >= 1"),
    (dict(weight=torch.randn(8, 2, 1, 1), groups=3), ValueError,
     "argument 'groups' (3) does not divide the 8 output channels of 'weight'"),
    (dict(weight=torch.randn(8, 6, 1, 1)), ValueError, "argument 'weight' must have shape [OC, 3, 1, 1]"),
    (dict(weight=torch.randn(8, 3, 3, 3)), ValueError, "argument 'weight' must have shape [OC, 3, 1, 1]"),
    (dict(weight=torch.randn(8, 3)), ValueError, "argument 'weight' must have shape [OC, 3, 1, 1]"),
    (dict(weight=torch.randn(8, 3, 1, 1, dtype=torch.float64)), TypeError, "argument 'weight' has dtype"),
    (dict(scale=torch.randn(6)), ValueError, "argument 'scale' must have shape [8]"),
    (dict(shift=torch.randn(8, 1)), ValueError, "argument 'shift' must have shape [8]"),
    (dict(residual=torch.randn(2, 6, 3, 3)), ValueError, "argument 'residual' must have shape [2, 8, 3, 3]"),
    (dict(residual=torch.randn(2, 8, 3, 3, dtype=torch.float64)), TypeError, "argument 'residual' has dtype"),
    (dict(shuffle_groups=3), ValueError, "argument 'shuffle_groups' (3) does not divide the 8 output channels"),
    (dict(shuffle_groups=0), ValueError, "argument 'shuffle_groups' must be an int >= 1"),
    (dict(act="gelu"), ValueError, "argument 'act' must be one of"),
])
def test_argument_errors(over, exc, words):
    args = _args(**over)
    for fn in (fastops.triton.pwconv_bn_act, pwconv.forward):
        with pytest.raises(exc, match=r"fastops\.pwconv_bn_act: ") as info:
            fn(**args)
        assert words in str(info.value)
    with pytest.raises(exc, match=r"fastops\.pwconv_bn_act_backward: ") as info:
        pwconv.backward(torch.randn(2, 8, 3, 3), **args)
    assert words in str(info.value)


def test_backward_grad_out_shape_error():
    with pytest.raises(ValueError, match=r"fastops\.pwconv_bn_act_backward: argument 'grad_out' must have shape"):
        pwconv.backward(torch.randn(2, 6, 3, 3), **_args())
