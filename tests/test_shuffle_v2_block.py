"""fastops.shuffle_v2_block (ShuffleNet V2's unit: split or branch1, branch2, concat + shuffle,
BatchNorms folded) against its reference composition, and ShuffleV2Block's inference running it."""

import copy

import pytest
import torch

import fastops
from fastops import reference
from helpers import check_gradients_against_reference, num_threads, poisoned_memory, randomise_bn

torchvision = pytest.importorskip("torchvision")

ACTS = ("relu", "relu6", "hardswish")


def _args(n, c, e, h, w, k=3, act="relu", seed=0, dtype=torch.float32, stride=1, b=None, k4=None):
    """x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act, stride [, w4, s4, b4, w5, s5, b5] for a unit of
    c input channels whose branch2 expands to e; stride 1 splits x in halves (b = c // 2 outputs
    per branch), stride > 1 adds branch1 (depthwise k4 x k4, then 1x1 to b channels)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    ci = c // 2 if stride == 1 else c
    b = c // 2 if stride == 1 else b
    x = (r(n, c, h, w) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    w1, w2, w3 = r(e, ci, 1, 1) * ci ** -0.5, r(e, 1, k, k) / k, r(b, e, 1, 1) * e ** -0.5
    vec = lambda m: (torch.rand(m, generator=gen) + 0.5, torch.randn(m, generator=gen) * 0.2)  # noqa: E731
    (s1, b1), (s2, b2), (s3, b3) = vec(e), vec(e), vec(b)
    tensors = [w1, s1, b1, w2, s2, b2, w3, s3, b3]
    branch1 = []
    if stride > 1:
        k4 = k if k4 is None else k4
        (s4, b4), (s5, b5) = vec(c), vec(b)
        branch1 = [r(c, 1, k4, k4) / k4, s4, b4, r(b, c, 1, 1) * c ** -0.5, s5, b5]
    return (x, *[t.to(dtype) for t in tensors], act, stride, *[t.to(dtype) for t in branch1])


# (N, C, E, H, W, k): ShuffleNet V2 1.0's units shrunk (E = C / 2) and others (E != C / 2, 5x5),
# odd sizes, N=1 (the image split across threads), 7x7 maps (several images per task),
# 130x200 maps (several bands per image, halo rows kept), 1 pixel, halves of an odd count
CASES = [
    (2, 58, 29, 28, 28, 3),
    (1, 116, 58, 15, 13, 3),
    (4, 232, 116, 7, 7, 3),
    (3, 24, 40, 9, 11, 5),
    (1, 16, 8, 130, 200, 3),
    (2, 10, 7, 1, 1, 3),
    (5, 38, 19, 3, 2, 5),
]

# stride > 1: (N, C, E, B, H, W, k, k4, stride): ShuffleNet V2 1.0's stride-2 units shrunk (24 ->
# 58 + 58 at 56x56, 116 -> 116 + 116), branch outputs other than E, odd maps, 5x5 in one branch
# and 3x3 in the other (same output size), 7x7 maps with N=4 (several images per task), 1
# pixel, stride 3
STRIDED = [
    (2, 24, 58, 58, 56, 56, 3, 3, 2),
    (1, 116, 116, 116, 15, 13, 3, 3, 2),
    (4, 40, 24, 20, 7, 7, 3, 3, 2),
    (3, 13, 21, 9, 11, 10, 5, 3, 2),
    (2, 8, 6, 4, 1, 1, 3, 3, 2),
    (2, 12, 10, 6, 17, 16, 3, 5, 3),
]


def _case_args(case, act, seed):
    if len(case) == 6:
        n, c, e, h, w, k = case
        return _args(n, c, e, h, w, k, act, seed=seed)
    n, c, e, b, h, w, k, k4, stride = case
    return _args(n, c, e, h, w, k, act, seed=seed, stride=stride, b=b, k4=k4)


@pytest.mark.parametrize("case", CASES + STRIDED, ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("threads", (1, 2))
def test_matches_reference(case, act, threads):
    args = _case_args(case, act, seed=hash((case, act)) % 1000)
    x = args[0]
    expected = reference.shuffle_v2_block(*args)
    with num_threads(threads), poisoned_memory(torch.empty(expected.shape)):
        got = torch.ops.fastops.shuffle_v2_block(*args)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    if len(case) == 6:  # stride 1: the first half passes through untouched, to the even channels
        assert torch.equal(got[:, 0::2], x[:, : x.shape[1] // 2])


@pytest.mark.parametrize("layout", ("nchw", "channels_last", "sliced", "channel_slice"))
@pytest.mark.parametrize("stride", (1, 2))
def test_functional_any_layout_and_dtype(layout, stride):
    """fastops.ops.shuffle_v2_block: the kernel for channels_last float32 (a view into a wider
    channels_last tensor is made dense first), the composition of fastops' ops otherwise (NCHW
    keeps NCHW; float64), the same numbers."""
    args = list(_args(2, 20, 14, 9, 11, 3, "hardswish", stride=stride, b=10))
    x = args[0]
    if layout == "nchw":
        x = x.contiguous()
    elif layout == "sliced":
        x = torch.cat([x, x], 3)[..., ::2]
    elif layout == "channel_slice":
        x = torch.cat([x, x], 1)[:, 20:]
    args[0] = x
    got = fastops.ops.shuffle_v2_block(*args)
    torch.testing.assert_close(got, reference.shuffle_v2_block(*args), rtol=1e-5, atol=1e-4)
    if layout == "nchw":
        assert got.is_contiguous()
    else:
        torch.testing.assert_close(torch.ops.fastops.shuffle_v2_block(*args), got, rtol=1e-5, atol=1e-4)
    args64 = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    torch.testing.assert_close(fastops.ops.shuffle_v2_block(*args64), reference.shuffle_v2_block(*args64))


@pytest.mark.parametrize("stride", (1, 2))
def test_gradients_of_the_kernel(stride):
    """The op's autograd formula (recompute with the fused ops, chain their backward ops) against
    autograd through the reference, every input."""
    args = _args(2, 12, 10, 9, 8, 3, "relu6", stride=stride, b=7)
    check_gradients_against_reference(torch.ops.fastops.shuffle_v2_block, reference.shuffle_v2_block, args,
                                      n_grads=10 if stride == 1 else 16)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("stride", (1, 2))
def test_gradcheck_float64(layout, stride):
    args = list(_args(1, 6, 4, 5, 4, 3, "hardswish", dtype=torch.float64, stride=stride, b=3))
    if layout == "nchw":
        args[0] = args[0].contiguous()
    tensors = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    where = [i for i, a in enumerate(tensors) if isinstance(a, torch.Tensor)]

    def fn(*t):
        full = list(tensors)
        for i, v in zip(where, t):
            full[i] = v
        return fastops.ops.shuffle_v2_block(*full)

    assert torch.autograd.gradcheck(fn, [tensors[i] for i in where])


@pytest.mark.parametrize("stride", (1, 2))
def test_opcheck(stride):
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a
            for a in _args(2, 16, 12, 6, 5, 3, "relu", stride=stride, b=8)]
    torch.library.opcheck(torch.ops.fastops.shuffle_v2_block.default, tuple(args))


@pytest.mark.parametrize("stride", (1, 2))
def test_compile_fullgraph(stride):
    torch._dynamo.reset()
    args = _args(2, 16, 8, 6, 5, 3, "relu", stride=stride, b=8)
    fn = torch.compile(lambda *a: torch.ops.fastops.shuffle_v2_block(*a), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(*args), reference.shuffle_v2_block(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", (1, 2))
def test_compile_dynamic_with_stride_argument(stride):
    """fastops.ops.shuffle_v2_block with the stride a traced int (dynamic=True: a SymInt in its
    Python checks, which once compared `stride == 1` with a plain bool and failed to trace)."""
    torch._dynamo.reset()
    args = _args(2, 16, 8, 6, 5, 3, "relu", stride=stride, b=8)
    fn = torch.compile(lambda x, s, *rest: fastops.ops.shuffle_v2_block(x, *rest[:9], "relu", s, *rest[9:]),
                       fullgraph=True, dynamic=True, backend="aot_eager")
    rest = list(args[1:10]) + list(args[12:])
    torch.testing.assert_close(fn(args[0], stride, *rest), reference.shuffle_v2_block(*args), rtol=1e-5, atol=1e-5)


def test_errors_name_the_op_and_argument():
    good = list(_args(1, 16, 12, 6, 6, 3, "relu"))
    strided = list(_args(1, 16, 12, 6, 6, 3, "relu", stride=2, b=8))

    def fails(args, i, value, exc, text):
        bad = list(args)
        bad[i] = value
        for fn in (torch.ops.fastops.shuffle_v2_block, fastops.ops.shuffle_v2_block):
            with pytest.raises(exc, match=text):
                fn(*bad)

    fails(good, 0, torch.randn(1, 15, 6, 6), ValueError, "shuffle_v2_block.*'x'.*even")
    fails(good, 0, torch.randn(1, 16, 6), ValueError, "shuffle_v2_block.*'x'")
    fails(good, 0, torch.randn(1, 16, 0, 6), ValueError, "shuffle_v2_block.*'x'.*at least one row")
    fails(good, 1, torch.randn(12, 16, 1, 1), ValueError, "shuffle_v2_block.*'w1'")
    fails(good, 4, torch.randn(12, 1, 4, 4), ValueError, "shuffle_v2_block.*'w2'")
    fails(good, 7, torch.randn(8, 11, 1, 1), ValueError, "shuffle_v2_block.*'w3'")
    fails(good, 7, torch.randn(16, 12, 1, 1), ValueError, "shuffle_v2_block.*'w3'")
    fails(good, 9, torch.randn(9), ValueError, "shuffle_v2_block.*'b3'")
    fails(good, 10, "gelu", ValueError, "shuffle_v2_block.*'act'")
    fails(good, 11, 0, ValueError, "shuffle_v2_block.*'stride'")
    fails(good, 11, 2, ValueError, "shuffle_v2_block.*'w4'.*exactly when stride > 1")
    fails(strided, 11, 1, ValueError, "shuffle_v2_block.*'w4'.*exactly when stride > 1")
    fails(strided, 15, None, ValueError, "shuffle_v2_block.*'w4'.*exactly when stride > 1")
    fails(strided, 1, torch.randn(12, 8, 1, 1), ValueError, "shuffle_v2_block.*'w1'")
    fails(strided, 12, torch.randn(15, 1, 3, 3), ValueError, "shuffle_v2_block.*'w4'")
    fails(strided, 15, torch.randn(7, 16, 1, 1), ValueError, "shuffle_v2_block.*'w5'")
    fails(strided, 17, torch.randn(7), ValueError, "shuffle_v2_block.*'b5'")
    with pytest.raises(TypeError, match="shuffle_v2_block.*'x'"):
        torch.ops.fastops.shuffle_v2_block(good[0].double(), *good[1:])


def _tv_unit(inp, oup, stride):
    return randomise_bn(torchvision.models.shufflenetv2.InvertedResidual(inp, oup, stride), seed=inp).eval()


@pytest.mark.parametrize("inp,oup,stride,n,h", [(58, 58, 1, 3, 17), (116, 116, 1, 1, 9), (48, 48, 1, 8, 7),
                                                (24, 116, 2, 3, 17), (116, 232, 2, 1, 9)])
def test_module_inference_runs_the_unit_kernel(inp, oup, stride, n, h):
    """fastops.optimize's (and the builders') ShuffleV2Block in eval mode without autograd runs
    the unit as one kernel call (CPU, channels_last float32) with torchvision's answer; with
    autograd, in NCHW, with FUSED_UNITS off or a BN in training mode it takes the per-conv path,
    same answer."""
    from fastops.nn import shufflenet_v2

    theirs = _tv_unit(inp, oup, stride)
    ours = fastops.optimize(copy.deepcopy(theirs))
    assert isinstance(ours, fastops.nn.ShuffleV2Block)
    x = (torch.randn(n, inp, h, h + 2) * 2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = theirs(x)

    def kernel_calls(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = fn()
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)
        return sum(e.name == "fastops::shuffle_v2_block" for e in prof.events())

    with torch.no_grad():
        assert kernel_calls(lambda: ours(x)) == 1
        assert ours(x).is_contiguous(memory_format=torch.channels_last)
        assert kernel_calls(lambda: ours(x.contiguous())) == 0
    assert kernel_calls(lambda: ours(x)) == 0  # autograd on
    try:
        shufflenet_v2.FUSED_UNITS = False
        with torch.no_grad():
            assert kernel_calls(lambda: ours(x)) == 0
    finally:
        shufflenet_v2.FUSED_UNITS = True
    for bn in (ours.branch2[-2],) + ((ours.branch1[1],) if stride > 1 else ()):
        bn.train()
        with torch.no_grad():  # batch statistics: a different answer, and not the kernel's
            assert not torch.equal(ours(x), expected)
        bn.eval()


def test_network_runs_the_kernel_in_every_unit():
    """ShuffleNet V2 1.0 through fastops.optimize: its 16 units run the unit kernel, with
    torchvision's answer."""
    tv = torchvision.models.shufflenet_v2_x1_0().eval()
    ours = fastops.optimize(copy.deepcopy(tv))
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = ours(x)
    assert sum(e.name == "fastops::shuffle_v2_block" for e in prof.events()) == 16
    with torch.no_grad():
        torch.testing.assert_close(got, tv(x), rtol=1e-4, atol=1e-4)
