"""channel_shuffle / concat_shuffle / concat_shuffle_backward's Triton kernel
(fastops/triton/shuffle.py) against the reference: every group count of small channel counts,
odd channel counts, N = 1, 1x1 planes, planes and channel counts spanning several tiles, every
input layout, float32 / float64 / bfloat16 / float16, the custom ops' autograd, gradcheck and
opcheck, and the argument checks.

A shuffle copies values, so results are compared bit-exactly with the float64 reference.
Kernels run under Triton's interpreter on a machine without a GPU (tests/conftest.py)."""

import pytest
import torch

import fastops
from fastops import reference
from fastops.triton import shuffle
from helpers import make_layout, poisoned_memory

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INPUT_LAYOUTS = ("contiguous", "channels_last", "strided", "permuted", "offset", "expanded", "cl_sliced")


def _make(shape, dtype=torch.float32, layout="contiguous"):
    return make_layout((torch.randn(shape, device=DEVICE) * 3).to(dtype), layout)


def _fmt(t):
    return fastops._layout.conv_output_format(t)


def _check_exact(actual, expected64, dtype, fmt):
    """actual (kernel) equals the float64 truth bit for bit, in dtype and layout fmt."""
    assert actual.dtype == dtype and actual.shape == expected64.shape
    assert actual.is_contiguous(memory_format=fmt), actual.stride()
    assert torch.equal(actual.double(), expected64)


def _divisors(c):
    return [g for g in range(1, c + 1) if c % g == 0]


# (N, C, H, W): odd and even channel counts, N = 1, 1x1 planes, and tiles that do not divide
# the plane (NCHW: 256 pixels a tile) or the channels (channels_last: 64 channels a tile)
SHAPES = [(2, 6, 3, 5), (1, 9, 4, 3), (3, 12, 1, 1), (1, 1, 2, 3), (2, 15, 1, 4), (1, 4, 17, 19), (2, 70, 2, 3)]


@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_channel_shuffle(shape, layout):
    """Every group count that divides C, in every input layout."""
    x = _make(shape, layout=layout)
    for groups in _divisors(shape[1]):
        with poisoned_memory(x):
            y = shuffle.channel_shuffle(x, groups)
        _check_exact(y, reference.channel_shuffle(x.double(), groups), x.dtype, _fmt(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_dtypes(dtype, layout):
    x = _make((2, 6, 5, 4), dtype, layout)
    a = _make((2, 3, 5, 4), dtype, layout)
    b = _make((2, 7, 5, 4), dtype)
    for groups in (2, 3):
        with poisoned_memory(x):
            y = shuffle.channel_shuffle(x, groups)
        _check_exact(y, reference.channel_shuffle(x.double(), groups), dtype, _fmt(x))
    with poisoned_memory(x):
        y = shuffle.concat_shuffle(a, b)
    _check_exact(y, reference.concat_shuffle(a.double(), b.double()), dtype, _fmt(a))
    with poisoned_memory(x):
        ga, gb = shuffle.concat_shuffle_backward(y, 3)
    ea, eb = reference.concat_shuffle_backward(y.double(), 3)
    _check_exact(ga, ea, dtype, _fmt(y))
    _check_exact(gb, eb, dtype, _fmt(y))
    assert torch.equal(ga, a) and torch.equal(gb, b)  # the backward undoes the forward


def test_permutation():
    """The channel map itself, on channel-numbered data (not only equality with the reference):
    output channel o holds input channel (o % G) * (C / G) + o // G."""
    C, G = 12, 3
    x = torch.arange(C, dtype=torch.float32, device=DEVICE).view(1, C, 1, 1).expand(2, C, 2, 3).contiguous()
    y = shuffle.channel_shuffle(x, G)
    expected = [(o % G) * (C // G) + o // G for o in range(C)]
    assert y[:, :, 1, 2].tolist() == [expected, expected]
    assert y[0, :, 0, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


# (Ca, Cb, layout of a, layout of b): unequal and odd halves, one side empty, mixed layouts
CONCAT_CASES = [
    (3, 5, "contiguous", "contiguous"),
    (4, 4, "channels_last", "channels_last"),
    (5, 1, "channels_last", "contiguous"),
    (1, 7, "strided", "channels_last"),
    (6, 2, "permuted", "offset"),
    (2, 6, "expanded", "strided"),
    (0, 4, "contiguous", "contiguous"),
    (4, 0, "channels_last", "contiguous"),
    (33, 37, "channels_last", "permuted"),
]


@pytest.mark.parametrize("case", CONCAT_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 1), (2, 17, 16)], ids=lambda s: "x".join(map(str, s)))
def test_concat_shuffle(case, shape):
    Ca, Cb, la, lb = case
    N, H, W = shape
    a = _make((N, Ca, H, W), layout=la)
    b = _make((N, Cb, H, W), layout=lb)
    with poisoned_memory(a):
        y = shuffle.concat_shuffle(a, b)
    _check_exact(y, reference.concat_shuffle(a.double(), b.double()), a.dtype, _fmt(a))


@pytest.mark.parametrize("split", (0, 1, 3, 5, 8))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "strided", "expanded", "cl_sliced"))
def test_concat_shuffle_backward(split, layout):
    g = _make((2, 8, 3, 4), layout=layout)
    with poisoned_memory(g):
        ga, gb = shuffle.concat_shuffle_backward(g, split)
    ea, eb = reference.concat_shuffle_backward(g.double(), split)
    _check_exact(ga, ea, g.dtype, _fmt(g))
    _check_exact(gb, eb, g.dtype, _fmt(g))


def test_empty_batch():
    x = torch.randn(0, 4, 3, 3, device=DEVICE)
    assert shuffle.channel_shuffle(x, 2).shape == x.shape
    assert shuffle.concat_shuffle(x, x).shape == (0, 8, 3, 3)
    ga, gb = shuffle.concat_shuffle_backward(x, 1)
    assert ga.shape == (0, 1, 3, 3) and gb.shape == (0, 3, 3, 3)


# ------------------------------------------------------------------------------- custom ops


@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "strided"))
def test_autograd(layout):
    """fastops.triton.channel_shuffle / concat_shuffle (custom ops, autograd through the
    registered backward) against autograd through the reference."""
    x = _make((2, 6, 3, 4), layout=layout).requires_grad_()
    a = _make((2, 5, 3, 4), layout=layout).requires_grad_()
    b = _make((2, 3, 3, 4)).requires_grad_()
    for groups in (2, 3):
        g = _make((2, 6, 3, 4))
        y = fastops.triton.channel_shuffle(x, groups)
        (gx,) = torch.autograd.grad(y, x, g)
        x64 = x.detach().double().requires_grad_()
        (ex,) = torch.autograd.grad(reference.channel_shuffle(x64, groups), x64, g.double())
        _check_exact(gx, ex, x.dtype, _fmt(g))
    g = _make((2, 8, 3, 4))
    y = fastops.triton.concat_shuffle(a, b)
    _check_exact(y.detach(), reference.concat_shuffle(a.double(), b.double()).detach(), a.dtype, _fmt(a))
    ga, gb = torch.autograd.grad(y, (a, b), g)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ea, eb = torch.autograd.grad(reference.concat_shuffle(a64, b64), (a64, b64), g.double())
    _check_exact(ga, ea, a.dtype, _fmt(g))
    _check_exact(gb, eb, a.dtype, _fmt(g))


def test_gradcheck():
    x = torch.randn(2, 6, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    a = torch.randn(1, 3, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(1, 5, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fastops.triton.channel_shuffle(t, 3), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(fastops.triton.concat_shuffle, (a, b), fast_mode=True)
    # concat_shuffle_backward is differentiable too (double backward)
    assert torch.autograd.gradgradcheck(fastops.triton.concat_shuffle, (a, b), fast_mode=True)
    g = torch.randn(1, 8, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fastops.triton.ops.concat_shuffle_backward(t, 3), (g,), fast_mode=True)


@pytest.mark.parametrize("op", ("channel_shuffle", "concat_shuffle", "concat_shuffle_backward"))
def test_opcheck(op):
    ops = fastops.triton.ops
    req = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    for layout in ("contiguous", "channels_last", "strided"):
        x = _make((2, 6, 3, 4), layout=layout)
        if op == "channel_shuffle":
            torch.library.opcheck(ops.channel_shuffle.default, (req(x), 3))
            torch.library.opcheck(ops.channel_shuffle.default, (req(_make((1, 5, 1, 1), layout=layout)), 5))
        elif op == "concat_shuffle":
            torch.library.opcheck(ops.concat_shuffle.default, (req(x), req(_make((2, 4, 3, 4)))))
        else:
            torch.library.opcheck(ops.concat_shuffle_backward.default, (x, 1))


# ------------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("x, groups, exc, words", [
    (torch.randn(2, 6, 3, 3), 4, ValueError, "argument 'groups' (4) does not divide the 6 channels of 'x'"),
    (torch.randn(2, 6, 3, 3), 0, ValueError, "argument 'groups' must be an int >= 1"),
    (torch.randn(6, 3, 3), 2, ValueError, "argument 'x' must be 4-D"),
    (torch.ones(2, 6, 3, 3, dtype=torch.int32), 2, TypeError, "argument 'x' must be a floating-point"),
])
def test_channel_shuffle_errors(x, groups, exc, words):
    for fn in (fastops.triton.channel_shuffle, shuffle.channel_shuffle):
        with pytest.raises(exc, match=r"fastops\.channel_shuffle: ") as info:
            fn(x, groups)
        assert words in str(info.value)


@pytest.mark.parametrize("a, b, exc, words", [
    (torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4), ValueError, "(3 + 4) must be even"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5), ValueError, "arguments 'a' and 'b' must agree in N, H and W"),
    (torch.randn(2, 3, 4, 4), torch.randn(1, 3, 4, 4), ValueError, "arguments 'a' and 'b' must agree in N, H and W"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4, dtype=torch.float64), TypeError, "argument 'b' has dtype"),
    (torch.randn(2, 3, 4), torch.randn(2, 3, 4, 4), ValueError, "argument 'a' must be 4-D"),
])
def test_concat_shuffle_errors(a, b, exc, words):
    for fn in (fastops.triton.concat_shuffle, shuffle.concat_shuffle):
        with pytest.raises(exc, match=r"fastops\.concat_shuffle: ") as info:
            fn(a, b)
        assert words in str(info.value)


@pytest.mark.parametrize("g, split, words", [
    (torch.randn(2, 5, 3, 3), 2, "argument 'grad_out' must have an even number of channels"),
    (torch.randn(2, 6, 3, 3), 7, "argument 'split' must be in [0, 6]"),
    (torch.randn(2, 6, 3, 3), -1, "argument 'split' must be in [0, 6]"),
])
def test_concat_shuffle_backward_errors(g, split, words):
    with pytest.raises(ValueError, match=r"fastops\.concat_shuffle_backward: ") as info:
        shuffle.concat_shuffle_backward(g, split)
    assert words in str(info.value)
