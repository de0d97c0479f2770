"""The op contract of the custom ops themselves: schema, fake impls, autograd registration
(torch.library.opcheck), torch.compile(fullgraph=True) and torch.export, for the C++ ops
(torch.ops.fastops) and the Triton ops (torch.ops.fastops_triton)."""

import pytest
import torch
from torch import nn

import fastops
from helpers import assert_close, make_layout, randn

ACTIVATIONS = ("hardswish", "hardsigmoid")


def _triton_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _opcheck_cases(ns, device):
    """(op, args) pairs covering each op in several layouts."""
    cases = []
    for name in ACTIVATIONS:
        for layout in ("contiguous", "channels_last", "strided"):
            x = make_layout(randn((2, 3, 5, 4), device=device), layout)
            g = randn(x.shape, device=device)
            cases.append((getattr(ns, name).default, (x.detach().requires_grad_(),)))
            cases.append((getattr(ns, f"{name}_backward").default, (g, x)))
            cases.append((getattr(ns, f"{name}_").default, (x.clone(),)))
    return cases


@pytest.mark.parametrize("case", range(18))
def test_opcheck_cpp_ops(case):
    op, args = _opcheck_cases(torch.ops.fastops, "cpu")[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("case", range(18))
def test_opcheck_triton_ops(case):
    op, args = _opcheck_cases(_triton_ops(), _triton_device())[case]
    torch.library.opcheck(op, args)


@pytest.mark.cuda
@pytest.mark.parametrize("case", range(18))
def test_opcheck_cuda_ops(case):
    op, args = _opcheck_cases(torch.ops.fastops, "cuda")[case]
    torch.library.opcheck(op, args)


def _triton_ops():
    return fastops.triton.ops


def _dwconv_opcheck_cases(ns, device):
    cases = []
    for layout, affine, act, geom in (
        ("contiguous", True, "relu6", ([1, 1], [1, 1], [1, 1])),
        ("channels_last", True, "hardswish", ([2, 2], [1, 1], [1, 1])),
        ("channels_last", False, "none", ([1, 2], [2, 1], [2, 1])),
        ("strided", True, "silu", ([1, 1], [0, 0], [1, 1])),
    ):
        x = make_layout(randn((2, 4, 7, 6), device=device), layout)
        w = randn((8, 1, 3, 3), device=device)
        sc, sh = (randn((8,), device=device), randn((8,), device=device)) if affine else (None, None)
        y = torch.ops.fastops.dwconv_bn_act(x.cpu(), w.cpu(), sc if sc is None else sc.cpu(),
                                            sh if sh is None else sh.cpu(), *geom, act)
        g = randn(y.shape, device=device)
        req = lambda t: None if t is None else t.detach().requires_grad_()  # noqa: E731
        cases.append((ns.dwconv_bn_act.default, (req(x), req(w), req(sc), req(sh), *geom, act)))
        cases.append((ns.dwconv_bn_act_backward.default, (g, x, w, sc, sh, *geom, act)))
    return cases


@pytest.mark.parametrize("case", range(8))
def test_opcheck_dwconv_cpp(case):
    op, args = _dwconv_opcheck_cases(torch.ops.fastops, "cpu")[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("case", range(8))
def test_opcheck_dwconv_triton(case):
    op, args = _dwconv_opcheck_cases(_triton_ops(), _triton_device())[case]
    torch.library.opcheck(op, args)


@pytest.mark.cuda
@pytest.mark.parametrize("case", range(8))
def test_opcheck_dwconv_cuda(case):
    op, args = _dwconv_opcheck_cases(torch.ops.fastops, "cuda")[case]
    torch.library.opcheck(op, args)


def _fastops_ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastops::"))


def test_every_schema_has_cpu_cuda_fake_and_autograd():
    """Each op declared in C++ has a CPU kernel, a CUDA kernel (CUDA builds), a fake impl, and
    (the out-of-place ops that are not themselves a backward) autograd."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    names = _fastops_ops()
    for family in ("hardswish", "dwconv_bn_act", "bn_act_train", "channel_shuffle", "concat_shuffle",
                   "squeeze_excite", "pwconv_bn_act", "separable_conv_bn_act", "inverted_residual", "shuffle_v2_block"):
        assert f"fastops::{family}" in names, family
    for qual in names:
        assert has(qual, "CPU"), qual
        if fastops.has_cuda_kernels():
            assert has(qual, "CUDA"), qual
        assert has(qual, "Meta"), qual  # register_fake also serves meta tensors
        if not qual.endswith("_") and "_backward" not in qual:
            assert has(qual, "Autograd"), qual
    assert has("fastops::hardswish_backward", "Autograd") and has("fastops::concat_shuffle_backward", "Autograd")


def test_ops_have_cpp_autograd():
    """Every op but the blocks runs its autograd as C++ Functions (csrc/autograd.cpp), not through
    torch.library's Python layer, which cost ~30-50 us a call in every training step: their
    grad_fn is a CppNode of fastops::autograd. Each gradient against the reference's, every
    optional input given; the activations' backward ops (double backward) against ATen's."""
    x = randn((2, 16, 5, 6)).requires_grad_()
    w = randn((16, 1, 3, 3)).requires_grad_()
    a, b = randn((2, 8, 5, 6)).requires_grad_(), randn((2, 8, 5, 6)).requires_grad_()
    w1, b1 = randn((4, 16)).requires_grad_(), randn((4,)).requires_grad_()
    w2, b2 = randn((16, 4)).requires_grad_(), randn((16,)).requires_grad_()
    pw, sc, sh = randn((12, 8, 1, 1)).requires_grad_(), randn((12,)).requires_grad_(), randn((12,)).requires_grad_()
    res = randn((2, 12, 5, 6)).requires_grad_()
    pw16 = randn((12, 16, 1, 1)).requires_grad_()
    go = randn((2, 16, 5, 6)).requires_grad_()
    cases = {
        "BnActTrain": (lambda: fastops.ops.bn_act_train(x, None, None, 1e-5, "relu6")[0],
                       lambda: fastops.reference.bn_act_train(x, None, None, 1e-5, "relu6")[0], (x,)),
        "DwConvBnAct": (lambda: fastops.ops.dwconv_bn_act(x, w, None, None, 1, 1, 1, "none"),
                        lambda: fastops.reference.dwconv_bn_act(x, w, None, None, 1, 1, 1, "none"), (x, w)),
        "ChannelShuffle": (lambda: fastops.ops.channel_shuffle(x, 4),
                           lambda: fastops.reference.channel_shuffle(x, 4), (x,)),
        "ConcatShuffle": (lambda: fastops.ops.concat_shuffle(a, b),
                          lambda: fastops.reference.concat_shuffle(a, b), (a, b)),
        # double backward of concat_shuffle: concat_shuffle_backward's own autograd
        "ConcatShuffleBackward": (lambda: torch.ops.fastops.concat_shuffle_backward(go, 6)[1],
                                  lambda: fastops.reference.concat_shuffle_backward(go, 6)[1], (go,)),
        "SqueezeExcite": (lambda: fastops.ops.squeeze_excite(x, w1, b1, w2, b2, "relu", "hardsigmoid"),
                          lambda: fastops.reference.squeeze_excite(x, w1, b1, w2, b2, "relu", "hardsigmoid"),
                          (x, w1, b1, w2, b2)),
        "PwConvBnAct": (lambda: fastops.ops.pwconv_bn_act(a, pw, sc, sh, 1, "relu6", res, 3),
                        lambda: fastops.reference.pwconv_bn_act(a, pw, sc, sh, 1, "relu6", res, 3),
                        (a, pw, sc, sh, res)),
        "Hardswish": (lambda: fastops.ops.hardswish(x), lambda: torch.nn.functional.hardswish(x), (x,)),
        "Hardsigmoid": (lambda: fastops.ops.hardsigmoid(x), lambda: torch.nn.functional.hardsigmoid(x), (x,)),
        "HardswishBackward": (lambda: torch.ops.fastops.hardswish_backward(go, x),
                              lambda: torch.ops.aten.hardswish_backward(go, x), (go, x)),
        "HardsigmoidBackward": (lambda: torch.ops.fastops.hardsigmoid_backward(go, x),
                                # ATen's has no double backward; hardsigmoid'' = 0 (0 * x keeps x in the graph)
                                lambda: go * ((x > -3) & (x < 3)).to(x.dtype) / 6 + 0 * x, (go, x)),
        "SeparableConvBnAct": (lambda: fastops.ops.separable_conv_bn_act(x, w, pw16, sc, sh, 1, 1, 1, "hardswish"),
                               lambda: fastops.reference.separable_conv_bn_act(x, w, pw16, sc, sh, 1, 1, 1,
                                                                                "hardswish"),
                               (x, w, pw16, sc, sh)),
    }
    for name, (run, ref, leaves) in cases.items():
        y = run()
        assert y.grad_fn.name() == f"torch::autograd::CppNode<fastops::autograd::{name}>", y.grad_fn.name()
        g = randn(y.shape)
        for got, want in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(ref(), leaves, g)):
            # gradients are sums (over pixels, channels, taps) that the two add in other orders:
            # float32's tolerance relative to the largest element
            torch.testing.assert_close(got, want, rtol=1.3e-6, atol=1e-5 * max(1.0, want.abs().max().item()),
                                       msg=lambda m, name=name: f"{name}: {m}")


class _Block(nn.Module):
    """A MobileNet-V3-like stem: conv, hardswish, conv, hardsigmoid gate."""

    def __init__(self, inplace=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = fastops.nn.Hardswish(inplace=inplace)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.gate = fastops.nn.Hardsigmoid()

    def forward(self, x):
        h = self.act(self.conv1(x))
        return h * self.gate(self.conv2(h))


@pytest.mark.parametrize("inplace", (False, True))
def test_compile_fullgraph_inductor_forward_and_backward(inplace):
    torch._dynamo.reset()
    model = _Block(inplace)
    x = randn((2, 3, 9, 11)).to(memory_format=torch.channels_last).requires_grad_()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    y = compiled(x)
    expected = model(x)
    assert_close(y, expected)
    g = randn(y.shape)
    (gx,) = torch.autograd.grad(y, x, g)
    (ex,) = torch.autograd.grad(expected, x, g)
    assert_close(gx, ex)


def test_compile_fullgraph_raw_ops_and_dynamic_shapes():
    torch._dynamo.reset()

    def f(x):
        return torch.ops.fastops.hardswish(x) + fastops.ops.hardsigmoid(x * 2)

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for shape in ((3, 7), (5, 11), (1, 2, 3, 4)):
        x = randn(shape)
        assert_close(compiled(x), f(x))


@pytest.mark.parametrize("backend", ("inductor", "aot_eager"))
def test_compile_fullgraph_dwconv(backend):
    torch._dynamo.reset()

    def f(x, w, sc, sh):
        y = fastops.ops.dwconv_bn_act(x, w, sc, sh, stride=2, padding=1, act="hardswish")
        return fastops.ops.dwconv_bn_act(y, w, None, sh, padding=1, act="relu6").sum()

    x = randn((2, 8, 11, 11)).to(memory_format=torch.channels_last).requires_grad_()
    w, sc, sh = randn((8, 1, 3, 3)).requires_grad_(), randn((8,)), randn((8,)).requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = torch.autograd.grad(compiled(x, w, sc, sh), (x, w, sh))
    want = torch.autograd.grad(f(x, w, sc, sh), (x, w, sh))
    for a, b in zip(got, want):
        assert_close(a, b)


def test_compile_triton_ops():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: fastops.triton.hardswish(x) * 2, fullgraph=True, backend="aot_eager")
    x = randn((4, 6), device=_triton_device())
    assert_close(compiled(x), torch.nn.functional.hardswish(x) * 2)


@pytest.mark.parametrize("op", ("dwconv_bn_act", "separable_conv_bn_act"))
def test_compile_triton_conv_ops_dynamic(op):
    """The Triton convolutions under dynamic=True: their schema passes the geometry as SymInts,
    which the argument checks take (they once raised "must be an int or a pair of ints")."""
    torch._dynamo.reset()
    dev = _triton_device()
    x, w, pw = randn((1, 4, 6, 6), device=dev), randn((4, 1, 3, 3), device=dev), randn((5, 4, 1, 1), device=dev)
    if op == "dwconv_bn_act":
        f = lambda x, s: fastops.triton.dwconv_bn_act(x, w, None, None, s, 1, 1, "relu")  # noqa: E731
    else:
        f = lambda x, s: fastops.triton.separable_conv_bn_act(x, w, pw, None, None, s, 1, 1, "relu")  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    assert_close(compiled(x, 2), f(x, 2))


@pytest.mark.parametrize("value", (2.0, True, None, "2", (1, 2, 3), (1.0, 1)), ids=repr)
@pytest.mark.parametrize("arg", ("stride", "padding", "dilation"))
def test_geometry_must_be_ints(arg, value):
    """Floats, bools, None, strings and wrong-length tuples as a geometry argument: an error
    naming the op and the argument (a bool was once taken as 1, a float raised a bare TypeError)."""
    x, w = randn((1, 4, 6, 6)), randn((4, 1, 3, 3))
    with pytest.raises(ValueError, match=f"fastops.dwconv_bn_act: argument '{arg}' must be an int or a pair"):
        fastops.ops.dwconv_bn_act(x, w, **{arg: value})


def _double_backward_cases():
    c = 4
    p = [randn((c,)) + 2, randn((c,)), randn((c, 1, 3, 3)), randn((c, c, 1, 1))]
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return {
        "bn_act_train": lambda x: fastops.ops.bn_act_train(x, p[0], p[1], 1e-5, "silu")[0],
        "dwconv_bn_act": lambda x: fastops.ops.dwconv_bn_act(x, p[2], p[0], p[1], 1, 1, 1, "silu"),
        "pwconv_bn_act": lambda x: fastops.ops.pwconv_bn_act(x, p[3], p[0], p[1], 1, "silu"),
        "separable_conv_bn_act": lambda x: fastops.ops.separable_conv_bn_act(x, p[2], p[3], p[0], p[1], 1, 1, 1,
                                                                             "silu"),
        "squeeze_excite": lambda x: fastops.ops.squeeze_excite(x, p[3][:, :, 0, 0], p[0], p[3][:, :, 0, 0], p[1],
                                                               "silu", "sigmoid"),
        "stem_conv_bn_act": lambda x: fastops.ops.stem_conv_bn_act(cl(x), p[3], p[0], p[1], 1, 0, "relu"),
        "triton dwconv_bn_act": lambda x: fastops.triton.dwconv_bn_act(x, p[2], p[0], p[1], 1, 1, 1, "silu"),
    }


@pytest.mark.parametrize("case", list(_double_backward_cases()))
def test_double_backward_raises_naming_the_op(case):
    """create_graph=True through an op whose backward op has no autograd of its own: the first
    derivative as without it, and differentiating it again raises an error naming the op (it once
    gave a silently zero second derivative). The activations and shuffles have a real double
    backward (their own tests)."""
    fn = _double_backward_cases()[case]
    x = randn((2, 4, 6, 5)).requires_grad_()
    (plain,) = torch.autograd.grad(fn(x).pow(2).sum(), x)
    (g,) = torch.autograd.grad(fn(x).pow(2).sum(), x, create_graph=True)
    assert_close(g, plain)
    op = case.split()[-1]
    with pytest.raises(RuntimeError, match=f"fastops.{op}: differentiating its gradient again"):
        torch.autograd.grad(g.pow(2).sum(), x)
    with pytest.raises(RuntimeError, match=f"fastops.{op}: differentiating its gradient again"):
        g.pow(2).sum().backward()


def test_compile_reports_bad_dtype_at_trace_time():
    torch._dynamo.reset()
    compiled = torch.compile(torch.ops.fastops.hardswish, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="fastops.hardswish: argument 'x' must be a floating-point tensor"):
        compiled(torch.arange(6))


def test_export():
    model = _Block().eval()
    x = randn((1, 3, 8, 8))
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "fastops.hardswish.default" in targets and "fastops.hardsigmoid.default" in targets
    x2 = randn((1, 3, 8, 8))
    assert_close(ep.module()(x2), model(x2))


def _export_cases():
    c = 8
    w, s, b, pw = randn((c, 1, 3, 3)), randn((c,)) + 2, randn((c,)), randn((c, c, 1, 1))
    return {
        "channel_shuffle": lambda x: fastops.ops.channel_shuffle(x, 2),
        "concat_shuffle": lambda x: fastops.ops.concat_shuffle(x, x * 2),
        "dwconv_bn_act": lambda x: fastops.ops.dwconv_bn_act(x, w, s, b, 1, 1, 1, "relu"),
        "pwconv_bn_act": lambda x: fastops.ops.pwconv_bn_act(x, pw, s, b, 1, "relu", None, 2),
        "squeeze_excite": lambda x: fastops.ops.squeeze_excite(x, pw[:4, :, 0, 0], b[:4], pw[:, :4, 0, 0], b),
    }


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("case", list(_export_cases()))
def test_export_dynamic_batch(case, layout):
    """torch.export with a dynamic batch size: the exported program runs at another batch size
    with the eager answer (channel_shuffle's and concat_shuffle's autograd once read the channel
    count with a call that specialised every dimension, the batch's included)."""
    fn = _export_cases()[case]

    class M(nn.Module):
        def forward(self, x):
            return fn(x)

    x = make_layout(randn((3, 8, 6, 5)), layout)
    ep = torch.export.export(M(), (x,), dynamic_shapes=({0: torch.export.Dim("n", min=1, max=64)},))
    x5 = make_layout(randn((5, 8, 6, 5)), layout)
    assert_close(ep.module()(x5), fn(x5))
