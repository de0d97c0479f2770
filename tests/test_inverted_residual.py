"""fastops.inverted_residual (MobileNet V2's / V3's block, with or without expansion and
squeeze-excite, BatchNorms folded) against its reference composition, and InvertedResidual's
inference running it."""

import copy

import pytest
import torch

import fastops
from fastops import reference
from helpers import check_gradients_against_reference, poisoned_memory, randomise_bn

torchvision = pytest.importorskip("torchvision")

ACTS = ("relu6", "hardswish", "relu")


def _args(n, c, e, o, h, w, k, stride, act, residual, seed=0, dtype=torch.float32, se=False, expand=True):
    """x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride, act, residual [, se_w1, se_b1, se_w2, se_b2];
    expand=False: w1, s1, b1 None (a block without expansion, e == c)."""
    assert expand or e == c
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = (r(n, c, h, w) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    w1, w2, w3 = r(e, c, 1, 1) * c ** -0.5, r(e, 1, k, k) / k, r(o, e, 1, 1) * e ** -0.5
    vec = lambda m: (torch.rand(m, generator=gen) + 0.5, torch.randn(m, generator=gen) * 0.2)  # noqa: E731
    (s1, b1), (s2, b2), (s3, b3) = vec(e), vec(e), vec(o)
    tensors = [t.to(dtype) for t in (w1, s1, b1, w2, s2, b2, w3, s3, b3)]
    if not expand:
        tensors[:3] = [None] * 3
    se_tensors = []
    if se:  # squeeze to a quarter (at least 2), fc1 4-D as torchvision's, fc2 2-D
        sq = max(2, e // 4)
        se_tensors = [t.to(dtype) for t in (r(sq, e, 1, 1) * e ** -0.5, r(sq) * 0.5, r(e, sq) * sq ** -0.5 * 3, r(e))]
    return (x, *tensors, stride, act, residual, *se_tensors)


# (N, C, E, O, H, W, k, stride, residual): MobileNet shapes shrunk, odd sizes, N=1 (image split
# across threads), 56-wide rows (several bands per image, halo rows kept), 7x7 maps with N=4
# (several images per task), 1-pixel outputs, and a 64x64 map of 288 expanded channels (with
# squeeze-excite a task keeps the image's depthwise rows, 4.5 MiB: more than the 4 MiB a thread
# keeps between calls, so a buffer of the call's own)
CASES = [
    (2, 24, 144, 24, 56, 56, 3, 1, True),
    (1, 16, 96, 24, 57, 55, 3, 2, False),
    (3, 40, 120, 40, 13, 14, 5, 1, True),
    (2, 24, 72, 40, 27, 28, 5, 2, False),
    (4, 160, 960, 160, 7, 7, 3, 1, True),
    (5, 19, 37, 11, 7, 5, 3, 2, False),
    (1, 8, 20, 8, 1, 1, 3, 1, True),
    (2, 6, 33, 6, 2, 3, 5, 1, True),
    (1, 16, 288, 16, 64, 64, 3, 1, True),
]


# Blocks without expansion (MobileNet V2's first, 32 -> 16; V3-Large's first, 16 -> 16 + x;
# V3-Small's first, stride 2 with squeeze-excite), shrunk: several images per task (7x7), one
# pixel, and 130x200 maps (several bands per image, rows read from x in place)
NO_EXPANSION = [
    (2, 32, 32, 16, 23, 21, 3, 1, False),
    (3, 16, 16, 16, 13, 14, 3, 1, True),
    (2, 16, 16, 16, 15, 17, 3, 2, False),
    (4, 24, 24, 24, 7, 7, 5, 1, True),
    (1, 8, 8, 8, 1, 1, 3, 1, True),
    (1, 16, 16, 8, 130, 200, 3, 1, False),
    (2, 19, 19, 11, 33, 30, 5, 2, False),
]


@pytest.mark.parametrize("case,expand", [(c, True) for c in CASES] + [(c, False) for c in NO_EXPANSION],
                         ids=lambda v: str(v) if isinstance(v, tuple) else ("expand" if v else "no_expand"))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("se", (False, True), ids=("plain", "se"))
def test_matches_reference(case, expand, act, threads, se):
    n, c, e, o, h, w, k, stride, residual = case
    args = _args(n, c, e, o, h, w, k, stride, act, residual, seed=hash((case, act)) % 1000, se=se, expand=expand)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with poisoned_memory(torch.empty(n, o, h, w)):
            got = torch.ops.fastops.inverted_residual(*args)
    finally:
        torch.set_num_threads(old)
    expected = reference.inverted_residual(*args)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("layout", ("nchw", "channels_last", "sliced"))
def test_functional_any_layout_and_dtype(layout):
    """fastops.ops.inverted_residual: the kernel for channels_last float32, the composition of
    fastops' ops otherwise (NCHW keeps NCHW; float64), the same numbers."""
    args = list(_args(2, 12, 40, 12, 9, 11, 3, 1, "hardswish", True))
    x = args[0]
    if layout == "nchw":
        x = x.contiguous()
    elif layout == "sliced":
        x = torch.cat([x, x], 3)[..., ::2]
    args[0] = x
    got = fastops.ops.inverted_residual(*args)
    torch.testing.assert_close(got, reference.inverted_residual(*args), rtol=1e-5, atol=1e-4)
    if layout == "nchw":
        assert got.is_contiguous()
    args64 = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    torch.testing.assert_close(fastops.ops.inverted_residual(*args64), reference.inverted_residual(*args64))


@pytest.mark.parametrize("expand", (True, False), ids=("expand", "no_expand"))
@pytest.mark.parametrize("se", (False, True), ids=("plain", "se"))
def test_gradients_of_the_kernel(se, expand):
    """The op's autograd formula (recompute with the fused ops, chain their backward ops) against
    autograd through the reference, every input."""
    args = _args(2, 10, 30 if expand else 10, 10, 9, 8, 3, 1, "relu6", True, se=se, expand=expand)
    check_gradients_against_reference(torch.ops.fastops.inverted_residual, reference.inverted_residual, args)


@pytest.mark.parametrize("expand", (True, False), ids=("expand", "no_expand"))
@pytest.mark.parametrize("se", (False, True), ids=("plain", "se"))
def test_gradcheck_float64(se, expand):
    args = _args(1, 3, 5 if expand else 3, 3, 5, 4, 3, 2, "hardswish", False, dtype=torch.float64, se=se,
                 expand=expand)
    tensors = [a.requires_grad_() for a in args if isinstance(a, torch.Tensor)]
    m = 10 if expand else 7  # the block's tensors before stride (x, [w1, s1, b1,] w2, ..., b3)

    def fn(*t):
        w1_s1_b1 = t[1:4] if expand else (None, None, None)
        return fastops.ops.inverted_residual(t[0], *w1_s1_b1, *t[m - 6:m], 2, "hardswish", False, *t[m:])

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("expand", (True, False), ids=("expand", "no_expand"))
@pytest.mark.parametrize("se", (False, True), ids=("plain", "se"))
def test_opcheck(se, expand):
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a
            for a in _args(2, 8, 24 if expand else 8, 8, 6, 5, 3, 1, "relu6", True, se=se, expand=expand)]
    torch.library.opcheck(torch.ops.fastops.inverted_residual.default, tuple(args))


def test_compile_fullgraph():
    torch._dynamo.reset()
    args = _args(2, 8, 24, 8, 6, 5, 3, 2, "hardswish", False)
    fn = torch.compile(lambda *a: torch.ops.fastops.inverted_residual(*a), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(*args), reference.inverted_residual(*args), rtol=1e-5, atol=1e-5)


def test_errors_name_the_op_and_argument():
    good = list(_args(1, 8, 24, 8, 6, 6, 3, 1, "relu6", True))

    def fails(i, value, exc, text):
        bad = list(good)
        bad[i] = value
        for fn in (torch.ops.fastops.inverted_residual, fastops.ops.inverted_residual):
            with pytest.raises(exc, match=text):
                fn(*bad)

    fails(1, torch.randn(24, 7, 1, 1), ValueError, "inverted_residual.*'w1'")
    fails(4, torch.randn(24, 1, 4, 4), ValueError, "inverted_residual.*'w2'")
    fails(7, torch.randn(8, 23, 1, 1), ValueError, "inverted_residual.*'w3'")
    fails(8, torch.randn(9), ValueError, "inverted_residual.*'s3'")
    fails(10, 2, ValueError, "inverted_residual.*residual")
    fails(11, "gelu", ValueError, "inverted_residual.*'act'")
    fails(0, torch.randn(1, 8, 6), ValueError, "inverted_residual.*'x'")
    se = list(_args(1, 8, 24, 8, 6, 6, 3, 1, "relu6", True, se=True)[13:])
    for fn in (torch.ops.fastops.inverted_residual, fastops.ops.inverted_residual):
        with pytest.raises(ValueError, match="inverted_residual.*'se_w1', 'se_b1', 'se_w2' and 'se_b2' go together"):
            fn(*good, se[0], None, se[2], se[3])
        with pytest.raises(ValueError, match="inverted_residual.*'se_w2'"):
            fn(*good, se[0], se[1], se[2][:, :-1], se[3])
    with pytest.raises(TypeError, match="inverted_residual.*'x'"):
        torch.ops.fastops.inverted_residual(good[0].double(), *good[1:])
    for fn in (torch.ops.fastops.inverted_residual, fastops.ops.inverted_residual):
        for i in (1, 2, 3):  # the expansion's three arguments go together
            with pytest.raises(ValueError, match="inverted_residual.*'w1', 's1' and 'b1' go together"):
                fn(good[0], *[None if j == i else good[j] for j in (1, 2, 3)], *good[4:])
        with pytest.raises(ValueError, match="inverted_residual.*'w2'"):  # without expansion, E = C = 8
            fn(good[0], None, None, None, *good[4:])


def _tv_block(inp, oup, stride, expand):
    block = torchvision.models.mobilenetv2.InvertedResidual(inp, oup, stride, expand)
    return randomise_bn(block, seed=inp * 100 + oup).eval()


@pytest.mark.parametrize("inp,oup,stride,expand", [(24, 24, 1, 6), (16, 24, 2, 6), (32, 32, 1, 4), (24, 40, 1, 3),
                                                   (32, 16, 1, 1), (16, 16, 1, 1)])
def test_module_inference_runs_the_block_kernel(inp, oup, stride, expand):
    """fastops.optimize's (and the builders') InvertedResidual in eval mode without autograd runs
    the block as one kernel (CPU, channels_last float32) with torchvision's answer; with autograd,
    in NCHW, with FUSED_BLOCKS off or a BN in training mode it takes the per-conv path, same answer."""
    from fastops.nn import mobilenet

    theirs = _tv_block(inp, oup, stride, expand)
    ours = fastops.optimize(copy.deepcopy(theirs))
    assert isinstance(ours, fastops.nn.InvertedResidual)
    x = (torch.randn(3, inp, 17, 15) * 2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert mobilenet._block_steps(ours.conv) is not None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert got.is_contiguous(memory_format=torch.channels_last)

    def kernel_calls(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = fn()
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)
        return sum(e.name == "fastops::inverted_residual" for e in prof.events())

    with torch.no_grad():
        assert kernel_calls(lambda: ours(x)) == 1
        assert kernel_calls(lambda: ours(x.contiguous())) == 0
    assert kernel_calls(lambda: ours(x)) == 0  # autograd on
    try:
        mobilenet.FUSED_BLOCKS = False
        with torch.no_grad():
            assert kernel_calls(lambda: ours(x)) == 0
    finally:
        mobilenet.FUSED_BLOCKS = True
    bn = ours.conv[-1]
    bn.train()
    with torch.no_grad():  # batch statistics: a different answer, and not the kernel's
        assert not torch.equal(ours(x), expected)
    bn.eval()


@pytest.mark.parametrize("n", (1, 2))
def test_v3_blocks_run_the_kernel(n):
    """MobileNet V3-Large through fastops.optimize: every block (the first, without expansion,
    too) runs the block kernel, those with squeeze-excite when there are at least as many images
    as threads; torchvision's answer either way."""
    from fastops.nn import mobilenet

    tv = torchvision.models.mobilenet_v3_large().eval()
    ours = fastops.optimize(copy.deepcopy(tv))
    blocks = [b for b in ours.features if isinstance(b, fastops.nn.InvertedResidual)]
    found = [mobilenet._block_steps(b.block) for b in blocks]
    assert all(f is not None for f in found) and len(blocks) == 15
    assert [len(f[0]) for f in found] == [2] + [3] * 14  # features.1 has no expansion
    with_se = sum(f is not None and f[2] is not None for f in found)
    assert with_se == 8
    x = torch.randn(n, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = ours(x)
    finally:
        torch.set_num_threads(old)
    calls = sum(e.name == "fastops::inverted_residual" for e in prof.events())
    assert calls == len(blocks) - (with_se if n < 2 else 0)
    with torch.no_grad():
        torch.testing.assert_close(got, tv(x), rtol=1e-4, atol=1e-4)
