"""separable_conv_bn_act through fastops.ops (C++ CPU kernels; CUDA kernels where a GPU is
present): values and the gradients of all five inputs against the float64 reference over
kernel sizes, strides, dilations, multipliers, layouts and dtypes; gradcheck, opcheck, compile,
the SeparableConv2d module against its unfused composition, and the argument errors. The Triton
kernels have their own sweep in test_separable_triton.py."""

import pytest
import torch
from torch import nn

import fastops
from fastops import reference
from helpers import TOL, make_layout, num_threads, poisoned_memory, randn

LAYOUTS = ("contiguous", "channels_last", "strided", "permuted")


def _case(device, dtype, n, c, oc, h, w, k=3, mult=1, affine=True, layout="contiguous"):
    x = make_layout(randn((n, c, h, w), dtype, device, scale=1.0), layout)
    dw = randn((c * mult, 1, k, k), dtype, device, scale=0.5)
    pw = randn((oc, c * mult, 1, 1), dtype, device, scale=1.0 / (c * mult) ** 0.5)
    scale = randn((oc,), dtype, device, scale=1.0) if affine else None
    shift = randn((oc,), dtype, device, scale=1.0) if affine else None
    return x, dw, pw, scale, shift


def _d(t):
    return None if t is None else t.double()


def _close(actual, expected, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected, rtol=tol["rtol"],
                               atol=tol["rtol"] * max(1.0, expected.abs().max().item()))


GEOMETRIES = [  # k, stride, padding, dilation, mult, (h, w)
    (3, 1, 1, 1, 1, (9, 11)),
    (3, 2, 1, 1, 1, (14, 13)),
    (5, 1, 2, 1, 1, (8, 8)),
    (3, 1, 2, 2, 1, (10, 7)),
    (3, 2, 0, 1, 2, (7, 9)),
    (1, 1, 0, 1, 1, (4, 5)),
    (3, 1, 1, 1, 1, (1, 1)),
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"k{g[0]}s{g[1]}p{g[2]}d{g[3]}m{g[4]}")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_gradients(device, geom, layout):
    k, s, p, d, m, (h, w) = geom
    case = _case(device, torch.float32, 2, 19, 24, h, w, k, m, layout=layout)
    leaves = [t.requires_grad_() for t in case]
    with poisoned_memory(case[0]):
        y = fastops.ops.separable_conv_bn_act(*leaves, stride=s, padding=p, dilation=d, act="relu")
    assert y.is_contiguous(memory_format=fastops._layout.conv_output_format(case[0]))
    dl = [t.detach().double().requires_grad_() for t in leaves]
    expected = reference.separable_conv_bn_act(*dl, s, p, d, "relu")
    _close(y, expected, torch.float32)
    g = randn(y.shape, device=device)
    for a, b in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(expected, dl, g.double())):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_large_images_in_steps(device, layout):
    # 1.5 MB of depthwise result per image: the CPU kernel goes two images, then one
    x, dw, pw, sc, sh = _case(device, torch.float32, 3, 96, 24, 64, 64, layout=layout)
    y = fastops.ops.separable_conv_bn_act(x, dw, pw, sc, sh, 1, 1, 1, "relu6")
    _close(y, reference.separable_conv_bn_act(x.double(), dw.double(), pw.double(), sc.double(), sh.double(), 1, 1, 1,
                                              "relu6"), torch.float32)


@pytest.mark.parametrize("padding", (0, 1))
def test_one_channel_slice_of_channels_last(device, padding):
    """x: one channel of a channels_last tensor (channels_last by its strides, output
    channels_last); its one-channel depthwise result is dense in both layouts, and the pointwise
    step must still write y in y's layout (padding 0: the step-wise path, output smaller)."""
    big = make_layout(randn((2, 6, 12, 11), device=device), "channels_last")
    x = big[:, 3:4]
    dw, pw = randn((1, 1, 3, 3), device=device), randn((8, 1, 1, 1), device=device)
    y = fastops.ops.separable_conv_bn_act(x, dw, pw, None, None, 1, padding, 1, "relu")
    assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, reference.separable_conv_bn_act(x.double(), dw.double(), pw.double(), None, None, 1, padding, 1, "relu"),
           torch.float32)


# float32 with padding k // 2 goes by bands of rows on CPU (channels_last: the inverted-residual
# engine; NCHW: the rows transposed into a channels_last buffer): one image split between threads
# (N=1), fewer than 16 channels, several small images to a thread, several bands, stride 2 with
# odd sizes, 5x5; one thread or two
ENGINE_CASES = [  # n, c, oc, h, w, k, stride
    (1, 8, 5, 9, 10, 3, 1),
    (1, 40, 33, 17, 23, 5, 2),
    (8, 24, 40, 7, 7, 3, 1),
    (3, 96, 24, 64, 61, 3, 2),
    (2, 17, 64, 31, 30, 5, 1),
    (3, 96, 24, 64, 61, 3, 1),   # NCHW: 14-row bands of 854 pixels
    (1, 12, 20, 40, 40, 3, 1),   # NCHW: C < 16, one image in two parts
    (2, 48, 32, 70, 66, 5, 2),   # NCHW: 13-row bands of 429 pixels, stride 2
    (1, 20, 16, 50, 52, 3, 3),   # stride 3: the depthwise kernel's general rows
    (1, 64, 24, 70, 50, 3, 1),   # channels_last: bands of 24, 24 and 22 rows, split between threads
    (2, 128, 20, 90, 60, 3, 2),  # channels_last: stride 2, bands of 23 and 22 rows
]


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("case", ENGINE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_band_paths(device, case, layout, threads):
    n, c, oc, h, w, k, s = case
    x, dw, pw, sc, sh = _case(device, torch.float32, n, c, oc, h, w, k, layout=layout)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    with num_threads(threads), poisoned_memory(torch.empty(n, oc, h, w, device=device).to(memory_format=fmt)):
        y = fastops.ops.separable_conv_bn_act(x, dw, pw, sc, sh, s, k // 2, 1, "hardswish")
    assert y.is_contiguous(memory_format=fmt)
    _close(y, reference.separable_conv_bn_act(x.double(), dw.double(), pw.double(), sc.double(), sh.double(), s,
                                              k // 2, 1, "hardswish"), torch.float32)


@pytest.mark.parametrize("act", reference.ACTIVATIONS)
def test_activations_and_no_affine(device, act):
    x, dw, pw, sc, sh = _case(device, torch.float32, 1, 32, 16, 6, 6, layout="channels_last")
    for scale, shift in ((sc, sh), (None, None), (None, sh)):
        y = fastops.ops.separable_conv_bn_act(x, dw, pw, scale, shift, 1, 1, 1, act)
        _close(y, reference.separable_conv_bn_act(x.double(), dw.double(), pw.double(), _d(scale), _d(shift), 1, 1, 1,
                                                  act), torch.float32)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_dtypes(device, dtype, layout):
    x, dw, pw, sc, sh = _case(device, dtype, 2, 16, 20, 7, 7, layout=layout)
    y = fastops.ops.separable_conv_bn_act(x, dw, pw, sc, sh, 2, 1, 1, "relu6")
    assert y.dtype == dtype
    _close(y, reference.separable_conv_bn_act(x.double(), dw.double(), pw.double(), _d(sc), _d(sh), 2, 1, 1, "relu6"),
           dtype)


def test_gradcheck(device):
    leaves = [t.requires_grad_() for t in _case(device, torch.float64, 2, 3, 4, 5, 4)]
    f = lambda *t: fastops.ops.separable_conv_bn_act(*t, stride=2, padding=1, act="silu")  # noqa: E731
    assert torch.autograd.gradcheck(f, leaves)


def _opcheck_cases(device):
    ns = torch.ops.fastops
    x, dw, pw, sc, sh = _case(device, torch.float32, 2, 4, 6, 5, 5)
    cl = x.to(memory_format=torch.channels_last)
    g = randn((2, 6, 3, 3), device=device)
    return [
        (ns.separable_conv_bn_act.default, (x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_(), sc, sh, [1, 1],
                                            [1, 1], [1, 1], "relu6")),
        (ns.separable_conv_bn_act.default, (cl, dw.detach(), pw.detach(), None, None, [2, 2], [1, 1], [1, 1], "none")),
        (ns.separable_conv_bn_act_backward.default, (g, x.detach(), dw.detach(), pw.detach(), sc, sh, [2, 2], [1, 1],
                                                     [1, 1], "hardswish")),
    ]


@pytest.mark.parametrize("case", range(3))
def test_opcheck(device, case):
    op, args = _opcheck_cases(device)[case]
    torch.library.opcheck(op, args)


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    m = fastops.nn.SeparableConv2d(8, 12, 3, padding=1).to(device)
    x = randn((2, 8, 6, 6), device=device).to(memory_format=torch.channels_last).requires_grad_()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, m(x))
    g = randn(y.shape, device=device)
    for a, b in zip(torch.autograd.grad(y, (x, m.conv1.weight), g), torch.autograd.grad(m(x), (x, m.conv1.weight), g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bias", (False, True))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_module_matches_unfused(device, bias, layout):
    m = fastops.nn.SeparableConv2d(10, 14, 3, stride=2, padding=1, bias=bias).to(device)
    assert list(m.state_dict()) == (["conv1.weight", "conv1.bias", "pointwise.weight", "pointwise.bias"] if bias
                                    else ["conv1.weight", "pointwise.weight"])
    x = make_layout(randn((2, 10, 9, 8), device=device), layout)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = m(xa), m.pointwise(m.conv1(xb))
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = randn(ya.shape, device=device)
    ga = torch.autograd.grad(ya, [xa] + list(m.parameters()), g)
    gb = torch.autograd.grad(yb, [xb] + list(m.parameters()), g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_errors(device):
    x, dw, pw, sc, sh = _case(device, torch.float32, 2, 4, 6, 5, 5)
    op = fastops.ops.separable_conv_bn_act
    with pytest.raises(ValueError, match=r"fastops.separable_conv_bn_act: argument 'pw_weight' must have shape \[OC, 4, 1, 1\]"):
        op(x, dw, pw[:, :3], sc, sh, padding=1)
    with pytest.raises(ValueError, match=r"fastops.separable_conv_bn_act: argument 'dw_weight' must have shape \[C\*m, 1, kh, kw\]"):
        op(x, dw.transpose(0, 1), pw, sc, sh)
    with pytest.raises(ValueError, match=r"fastops.separable_conv_bn_act: argument 'shift' must have shape \[6\]"):
        op(x, dw, pw, sc, sh[:2])
    with pytest.raises(ValueError, match="fastops.separable_conv_bn_act: argument 'stride' must be >= 1"):
        op(x, dw, pw, sc, sh, stride=0)
    with pytest.raises(ValueError, match="fastops.separable_conv_bn_act: the kernel"):
        op(x[:, :, :1, :1], dw, pw, sc, sh)
    with pytest.raises(ValueError, match=r"fastops.separable_conv_bn_act: argument 'pw_weight' must have shape"):
        torch.ops.fastops.separable_conv_bn_act(x, dw, pw[:, :3], sc, sh, [1, 1], [1, 1], [1, 1], "none")
