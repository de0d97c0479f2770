"""pwconv_bn_act through fastops.ops (C++ CPU kernels; CUDA kernels where a GPU is present):
values and the gradients of all five inputs against the float64 reference over channel counts,
every group count that divides, residual given or not, every shuffle group count, every act,
layouts, dtypes; gradcheck, opcheck, compile, and the argument errors. The Triton kernels have
their own sweep in test_pwconv_triton.py."""

import pytest
import torch
from torch import nn

import fastops
from fastops import reference
from helpers import TOL, make_layout, num_threads, poisoned_memory, randn

ACTS = reference.ACTIVATIONS
LAYOUTS = ("contiguous", "channels_last", "strided", "permuted", "cl_sliced")


def _case(device, dtype, n, c, oc, h, w, groups=1, affine=True, residual=False, layout="contiguous"):
    x = make_layout(randn((n, c, h, w), dtype, device, scale=1.0), layout)
    weight = randn((oc, c // groups, 1, 1), dtype, device, scale=1.0 / (c // groups) ** 0.5)
    scale = randn((oc,), torch.float32, device, scale=1.0) if affine else None
    shift = randn((oc,), torch.float32, device, scale=1.0) if affine else None
    res = make_layout(randn((n, oc, h, w), dtype, device, scale=1.0), layout) if residual else None
    return x, weight, scale, shift, res


def _d(t):
    return None if t is None else t.double()


def _close(actual, expected, dtype):
    tol = TOL[dtype]
    top = expected.abs().max().item() if expected.numel() else 0.0  # grad_residual without a residual: empty
    torch.testing.assert_close(actual.double(), expected, rtol=tol["rtol"], atol=tol["rtol"] * max(1.0, top))


@pytest.mark.parametrize("c,oc,groups", ((24, 144, 1), (17, 33, 1), (240, 60, 3), (12, 12, 4), (6, 10, 2), (8, 8, 8)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_gradients(device, c, oc, groups, layout):
    x, w, sc, sh, res = _case(device, torch.float32, 2, c, oc, 7, 9, groups, residual=True, layout=layout)
    shuffle = groups if groups > 1 else 2 if oc % 2 == 0 else 1
    leaves = [t.requires_grad_() for t in (x, w, sc, sh, res)]
    with poisoned_memory(x):
        y = fastops.ops.pwconv_bn_act(x, w, sc, sh, groups, "relu6", res, shuffle)
    assert y.is_contiguous(memory_format=fastops._layout.conv_output_format(x))
    dl = [t.detach().double().requires_grad_() for t in leaves]
    expected = reference.pwconv_bn_act(dl[0], dl[1], dl[2], dl[3], groups, "relu6", dl[4], shuffle)
    _close(y, expected, torch.float32)
    g = randn(y.shape, device=device)
    got = torch.autograd.grad(y, leaves, g)
    want = torch.autograd.grad(expected, dl, g.double())
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("shuffle", (1, 2, 3, 4, 6, 12))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_shuffle_equals_conv_act_then_channel_shuffle(device, shuffle, layout):
    x, w, sc, sh, _ = _case(device, torch.float32, 2, 9, 12, 5, 6, layout=layout)
    y = fastops.ops.pwconv_bn_act(x, w, sc, sh, 1, "relu", None, shuffle)
    z = nn.functional.relu(nn.functional.conv2d(x, w) * sc.view(1, -1, 1, 1) + sh.view(1, -1, 1, 1))
    _close(y, nn.ChannelShuffle(shuffle)(z).double(), torch.float32)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual", (False, True))
@pytest.mark.parametrize("affine", (False, True))
def test_activations(device, act, residual, affine):
    x, w, sc, sh, res = _case(device, torch.float32, 1, 20, 18, 6, 5, 2, affine, residual, "channels_last")
    y = fastops.ops.pwconv_bn_act(x, w, sc, sh, 2, act, res, 3)
    _close(y, reference.pwconv_bn_act(x.double(), w.double(), _d(sc), _d(sh), 2, act, _d(res), 3), torch.float32)
    g = randn(y.shape, device=device)
    got = torch.ops.fastops.pwconv_bn_act_backward(g, x, w, sc, sh, 2, act, res, 3)
    want = reference.pwconv_bn_act_backward(g.double(), x.double(), w.double(), _d(sc), _d(sh), 2, act, _d(res), 3)
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual", (False, True))
@pytest.mark.parametrize("affine", (False, True))
@pytest.mark.parametrize("layout", ("channels_last", "cl_sliced"))
def test_onednn_route(act, residual, affine, layout):
    """CPU, channels_last float32, ungrouped or grouped with no more outputs than inputs: oneDNN's
    fused 1x1 conv (the affine folded into its weights and bias, residual add and activation as
    post-ops, a shuffle then done in place), exactly when its post-ops cover the case (with a
    residual: activation none or ReLU); the reference's answer either way, in the output layout.
    Grouped convs with more outputs than inputs and NCHW convs take the tiled kernel."""
    x, w, sc, sh, res = _case("cpu", torch.float32, 2, 19, 23, 6, 7, 1, affine, residual, layout)
    covered = torch.backends.mkldnn.is_available() and (not residual or act in ("none", "relu"))

    def run(*args):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = fastops.ops.pwconv_bn_act(*args)
        routed = any(e.name.startswith("mkldnn::_convolution_pointwise") for e in prof.events())
        want = reference.pwconv_bn_act(*(a.double() if torch.is_tensor(a) else a for a in args))
        _close(y, want, torch.float32)
        assert y.is_contiguous(memory_format=fastops._layout.conv_output_format(args[0]))
        return routed

    assert run(x, w, sc, sh, 1, act, res, 1) == covered
    assert run(x, w, sc, sh, 1, act, res, 23) == covered  # shuffled: 23 groups of 1
    assert not run(x.contiguous(), w, sc, sh, 1, act, None if res is None else res.contiguous(), 1)  # NCHW
    # grouped: 33 -> 24 in 3 groups (then shuffled in place: 3 groups of 8, 4 of 6, 24 of 1) runs
    # there; 18 -> 24 does not
    xg, wg, scg, shg, rg = _case("cpu", torch.float32, 3, 33, 24, 9, 11, 3, affine, residual, layout)
    for shuffle in (1, 3, 4, 24):
        assert run(xg, wg, scg, shg, 3, act, rg, shuffle) == covered
    xg, wg, scg, shg, rg = _case("cpu", torch.float32, 2, 18, 24, 6, 7, 3, affine, residual, layout)
    assert not run(xg, wg, scg, shg, 3, act, rg, 3)


@pytest.mark.parametrize("kind", ("plain", "no_act", "fused"))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "permuted"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_backward_ungrouped(device, kind, layout, dtype):
    """Ungrouped float32 / float64 backward: grad_x and grad_weight as GEMMs on the CPU (per image
    in NCHW, one each in channels_last). Without activation or shuffle grad_out is the gradient
    of the affine's output, so the CPU takes it without recomputing the conv: the plain conv
    (`pwconv_bn_act(x, w)`), and with scale, shift and a residual (MobileNet's projections). All
    five outputs against the reference's, the residual's gradient (= grad of the pre-activation)
    included."""
    affine, residual, act, shuffle = {"plain": (False, False, "none", 1), "no_act": (True, True, "none", 1),
                                      "fused": (True, True, "hardswish", 2)}[kind]
    x, w, sc, sh, res = _case(device, dtype, 3, 19, 22, 7, 5, 1, affine, residual, layout)
    g = make_layout(randn((3, 22, 7, 5), dtype, device), layout)
    got = torch.ops.fastops.pwconv_bn_act_backward(g, x, w, sc, sh, 1, act, res, shuffle)
    want = reference.pwconv_bn_act_backward(g.double(), x.double(), w.double(), _d(sc), _d(sh), 1, act, _d(res),
                                            shuffle)
    for name, a, b in zip(("x", "weight", "scale", "shift", "residual"), got, want):
        _close(a, b, dtype)
        given = {"scale": sc, "shift": sh}.get(name)
        assert a.dtype == (given.dtype if given is not None else dtype), name
    assert got[0].is_contiguous(memory_format=fastops._layout.conv_output_format(x))


@pytest.mark.parametrize("shape", ((1, 16, 1, 1), (3, 5, 1, 7), (1, 64, 56, 56), (2, 96, 14, 14), (1, 6, 72, 72)))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("act", ("hardswish", "none"))
def test_shapes_spanning_tiles(device, shape, layout, act):
    """Several GEMM tiles, and planes / pixel runs longer than one chunk of the backward's sums;
    without an activation the backward's GEMMs on grad_out (by tiles on the large maps)."""
    n, c, h, w = shape
    x, wt, sc, sh, res = _case(device, torch.float32, n, c, 2 * c + 1, h, w, residual=True, layout=layout)
    y = fastops.ops.pwconv_bn_act(x, wt, sc, sh, 1, act, res)
    _close(y, reference.pwconv_bn_act(x.double(), wt.double(), _d(sc), _d(sh), 1, act, _d(res)), torch.float32)
    g = randn(y.shape, device=device)
    got = torch.ops.fastops.pwconv_bn_act_backward(g, x, wt, sc, sh, 1, act, res, 1)
    want = reference.pwconv_bn_act_backward(g.double(), x.double(), wt.double(), _d(sc), _d(sh), 1, act, _d(res), 1)
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("threads", (1, 2, 3))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_backward_tiles_shuffled_threads(device, threads, layout):
    """The float32 backward's tiles with a shuffle and a residual, dealt to one, two or three
    parts (each with its own grad_weight and sums): several tiles per image and per part."""
    x, wt, sc, sh, res = _case(device, torch.float32, 3, 10, 12, 47, 45, residual=True, layout=layout)
    g = make_layout(randn((3, 12, 47, 45), device=device), layout)
    with num_threads(threads):
        got = torch.ops.fastops.pwconv_bn_act_backward(g, x, wt, sc, sh, 1, "relu6", res, 4)
    want = reference.pwconv_bn_act_backward(g.double(), x.double(), wt.double(), _d(sc), _d(sh), 1, "relu6", _d(res), 4)
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_dtypes(device, dtype, layout):
    x, w, sc, sh, res = _case(device, dtype, 2, 12, 8, 5, 4, 2, residual=True, layout=layout)
    y = fastops.ops.pwconv_bn_act(x, w, sc, sh, 2, "relu", res, 2)
    assert y.dtype == dtype
    _close(y, reference.pwconv_bn_act(x.double(), w.double(), _d(sc), _d(sh), 2, "relu", _d(res), 2), dtype)


def test_gradcheck(device):
    x, w, sc, sh, res = _case(device, torch.float64, 2, 6, 4, 3, 2, 2, residual=True)
    leaves = [t.requires_grad_() for t in (x, w, sc.double(), sh.double(), res)]
    f = lambda x_, w_, s_, b_, r_: fastops.ops.pwconv_bn_act(x_, w_, s_, b_, 2, "silu", r_, 2)  # noqa: E731
    assert torch.autograd.gradcheck(f, leaves)
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x_, w_: fastops.ops.pwconv_bn_act(x_, w_, None, None, 1, "sigmoid"),
                                    (xc, randn((5, 6, 1, 1), torch.float64, device).requires_grad_()))


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("kind", ("plain_act_none", "tiled", "generic_bf16"))
def test_backward_no_residual_gives_empty_grad_residual(device, kind, layout):
    """Without a residual, pwconv_bn_act_backward returns an empty grad_residual (nothing is
    written for it) on every path: no activation (gradients straight from grad_out), the tiled
    float32 path, the generic one (bfloat16); the other four gradients as the reference's."""
    dtype = torch.bfloat16 if kind == "generic_bf16" else torch.float32
    act = "none" if kind == "plain_act_none" else "relu6"
    x, w, sc, sh, _ = _case(device, dtype, 2, 12, 10, 6, 5, 1, True, False, layout)
    g = make_layout(randn((2, 10, 6, 5), dtype, device), layout)
    got = torch.ops.fastops.pwconv_bn_act_backward(g, x, w, sc, sh, 1, act, None, 1)
    want = reference.pwconv_bn_act_backward(g.double(), x.double(), w.double(), _d(sc), _d(sh), 1, act, None, 1)
    assert got[4].shape == (0,) and want[4].shape == (0,) and got[4].dtype == dtype
    for a, b in zip(got[:4], want[:4]):
        _close(a, b, dtype)


def _opcheck_cases(device):
    ns = torch.ops.fastops
    x, w, sc, sh, res = _case(device, torch.float32, 2, 6, 4, 3, 5, 2, residual=True)
    g = randn((2, 4, 3, 5), device=device)
    cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    return [
        (ns.pwconv_bn_act.default, (x.requires_grad_(), w.requires_grad_(), sc, sh.requires_grad_(), 2, "relu6",
                                    res.requires_grad_(), 2)),
        (ns.pwconv_bn_act.default, (cl(x.detach()), w.detach(), None, None, 2, "none", None, 1)),
        (ns.pwconv_bn_act_backward.default, (g, x.detach(), w.detach(), sc, sh.detach(), 2, "hardswish", res.detach(), 2)),
        (ns.pwconv_bn_act_backward.default, (cl(g), cl(x.detach()), w.detach(), None, None, 2, "relu", None, 1)),
        (ns.pwconv_backward.default, (g, x.detach(), w.detach(), 2)),
        (ns.pwconv_backward.default, (cl(g), cl(x.detach()), randn((4, 6, 1, 1), device=device), 1)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck(device, case):
    op, args = _opcheck_cases(device)[case]
    torch.library.opcheck(op, args)


def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def f(x, w, sc, sh, res):
        return fastops.ops.pwconv_bn_act(x, w, sc, sh, 3, "relu", res, 3)

    x, w, sc, sh, res = _case(device, torch.float32, 2, 12, 6, 5, 5, 3, residual=True, layout="channels_last")
    x.requires_grad_(), w.requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    y = compiled(x, w, sc, sh, res)
    torch.testing.assert_close(y, f(x, w, sc, sh, res))
    g = randn(y.shape, device=device)
    for a, b in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(f(x, w, sc, sh, res), (x, w), g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shuffle", (1, 2))
def test_width_one_channels_last_strides(device, shuffle):
    """x of width 1 with channels-last strides whose last one is 1 (a permuted view): channels_last
    by the layout rule, so the output is channels_last too, shuffled or not (oneDNN's answer for
    such an x is NCHW and is re-laid)."""
    x = randn((2, 12, 16, 1), device=device).permute(0, 2, 1, 3)  # [2, 16, 12, 1], strides (192, 1, 16, 1)
    w, sc, sh = randn((48, 16, 1, 1), device=device), randn((48,), device=device), randn((48,), device=device)
    y = fastops.ops.pwconv_bn_act(x, w, sc, sh, 1, "relu", None, shuffle)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, reference.pwconv_bn_act(x.double(), w.double(), _d(sc), _d(sh), 1, "relu", None, shuffle),
           torch.float32)


@pytest.mark.parametrize("threads", (1, 2, 3))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_plain_conv_backward_by_tiles(device, threads, layout):
    """float32 on maps of 28x28 or more: the plain conv's gradients by tiles of pixels (CPU: 496
    pixels a tile here, six tiles, dealt to the threads' parts, whose grad_weight parts are
    added after), against the float64 conv's."""
    x, w, _, _, _ = _case(device, torch.float32, 3, 200, 120, 30, 33, 1, layout=layout)
    g = make_layout(randn((3, 120, 30, 33), torch.float32, device), layout)
    with num_threads(threads), poisoned_memory(x):
        gx, gw = torch.ops.fastops.pwconv_backward(g, x, w, 1)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    want = torch.autograd.grad(nn.functional.conv2d(xd, wd), (xd, wd), g.double())
    _close(gx, want[0], torch.float32), _close(gw, want[1], torch.float32)
    assert gx.is_contiguous(memory_format=fastops._layout.conv_output_format(x))


@pytest.mark.parametrize("groups", (1, 3))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "permuted"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_plain_conv_backward(device, groups, layout, dtype):
    """pwconv_bn_act(x, w): autograd takes pwconv_backward (grad_x, grad_weight only: no sums, no
    residual gradient), which equals the plain convolution's gradients in x's layout; with any of
    scale, shift, residual, an activation or a shuffle it takes pwconv_bn_act_backward."""
    x, w, _, _, _ = _case(device, dtype, 3, 18, 12, 7, 5, groups, layout=layout)
    g = make_layout(randn((3, 12, 7, 5), dtype, device), layout)
    gx, gw = torch.ops.fastops.pwconv_backward(g, x, w, groups)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    want = torch.autograd.grad(nn.functional.conv2d(xd, wd, groups=groups), (xd, wd), g.double())
    _close(gx, want[0], dtype), _close(gw, want[1], dtype)
    assert gx.is_contiguous(memory_format=fastops._layout.conv_output_format(x)) and gw.is_contiguous()
    assert gx.dtype == gw.dtype == dtype

    def backward_ops(*args):
        leaves = [t.detach().requires_grad_() for t in args[:2]]
        y = fastops.ops.pwconv_bn_act(*leaves, *args[2:])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = torch.autograd.grad(y, leaves, g)
        return got, {e.name for e in prof.events() if e.name.startswith("fastops::")}

    got, names = backward_ops(x, w, None, None, groups)
    assert "fastops::pwconv_backward" in names and "fastops::pwconv_bn_act_backward" not in names, names
    _close(got[0], want[0], dtype), _close(got[1], want[1], dtype)
    _, names = backward_ops(x, w, None, None, groups, "relu")
    assert "fastops::pwconv_bn_act_backward" in names and "fastops::pwconv_backward" not in names, names


def test_errors(device):
    x, w, sc, sh, res = _case(device, torch.float32, 2, 6, 4, 3, 3, 2, residual=True)
    op = fastops.ops.pwconv_bn_act
    with pytest.raises(ValueError, match=r"fastops.pwconv_bn_act: argument 'groups' \(4\) does not divide the 6 channels"):
        op(x, w, groups=4)
    with pytest.raises(ValueError, match=r"fastops.pwconv_bn_act: argument 'weight' must have shape \[OC, 3, 1, 1\]"):
        op(x, randn((4, 3, 3, 3), device=device), groups=2)
    with pytest.raises(ValueError, match=r"fastops.pwconv_bn_act: argument 'groups' \(3\) does not divide the 4 output"):
        op(x, randn((4, 2, 1, 1), device=device), groups=3)
    with pytest.raises(ValueError, match=r"fastops.pwconv_bn_act: argument 'residual' must have shape \[2, 4, 3, 3\]"):
        op(x, w, sc, sh, 2, "relu", res[:, :3])
    with pytest.raises(ValueError, match=r"fastops.pwconv_bn_act: argument 'shuffle_groups' \(3\) does not divide"):
        op(x, w, sc, sh, 2, "relu", res, 3)
    with pytest.raises(ValueError, match=r"fastops.pwconv_bn_act: argument 'scale' must have shape \[4\]"):
        op(x, w, sc[:3], sh, 2)
    with pytest.raises(TypeError, match="fastops.pwconv_bn_act: argument 'residual' has dtype torch.float64"):
        op(x, w, sc, sh, 2, "relu", res.double())
    with pytest.raises(ValueError, match="fastops.pwconv_bn_act: argument 'act' must be one of"):
        op(x, w, sc, sh, 2, "gelu")
    with pytest.raises(ValueError, match=r"fastops.pwconv_bn_act: argument 'groups' \(4\) does not divide"):
        torch.ops.fastops.pwconv_bn_act(x, w, sc, sh, 4, "relu", None, 1)
    g = randn((2, 4, 3, 3), device=device)
    with pytest.raises(ValueError, match=r"fastops.pwconv_backward: argument 'grad_out' must have shape \[2, 4, 3, 3\]"):
        torch.ops.fastops.pwconv_backward(g[:, :3], x, w, 2)
    with pytest.raises(ValueError, match=r"fastops.pwconv_backward: argument 'groups' \(4\) does not divide"):
        torch.ops.fastops.pwconv_backward(g, x, w, 4)
    with pytest.raises(TypeError, match="fastops.pwconv_backward: argument 'grad_out' has dtype Double but 'x' has dtype Float"):
        torch.ops.fastops.pwconv_backward(g.double(), x, w, 2)
