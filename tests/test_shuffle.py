"""channel_shuffle and concat_shuffle through fastops.ops (C++ CPU kernels; CUDA kernels where a
GPU is present): exact equality with the reference (a shuffle only moves values) over every
group count that divides, both layouts and non-contiguous inputs, all dtypes; gradients,
gradcheck, opcheck, compile, the module, and the argument errors. The Triton kernels have their
own sweep in test_shuffle_triton.py."""

import pytest
import torch
from torch import nn

import fastops
from fastops import reference
from helpers import make_layout, poisoned_memory, randn

LAYOUTS = ("contiguous", "channels_last", "strided", "permuted", "cl_sliced", "channel_slice", "cl_channel_slice")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _divisors(c):
    return [g for g in range(1, c + 1) if c % g == 0]


def _expected_format(x):
    return fastops._layout.conv_output_format(x)


@pytest.mark.parametrize("c", (1, 6, 24, 58, 30, 102))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_shuffle_every_group_count(device, c, layout):
    x = make_layout(randn((2, c, 5, 7), device=device), layout)
    for g in _divisors(c):
        with poisoned_memory(x):
            y = fastops.ops.channel_shuffle(x, g)
        assert y.is_contiguous(memory_format=_expected_format(x))
        assert torch.equal(y, reference.channel_shuffle(x, g)), g
        assert torch.equal(y, nn.ChannelShuffle(g)(x.contiguous())), g


def test_width_one_channels_last_view_gives_channels_last(device):
    """A channel slice of a channels_last map of width 1 made by unsqueeze: the width's stride is
    1 there, as the channels' is (a size-1 dimension's stride is arbitrary). It counts as
    channels_last, as its other strides say, and the outputs are channels_last."""
    x = randn((2, 7, 24), device=device).permute(0, 2, 1)[:, :12].unsqueeze(3)  # [2, 12, 7, 1]
    assert x.stride() == (168, 1, 24, 1) and not x.is_contiguous(memory_format=torch.channels_last)
    assert fastops._layout.conv_output_format(x) == torch.channels_last
    cl = torch.channels_last
    y = fastops.ops.channel_shuffle(x, 3)
    assert y.is_contiguous(memory_format=cl) and torch.equal(y, reference.channel_shuffle(x, 3))
    y = fastops.ops.concat_shuffle(x, x * 2)
    assert y.is_contiguous(memory_format=cl) and torch.equal(y, reference.concat_shuffle(x, x * 2))
    w = randn((12, 1, 3, 1), device=device)
    y = fastops.ops.dwconv_bn_act(x, w, None, None, 1, (1, 0), 1, "relu")
    assert y.is_contiguous(memory_format=cl)
    torch.testing.assert_close(y, reference.dwconv_bn_act(x, w, None, None, 1, (1, 0), 1, "relu"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ((1, 4, 1, 1), (3, 24, 7, 9), (1, 232, 14, 14)))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_channel_shuffle_dtypes_and_shapes(device, dtype, shape, layout):
    x = make_layout(randn(shape, dtype, device), layout)
    for g in (2, 4):
        y = fastops.ops.channel_shuffle(x, g)
        assert y.dtype == dtype and torch.equal(y, reference.channel_shuffle(x, g))


@pytest.mark.parametrize("ca,cb", ((4, 4), (58, 58), (3, 5), (7, 1), (0, 6), (1, 1)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_concat_shuffle(device, ca, cb, layout):
    a = make_layout(randn((2, ca, 6, 5), device=device), layout)
    b = make_layout(randn((2, cb, 6, 5), device=device), "contiguous" if layout == "strided" else layout)
    with poisoned_memory(a):
        y = fastops.ops.concat_shuffle(a, b)
    assert y.is_contiguous(memory_format=_expected_format(a))
    assert torch.equal(y, reference.concat_shuffle(a, b))
    assert torch.equal(y, reference.channel_shuffle(torch.cat([a, b], 1), 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ("channel_slice", "cl_channel_slice"))
def test_concat_shuffle_of_a_split(device, dtype, layout):
    """ShuffleNet V2's unit: x.chunk(2, 1), the second half through a branch, then
    concat_shuffle(first half, branch output). The first half is a channel slice of x (read in
    place by the CPU kernel, with its own pixel / image stride) and the other a dense tensor; also
    both halves slices of one tensor, and a slice at a storage offset of one element."""
    fmt = torch.channels_last if layout == "cl_channel_slice" else torch.contiguous_format
    for shape in ((2, 24, 5, 7), (1, 58, 1, 3), (3, 2, 4, 1)):
        x = randn(shape, dtype, device).contiguous(memory_format=fmt)
        x1, x2 = x.chunk(2, dim=1)
        b = (x2 * 2).contiguous(memory_format=fmt)
        for a, bb in ((x1, b), (x1, x2), (x2, x1), (make_layout(x1.contiguous(), layout), b)):
            with poisoned_memory(x):
                y = fastops.ops.concat_shuffle(a, bb)
            assert y.is_contiguous(memory_format=fmt)
            assert torch.equal(y, reference.concat_shuffle(a, bb))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_concat_shuffle_dtypes(device, dtype):
    a, b = randn((3, 10, 4, 4), dtype, device), randn((3, 10, 4, 4), dtype, device)
    for layout in ("contiguous", "channels_last"):
        a, b = make_layout(a, layout), make_layout(b, layout)
        assert torch.equal(fastops.ops.concat_shuffle(a, b), reference.concat_shuffle(a, b))


@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "permuted", "cl_channel_slice"))
def test_gradients(device, layout):
    x = make_layout(randn((2, 12, 5, 3), device=device), layout).requires_grad_()
    g = randn((2, 12, 5, 3), device=device)
    for groups in (2, 3, 4):
        (gx,) = torch.autograd.grad(fastops.ops.channel_shuffle(x, groups), x, g)
        (ex,) = torch.autograd.grad(reference.channel_shuffle(x, groups), x, g)
        assert torch.equal(gx, ex)
    for ca in (6, 4):
        a = make_layout(randn((2, ca, 5, 3), device=device), layout).requires_grad_()
        b = make_layout(randn((2, 12 - ca, 5, 3), device=device), layout).requires_grad_()
        got = torch.autograd.grad(fastops.ops.concat_shuffle(a, b), (a, b), g)
        want = torch.autograd.grad(reference.concat_shuffle(a, b), (a, b), g)
        for u, v in zip(got, want):
            assert torch.equal(u, v)


def test_gradcheck(device):
    x = randn((2, 6, 3, 2), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fastops.ops.channel_shuffle(t, 3), (x,))
    a = randn((1, 4, 2, 3), torch.float64, device).requires_grad_()
    b = randn((1, 4, 2, 3), torch.float64, device).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(fastops.ops.concat_shuffle, (a, b))
    assert torch.autograd.gradgradcheck(fastops.ops.concat_shuffle, (a, b))


def _opcheck_cases(device):
    ns = torch.ops.fastops
    x = randn((2, 6, 3, 5), device=device)
    cl = x.to(memory_format=torch.channels_last)
    a, b = randn((2, 4, 3, 3), device=device), randn((2, 4, 3, 3), device=device)
    return [
        (ns.channel_shuffle.default, (x.requires_grad_(), 3)),
        (ns.channel_shuffle.default, (cl, 2)),
        (ns.concat_shuffle.default, (a.requires_grad_(), b.requires_grad_())),
        (ns.concat_shuffle.default, (a.to(memory_format=torch.channels_last), randn((2, 2, 3, 3), device=device))),
        (ns.concat_shuffle_backward.default, (randn((2, 8, 3, 3), device=device), 4)),
        (ns.concat_shuffle_backward.default, (randn((2, 8, 3, 3), device=device).to(memory_format=torch.channels_last), 3)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck(device, case):
    op, args = _opcheck_cases(device)[case]
    torch.library.opcheck(op, args)


def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def f(x, a):
        return fastops.ops.concat_shuffle(fastops.ops.channel_shuffle(x, 3), a).sum(dim=1)

    x = randn((2, 6, 4, 4), device=device).to(memory_format=torch.channels_last).requires_grad_()
    a = randn((2, 6, 4, 4), device=device).to(memory_format=torch.channels_last)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(x, a)
    torch.testing.assert_close(y, f(x, a))
    g = randn(y.shape, device=device)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(f(x, a), x, g)[0])


def test_module(device):
    m = fastops.nn.ChannelShuffle(3)
    assert isinstance(m, nn.ChannelShuffle) and repr(m) == repr(nn.ChannelShuffle(3))
    x = randn((2, 9, 4, 5), device=device).to(memory_format=torch.channels_last)
    y = m(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, nn.ChannelShuffle(3)(x.contiguous()))
    x3 = randn((2, 9, 7), device=device)  # other ranks: torch's own
    assert torch.equal(m(x3), nn.ChannelShuffle(3)(x3))


def test_errors(device):
    x = randn((2, 6, 3, 3), device=device)
    with pytest.raises(ValueError, match=r"fastops.channel_shuffle: argument 'groups' \(4\) does not divide the 6 channels"):
        fastops.ops.channel_shuffle(x, 4)
    with pytest.raises(ValueError, match="fastops.channel_shuffle: argument 'groups' must be an int >= 1"):
        fastops.ops.channel_shuffle(x, 0)
    with pytest.raises(ValueError, match="fastops.channel_shuffle: argument 'x' must be 4-D"):
        fastops.ops.channel_shuffle(x[0], 2)
    with pytest.raises(TypeError, match="fastops.channel_shuffle: argument 'x' must be a floating-point"):
        fastops.ops.channel_shuffle(torch.ones((1, 2, 2, 2), dtype=torch.int32, device=device), 2)
    with pytest.raises(ValueError, match="fastops.concat_shuffle: arguments 'a' and 'b' must agree in N, H and W"):
        fastops.ops.concat_shuffle(x, randn((2, 6, 3, 4), device=device))
    with pytest.raises(ValueError, match="fastops.concat_shuffle: the channels of 'a' and 'b' together"):
        fastops.ops.concat_shuffle(x, randn((2, 3, 3, 3), device=device))
    with pytest.raises(TypeError, match="fastops.concat_shuffle: argument 'b' has dtype torch.float64"):
        fastops.ops.concat_shuffle(x, x.double())
    # the C++ op raises the same errors as the Python layer
    with pytest.raises(ValueError, match=r"fastops.channel_shuffle: argument 'groups' \(4\) does not divide"):
        torch.ops.fastops.channel_shuffle(x, 4)
    with pytest.raises(ValueError, match="fastops.concat_shuffle_backward: argument 'split' must be in"):
        torch.ops.fastops.concat_shuffle_backward(x, 7)
