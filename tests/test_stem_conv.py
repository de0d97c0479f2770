"""fastops.stem_conv_bn_act (a network's first layer: dense conv + folded BN + activation [+ max
pool]) against its reference, and the stems of the models running it."""

import pytest
import torch

import fastops
from fastops import reference
from helpers import check_gradients_against_reference, num_threads, poisoned_memory, randomise_bn

ACTS = ("relu", "relu6", "hardswish", "none", "silu")

# (N, C, H, W, OC, kernel, stride, padding, pool (kernel, stride, padding) or None): ShuffleNet's
# stem (3 -> 24, 3x3 s2, pool 3 s2 p1) and MobileNet's (3 -> 32 / 16, no pool) on odd maps,
# ResNet's (7x7 s2 p3, 64 channels, pool), more than 64 channels (two channel blocks), stride 1
# with a 2x2 pool, rectangular kernels, strides, paddings and pools, one pixel, tiny maps
CASES = [
    (2, 3, 32, 30, 24, 3, 2, 1, (3, 2, 1)),
    (1, 3, 29, 31, 32, 3, 2, 1, None),
    (2, 3, 17, 19, 16, 3, 2, 1, None),
    (1, 3, 23, 21, 64, 7, 2, 3, (3, 2, 1)),
    (2, 4, 9, 8, 70, 3, 1, 1, (2, 2, 0)),
    (3, 1, 11, 10, 5, (3, 1), (2, 1), (1, 0), ((3, 2), (2, 1), (1, 0))),
    (1, 3, 1, 1, 8, 3, 1, 1, None),
    (2, 3, 4, 4, 8, 3, 2, 1, (3, 2, 1)),
    (1, 2, 6, 5, 40, 5, 3, 2, (2, 1, 1)),
]


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _args(case, act, seed=0, dtype=torch.float32, affine=True):
    n, c, h, w, oc, k, stride, padding, pool = case
    gen = torch.Generator().manual_seed(seed)
    kh, kw = _pair(k)
    x = (torch.randn(n, c, h, w, generator=gen) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(oc, c, kh, kw, generator=gen) * (c * kh * kw) ** -0.5).to(dtype)
    scale = (torch.rand(oc, generator=gen) + 0.5).to(dtype) if affine else None
    shift = (torch.randn(oc, generator=gen) * 0.5).to(dtype) if affine else None
    pool = [_pair(p) for p in pool] if pool is not None else [[1, 1], [1, 1], [0, 0]]
    return [x, weight, scale, shift, _pair(stride), _pair(padding), act, *pool]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("threads", (1, 2))
def test_matches_reference(case, act, threads):
    args = _args(case, act, seed=hash((case, act)) % 1000, affine=act != "silu")
    expected = reference.stem_conv_bn_act(*args)
    with num_threads(threads), poisoned_memory(torch.empty(expected.shape)):
        got = torch.ops.fastops.stem_conv_bn_act(*args)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, expected.abs().max().item()))


def test_nan_propagates_through_the_pool():
    """max_pool2d keeps NaN: so does the kernel's pool."""
    args = _args(CASES[0], "relu6")
    args[0] = args[0].clone()
    args[0][1, 2, 7, 9] = float("nan")
    expected = reference.stem_conv_bn_act(*args)
    got = torch.ops.fastops.stem_conv_bn_act(*args)
    assert expected.isnan().any()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("layout", ("nchw", "channels_last", "sliced"))
def test_functional_any_layout_and_dtype(layout):
    """fastops.ops.stem_conv_bn_act: the kernel for channels_last float32 (made dense first when
    sliced), the reference otherwise (NCHW keeps NCHW; float64), the same numbers; int strides,
    paddings and pools accepted."""
    args = _args(CASES[0], "relu")
    x = args[0]
    if layout == "nchw":
        x = x.contiguous()
    elif layout == "sliced":
        x = torch.cat([x, x], 3)[..., ::2]
    got = fastops.ops.stem_conv_bn_act(x, *args[1:4], 2, 1, "relu", 3, 2, 1)
    torch.testing.assert_close(got, reference.stem_conv_bn_act(x, *args[1:]), rtol=1e-5, atol=1e-5)
    assert got.is_contiguous() if layout == "nchw" else got.is_contiguous(memory_format=torch.channels_last)
    args64 = [a.double() if isinstance(a, torch.Tensor) else a for a in [x] + args[1:]]
    torch.testing.assert_close(fastops.ops.stem_conv_bn_act(*args64), reference.stem_conv_bn_act(*args64))


@pytest.mark.parametrize("pool", (True, False), ids=("pool", "no_pool"))
@pytest.mark.parametrize("affine", (True, False), ids=("affine", "plain"))
def test_gradients_of_the_kernel(pool, affine):
    """The op's autograd formula (its backward op) against autograd through the reference."""
    case = (2, 3, 9, 8, 10, 3, 2, 1, (3, 2, 1) if pool else None)
    args = _args(case, "hardswish", affine=affine)
    check_gradients_against_reference(torch.ops.fastops.stem_conv_bn_act, reference.stem_conv_bn_act, args,
                                      n_grads=4 if affine else 2)


@pytest.mark.parametrize("pool", (True, False), ids=("pool", "no_pool"))
def test_gradients_with_float64_scale_and_shift(pool):
    """scale / shift in float64 with float32 x (the checks accept any float dtype for them): the
    affine runs in x's dtype both ways, and each gradient comes back in its input's dtype."""
    args = _args((2, 3, 9, 8, 10, 3, 2, 1, (3, 2, 1) if pool else None), "relu")
    args[2], args[3] = args[2].double(), args[3].double()
    check_gradients_against_reference(torch.ops.fastops.stem_conv_bn_act, reference.stem_conv_bn_act, args,
                                      n_grads=4)
    y = fastops.ops.stem_conv_bn_act(*args)
    got = torch.ops.fastops.stem_conv_bn_act_backward(torch.randn(y.shape), *args)
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.float64, torch.float64]


def test_backward_op_gradcheck_float64():
    """The backward op is autograd through the reference: float64 gradcheck of the functional
    path, and the backward op's answer against torch.autograd.grad of it."""
    args = _args((1, 3, 6, 5, 4, 3, 2, 1, (3, 2, 1)), "hardswish", dtype=torch.float64)
    tensors = [a.requires_grad_() for a in args[:4]]
    assert torch.autograd.gradcheck(lambda *t: fastops.ops.stem_conv_bn_act(*t, *args[4:]), tensors)
    y = fastops.ops.stem_conv_bn_act(*args)
    g = torch.randn(y.shape, dtype=torch.float64)
    want = torch.autograd.grad(y, tensors, g)
    got = torch.ops.fastops.stem_conv_bn_act_backward(g, *[t.detach() for t in tensors], *args[4:])
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("pool", (True, False), ids=("pool", "no_pool"))
def test_opcheck(pool):
    args = _args((2, 3, 8, 7, 20, 3, 2, 1, (3, 2, 1) if pool else None), "relu6")
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(torch.ops.fastops.stem_conv_bn_act.default, tuple(args))
    y = torch.ops.fastops.stem_conv_bn_act(*args)
    torch.library.opcheck(torch.ops.fastops.stem_conv_bn_act_backward.default,
                          (torch.randn(y.shape), *[a.detach() if isinstance(a, torch.Tensor) else a for a in args]))


def test_compile_fullgraph():
    torch._dynamo.reset()
    args = _args(CASES[0], "relu")
    fn = torch.compile(lambda *a: torch.ops.fastops.stem_conv_bn_act(*a), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(*args), reference.stem_conv_bn_act(*args), rtol=1e-5, atol=1e-5)


def test_errors_name_the_op_and_argument():
    good = _args(CASES[0], "relu")

    def fails(i, value, exc, text):
        bad = list(good)
        bad[i] = value
        for fn in (torch.ops.fastops.stem_conv_bn_act, fastops.ops.stem_conv_bn_act):
            with pytest.raises(exc, match=text):
                fn(*bad)

    fails(0, torch.randn(2, 3, 8), ValueError, "stem_conv_bn_act.*'x'")
    fails(1, torch.randn(24, 4, 3, 3), ValueError, "stem_conv_bn_act.*'weight'")
    fails(2, torch.randn(23), ValueError, "stem_conv_bn_act.*'scale'")
    fails(3, torch.randn(25), ValueError, "stem_conv_bn_act.*'shift'")
    fails(4, [0, 2], ValueError, "stem_conv_bn_act.*'stride'")
    fails(5, [-1, 1], ValueError, "stem_conv_bn_act.*'padding'")
    fails(6, "gelu", ValueError, "stem_conv_bn_act.*'act'")
    fails(7, [0, 3], ValueError, "stem_conv_bn_act.*'pool_kernel'")
    fails(9, [2, 1], ValueError, "stem_conv_bn_act.*'pool_padding'")
    fails(1, torch.randn(24, 3, 40, 3), ValueError, "stem_conv_bn_act.*larger than the padded input")
    fails(7, [40, 3], ValueError, "stem_conv_bn_act.*pool window")
    with pytest.raises(TypeError, match="stem_conv_bn_act.*'x'"):
        torch.ops.fastops.stem_conv_bn_act(good[0].double(), *good[1:])


@pytest.mark.parametrize("source", ("optimize", "builder_v2", "builder_v1"))
def test_networks_run_the_stem_kernel(source):
    """ShuffleNet V2 through fastops.optimize (torchvision's model, its class swapped) and the
    fastops builders of ShuffleNet V2 and V1: in eval mode without autograd, channels_last
    float32, the stem conv + max pool is one stem_conv_bn_act call, with the unfused answer;
    with FUSED_STEMS off, autograd on, NCHW input or the stem's BN in training mode, none."""
    import copy

    from fastops.nn import stem

    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    if source == "optimize":
        tv = torchvision.models.shufflenet_v2_x0_5().eval()
        model = fastops.optimize(copy.deepcopy(tv))
        assert type(model).__name__ == "ShuffleNetV2" and type(model).__module__.startswith("fastops")
    else:
        model = (fastops.models.shufflenet_v2_x0_5() if source == "builder_v2"
                 else fastops.models.shufflenet_v1(groups=3, width_mult=0.5)).eval()
    randomise_bn(model.conv1)  # trained-looking BN statistics for the stem
    x = torch.randn(2, 3, 48, 40).contiguous(memory_format=torch.channels_last)

    def calls(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = fn()
        return y, sum(e.name == "fastops::stem_conv_bn_act" for e in prof.events())

    try:
        stem.FUSED_STEMS = False
        with torch.no_grad():
            expected, n = calls(lambda: model(x))
        assert n == 0
    finally:
        stem.FUSED_STEMS = True
    with torch.no_grad():
        got, n = calls(lambda: model(x))
        assert n == 1
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert calls(lambda: model(x.contiguous()))[1] == 0
        if source == "optimize":
            torch.testing.assert_close(got, tv(x), rtol=1e-4, atol=1e-4)
    assert calls(lambda: model(x))[1] == 0  # autograd on
    model.conv1[1].train()
    with torch.no_grad():
        assert calls(lambda: model(x))[1] == 0
