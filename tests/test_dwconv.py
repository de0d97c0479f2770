"""dwconv_bn_act through fastops.ops (C++ CPU kernels; CUDA kernels where a GPU is present):
values and gradients against the float64 reference over kernel sizes, strides, dilations,
multipliers, paddings, layouts and dtypes; errors; gradcheck. The Triton kernels have their
own sweep in test_dwconv_triton.py."""

import itertools

import pytest
import torch

import fastops
from fastops import reference
from helpers import TOL, make_layout, poisoned_memory, randn

ACTS = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu")


def _case(device, dtype, n, c, h, w, k, mult=1, affine=True, layout="contiguous"):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = make_layout(randn((n, c, h, w), dtype, device, scale=2.0), layout)
    weight = randn((c * mult, 1, kh, kw), dtype, device, scale=0.5)
    scale = randn((c * mult,), torch.float32, device, scale=1.0) if affine else None
    shift = randn((c * mult,), torch.float32, device, scale=1.0) if affine else None
    return x, weight, scale, shift


def _ref(x, weight, scale, shift, stride, padding, dilation, act):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return reference.dwconv_bn_act(d(x), d(weight), d(scale), d(shift), stride, padding, dilation, act)


def _assert_matches(y, expected, dtype):
    """Relative to the output's scale: sums of up to k*k products carry that much rounding."""
    tol = TOL[dtype]
    torch.testing.assert_close(
        y.double(), expected, rtol=tol["rtol"], atol=tol["rtol"] * max(1.0, expected.abs().max().item())
    )


def _expected_format(x):
    return torch.channels_last if fastops._layout.conv_output_format(x) == torch.channels_last else torch.contiguous_format


GEOMETRIES = [
    # k, stride, dilation, padding (None: "same"-style k//2 * dilation), mult, (h, w)
    (3, 1, 1, None, 1, (13, 18)),
    (3, 2, 1, None, 1, (14, 17)),
    (5, 1, 1, None, 1, (11, 12)),
    (5, 2, 1, None, 1, (15, 16)),
    (7, 1, 1, None, 1, (9, 23)),
    (3, 1, 2, None, 1, (12, 12)),
    (5, 2, 2, 1, 1, (17, 19)),   # padding smaller than k//2
    (3, 1, 1, 3, 1, (6, 7)),     # padding larger than k//2
    (1, 1, 1, 0, 1, (5, 9)),
    (2, 1, 1, 0, 1, (6, 6)),     # even kernel
    (4, 2, 1, 1, 1, (9, 10)),
    ((3, 5), 1, 1, 1, 1, (8, 11)),  # non-square kernel
    (3, 1, 1, 1, 2, (7, 9)),     # channel multiplier 2
    (3, 2, 1, 1, 3, (8, 8)),     # multiplier 3, stride 2
    (3, 2, 1, 0, 1, (3, 3)),     # 1x1 output
    (7, 3, 1, 3, 1, (10, 13)),   # stride 3
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"k{g[0]}s{g[1]}d{g[2]}p{g[3]}m{g[4]}")
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "strided"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_forward_geometries(device, geom, layout, dtype):
    k, s, d, p, m, (h, w) = geom
    kh = k if isinstance(k, int) else k[0]
    pad = (kh // 2) * d if p is None else p
    c = 19 if m == 1 else 5  # 19: a full 16-channel vector plus a tail
    x, weight, scale, shift = _case(device, dtype, 2, c, h, w, k, m, layout=layout)
    with poisoned_memory(x):
        y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, s, pad, d, "relu6")
    expected = _ref(x, weight, scale, shift, s, pad, d, "relu6")
    assert y.shape == expected.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=_expected_format(x))
    _assert_matches(y, expected, dtype)


@pytest.mark.parametrize("c", (1, 7, 16, 19, 32, 45, 56, 77))
@pytest.mark.parametrize("k,s,w", ((3, 1, 13), (3, 2, 7), (5, 1, 6), (5, 2, 17), (3, 1, 2), (3, 1, 7), (5, 1, 14)),
                         ids=str)
def test_forward_channel_blocks_channels_last(device, c, k, s, w):
    """channels_last goes through the channels in pairs and singles of 16-channel blocks, the last
    overlapping the one before; rows in groups of four pixels, interior or through the tap table:
    every channel count class (< 16, 16, 16 < C < 32, multiples of 32, a remainder <= 16 or > 16)
    and widths with and without interior groups."""
    x, weight, scale, shift = _case(device, torch.float32, 2, c, 5, w, k, layout="channels_last")
    with poisoned_memory(x):
        y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, s, k // 2, 1, "hardswish")
    _assert_matches(y, _ref(x, weight, scale, shift, s, k // 2, 1, "hardswish"), torch.float32)


@pytest.mark.parametrize("threads", (1, 2, 3))
@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("k,p,h", ((3, 1, 7), (3, 0, 4), (3, 2, 1), (5, 2, 5), (5, 1, 8), (5, 4, 2), (3, 1, 3),
                                   (3, 1, 13), (5, 2, 11)), ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("layout", ("channels_last", "contiguous"))
def test_forward_row_blocks(device, layout, k, p, h, stride, threads, dtype):
    """3x3 and 5x5 with stride 1 or 2 go through tiles of output rows x pixels of 16 channels
    (3x3 stride 1: 3 x 4; 3x3 stride 2 and 5x5: 4 x 2), NCHW by blocks of 16 planes transposed
    into a channels_last scratch and back: heights and widths that leave partial tiles (after
    whole ones too) and planes of fewer or not a multiple of 16 pixels (the transposes' tails), paddings below,
    at and above k//2 (rows and columns wholly in the padding), a remainder channel block (NCHW:
    written only where the last block is new), and the rows (NCHW: blocks) of a batch split
    between threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for c, w in ((19, 9), (35, 6), (16, 3), (48, 16)):
            x, weight, scale, shift = _case(device, dtype, 3, c, h, w, k, layout=layout)
            with poisoned_memory(x):
                y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, stride, p, 1, "hardswish")
            _assert_matches(y, _ref(x, weight, scale, shift, stride, p, 1, "hardswish"), dtype)
    finally:
        torch.set_num_threads(saved)


# rows x stride x width x channels between 512 Ki and 768 Ki: over 1 MiB of input rows in bf16 on
# one thread, under it in fp32 on three
@pytest.mark.parametrize("k,s,c,hw", ((3, 1, 35, (95, 95)), (5, 2, 19, (160, 97)), (3, 2, 48, (112, 61)),
                                     (5, 1, 16, (230, 88))), ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_forward_address_order_channels_last(k, s, c, hw, dtype):
    """channels_last tiles whose input rows per thread exceed 1 MiB go in address order (every
    channel block at each tile position) instead of one channel block's sweep along the rows:
    on one thread these maps take that path, on three threads (a third of the rows each, fp32 and
    bf16 alike under 1 MiB) the sweeps, except 3x3 stride 1, which always goes in address order.
    Both equal the reference, and each other bit for bit (the same sums in the same order)."""
    x, weight, scale, shift = _case("cpu", dtype, 2, c, *hw, k, layout="channels_last")
    expected = _ref(x, weight, scale, shift, s, k // 2, 1, "relu6")
    saved = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            with poisoned_memory(x):
                got.append(fastops.ops.dwconv_bn_act(x, weight, scale, shift, s, k // 2, 1, "relu6"))
            _assert_matches(got[-1], expected, dtype)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(got[0], got[1])


@pytest.mark.parametrize("k,d,p,hw", ((3, 1, 1, (7, 7)), (5, 1, 2, (7, 7)), (3, 2, 2, (7, 9)), (3, 1, 3, (4, 5)),
                                       (5, 1, 1, (6, 11)), (1, 1, 0, (3, 2)), (3, 1, 1, (14, 14))), ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_forward_small_maps_nchw(device, k, d, p, hw, dtype):
    """NCHW stride 1 on maps narrower than a vector: rows packed back to back (flat planes),
    results computed across row ends and the extra columns dropped."""
    x, weight, scale, shift = _case(device, dtype, 2, 5, *hw, k, mult=2)
    with poisoned_memory(x):
        y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, 1, p, d, "silu")
    _assert_matches(y, _ref(x, weight, scale, shift, 1, p, d, "silu"), dtype)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("affine", (True, False))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_forward_activations(device, act, affine, layout):
    x, weight, scale, shift = _case(device, torch.float32, 1, 24, 9, 10, 3, affine=affine, layout=layout)
    y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, act)
    _assert_matches(y, _ref(x, weight, scale, shift, 1, 1, 1, act), torch.float32)


@pytest.mark.parametrize("act", ("sigmoid", "silu"))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_sigmoid_over_the_whole_float_range(device, act, layout):
    """The CPU kernels' 16-lane exp (csrc/cpu/simd.h): sigmoid and silu within a few ulp of torch's
    float32 ones from -100 to 100, at the ends of exp's range (+-87.3, +-88.7), at 0, inf and NaN
    (below 1e-37, where both are subnormal or zero, absolutely)."""
    special = [0.0, -0.0, 87.3, -87.3, 87.4, -87.4, 88.72, -88.72, 88.8, -88.8, 103.9, -104.0,
               float("inf"), float("-inf"), float("nan")]
    values = torch.cat([torch.linspace(-100, 100, 2 * 32 * 7 * 9 - len(special)), torch.tensor(special)])
    x = make_layout(values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))]
                    .reshape(2, 32, 7, 9).to(device), layout)
    weight = torch.ones(32, 1, 1, 1, device=device)  # a 1x1 depthwise conv of weight 1: y = act(x)
    y = fastops.ops.dwconv_bn_act(x, weight, None, None, 1, 0, 1, act)
    expected = torch.sigmoid(x) if act == "sigmoid" else torch.nn.functional.silu(x)  # float32, as the kernel
    torch.testing.assert_close(y, expected, rtol=4e-7, atol=1e-37, equal_nan=True)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_forward_other_dtypes(device, dtype, layout):
    x, weight, scale, shift = _case(device, dtype, 2, 6, 8, 9, 3, mult=2, layout=layout)
    y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, 2, 1, 1, "hardswish")
    assert y.dtype == dtype and y.is_contiguous(memory_format=_expected_format(x))
    _assert_matches(y, _ref(x, weight, scale, shift, 2, 1, 1, "hardswish"), dtype)


def test_forward_mobilenet_shape_large(device):
    """A MobileNet V2 layer: C144 56x56, N=2, both layouts, against the reference."""
    for layout in ("contiguous", "channels_last"):
        x, weight, scale, shift = _case(device, torch.float32, 2, 144, 56, 56, 3, layout=layout)
        y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu6")
        _assert_matches(y, _ref(x, weight, scale, shift, 1, 1, 1, "relu6"), torch.float32)


# The CUDA forward's channels_last vector kernel (csrc/cuda/dwconv.cu, dw_cl_vec_kernel: 16 bytes of
# channels per thread, multiplier 1), its per-thread code run on the host by the test op
# fastops_testing::dwconv_bn_act_cl_vec, which poisons its output with NaN first. No GPU needed:
# this checks the index arithmetic, the tap masks and the epilogue that the GPU runs.
CL_VEC_GEOMETRIES = [
    # k, stride, dilation, padding, (h, w)
    (3, 1, 1, 1, (7, 9)),
    (3, 2, 1, 1, (10, 11)),
    (3, 2, 1, 0, (9, 6)),
    (5, 1, 1, 2, (6, 13)),
    (5, 2, 1, 2, (11, 8)),
    (5, 2, 2, 1, (13, 12)),  # padding below (k // 2) * dilation
    (3, 1, 1, 4, (3, 5)),    # padding beyond the kernel: rows and columns of pure padding
    (7, 3, 1, 3, (10, 13)),  # any other size: runtime taps
    ((3, 5), 1, 2, (1, 4), (8, 11)),
    (1, 1, 1, 0, (4, 5)),
    (3, 2, 1, 0, (3, 3)),    # 1x1 output
]


def _check_cl_vec_cases(device, geom, dtype, run):
    k, s, d, p, (h, w) = geom
    lanes = 16 // torch.empty((), dtype=dtype).element_size()
    for n, c, act, affine in ((2, 3 * lanes, "relu6", True), (1, lanes, "hardswish", False),
                              (3, 2 * lanes, "silu", True)):
        x, weight, scale, shift = _case(device, dtype, n, c, h, w, k, affine=affine, layout="channels_last")
        if dtype == torch.float64 and affine:
            scale, shift = scale.double(), shift.double()
        y = run(x, weight, scale, shift, s, p, d, act)
        assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype
        _assert_matches(y, _ref(x, weight, scale, shift, s, p, d, act), dtype)


@pytest.mark.skipif(not fastops.has_cuda_kernels(), reason="a CPU-only build has no CUDA kernel code to emulate")
@pytest.mark.parametrize("geom", CL_VEC_GEOMETRIES, ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16, torch.float64), ids=str)
def test_cuda_channels_last_vector_kernel_emulated(geom, dtype):
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731

    def emulated(x, weight, scale, shift, s, p, d, act):
        return torch.ops.fastops_testing.dwconv_bn_act_cl_vec(x, weight, scale, shift, pair(s), pair(p), pair(d), act)

    _check_cl_vec_cases("cpu", geom, dtype, emulated)


@pytest.mark.skipif(not fastops.has_cuda_kernels(), reason="a CPU-only build has no CUDA kernel code to emulate")
def test_cuda_channels_last_vector_kernel_emulation_opcheck():
    """The test hook's schema and fake impl (shapes, layout) agree with its kernel."""
    x, weight, scale, shift = _case("cpu", torch.float32, 2, 8, 7, 9, 3, layout="channels_last")
    for args in ((x, weight, scale, shift, [1, 1], [1, 1], [1, 1], "relu6"),
                 (x, weight, None, None, [2, 1], [0, 2], [1, 2], "none")):
        torch.library.opcheck(torch.ops.fastops_testing.dwconv_bn_act_cl_vec.default, args)


@pytest.mark.parametrize("geom", CL_VEC_GEOMETRIES, ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16, torch.float64), ids=str)
def test_forward_channels_last_vector_shapes(device, geom, dtype):
    """The same cases through fastops.ops: on a GPU, the vector kernel itself."""
    _check_cl_vec_cases(device, geom, dtype, fastops.ops.dwconv_bn_act)


@pytest.mark.skipif(not fastops.has_cuda_kernels(), reason="a CPU-only build has no CUDA kernel code to emulate")
def test_cuda_channels_last_vector_kernel_scope():
    """The cases the vector kernel does not take go to the tiled kernel: NCHW, a multiplier, a
    channel count that is not a multiple of 16 bytes, data not 16-byte aligned."""
    emulated = torch.ops.fastops_testing.dwconv_bn_act_cl_vec
    args = ([1, 1], [1, 1], [1, 1], "relu6")
    x, weight, _, _ = _case("cpu", torch.float32, 1, 8, 5, 6, 3, layout="channels_last")
    emulated(x, weight, None, None, *args)
    for bad_x, bad_w in ((x.contiguous(), weight), (x, weight.repeat(2, 1, 1, 1)), (x[:, :6], weight[:6]),
                         (torch.randn(5 * 6 * 8 + 1)[1:].view(1, 5, 6, 8).permute(0, 3, 1, 2), weight)):
        with pytest.raises(ValueError, match="does not take this case"):
            emulated(bad_x, bad_w, None, None, *args)


BACKWARD_CASES = list(itertools.product(
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 1, 2, 4, 1), (3, 1, 1, 1, 2), (4, 2, 1, 0, 1)],
    ["relu6", "hardswish", "silu", "none"],
    ["contiguous", "channels_last"],
))


@pytest.mark.parametrize("geom,act,layout", BACKWARD_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("affine", (True, False))
def test_backward_matches_reference(device, geom, act, layout, affine):
    k, s, d, p, m = geom
    # 19 channels: the fused backward pass's 16-channel vectors and its remainder (channels_last)
    x, weight, scale, shift = _case(device, torch.float32, 2, 19 if m == 1 else 3, 11, 12, k, m, affine, layout)
    leaves = [t.detach().requires_grad_() for t in (x, weight, scale, shift) if t is not None]
    args = leaves + [None, None] * (not affine)
    y = fastops.ops.dwconv_bn_act(*args, stride=s, padding=p, dilation=d, act=act)
    g = make_layout(randn(y.shape, torch.float32, device), "permuted")  # gradient in another layout
    grads = torch.autograd.grad(y, leaves, g)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_args = ref_leaves + [None, None] * (not affine)
    yr = reference.dwconv_bn_act(*ref_args, stride=s, padding=p, dilation=d, act=act)
    ref_grads = torch.autograd.grad(yr, ref_leaves, g.double())
    for name, got, want in zip(("x", "weight", "scale", "shift"), grads, ref_grads):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()), msg=name)
    assert grads[0].is_contiguous(memory_format=_expected_format(x))


@pytest.mark.parametrize("k,s", ((3, 1), (3, 2), (5, 1), (5, 2)), ids=str)
@pytest.mark.parametrize("pad", ("none", "half", "full"))
@pytest.mark.parametrize("n,c,h,w", ((1, 16, 13, 11), (3, 19, 9, 14), (2, 40, 16, 7), (1, 24, 61, 5)), ids=str)
@pytest.mark.parametrize("layout", ("channels_last", "contiguous"))
def test_backward_conv_kernel(k, s, pad, n, c, h, w, layout):
    """The plain convolution's gradients by the float32 kernel (3x3 / 5x5, stride 1 or 2):
    grad_x gathered and grad_w and the sum of g summed over the same rows, channels_last per task
    of input rows (its slots added in task order), NCHW per 16-plane block of an image
    transposed into a scratch image (its sums added image by image). Paddings 0, k//2 and k-1
    (every border case of the column ranges), 16 channels or a remainder (an overlapping last
    block whose sums and grad_x planes must not count twice), odd maps, one image or several, a
    tall narrow map (many tasks of a few rows). All four outputs of the backward op against the
    float64 reference, and the same bits on 1 and 2 threads."""
    p = {"none": 0, "half": k // 2, "full": k - 1}[pad]
    x, weight, _, _ = _case("cpu", torch.float32, n, c, h, w, k, affine=False, layout=layout)
    y = fastops.ops.dwconv_bn_act(x, weight, None, None, s, p, 1, "none")
    g = make_layout(randn(y.shape, torch.float32, "cpu"), layout)
    geometry = ([s, s], [p, p], [1, 1])
    got = torch.ops.fastops.dwconv_bn_act_backward(g, x, weight, None, None, *geometry, "none")
    leaves = [x.double().requires_grad_(), weight.double().requires_grad_(),
              torch.ones(c, dtype=torch.float64, requires_grad=True),
              torch.zeros(c, dtype=torch.float64, requires_grad=True)]
    yr = reference.dwconv_bn_act(*leaves, stride=s, padding=p, dilation=1, act="none")
    want = torch.autograd.grad(yr, leaves, g.double())
    for name, a, b in zip(("x", "weight", "scale", "shift"), got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()), msg=name)
    assert got[0].is_contiguous(memory_format=_expected_format(x))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fastops.dwconv_bn_act_backward(g, x, weight, None, None, *geometry, "none")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(got, one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k,p,d,c", ((3, 1, 1, 19), (5, 2, 1, 33), (3, 2, 2, 16), ((3, 5), (1, 2), 1, 20),
                                     (3, 0, 1, 17), (3, 3, 1, 18), (1, 0, 1, 16)), ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_backward_stride1_input_gradient_by_the_forward_kernel(k, p, d, c, dtype, layout):
    """Stride 1: the input's gradient is computed as the depthwise convolution of the output's
    gradient with the kernels turned half a turn, padded by d*(k-1) - p, through the forward
    kernels (a rectangular kernel, dilation, 1x1; the 3x3 / 5x5 unit-dilation cases take the
    backward conv kernel instead, tested above, here also in bf16). Both gradients against the
    float64 reference, both layouts, bf16 at its tolerance."""
    x, weight, scale, shift = _case("cpu", dtype, 2, c, 13, 11, k, layout=layout)
    xr, wr = x.detach().requires_grad_(), weight.detach().requires_grad_()
    y = fastops.ops.dwconv_bn_act(xr, wr, scale, shift, 1, p, d, "relu6")
    g = randn(y.shape, dtype, "cpu")
    gx, gw = torch.autograd.grad(y, (xr, wr), g)
    xd, wd = x.double().requires_grad_(), weight.double().requires_grad_()
    yd = reference.dwconv_bn_act(xd, wd, scale.double(), shift.double(), 1, p, d, "relu6")
    ex, ew = torch.autograd.grad(yd, (xd, wd), g.double())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert gx.dtype == dtype and gx.is_contiguous(memory_format=_expected_format(x))
    torch.testing.assert_close(gx.double(), ex, rtol=tol, atol=tol * ex.abs().max().item())
    torch.testing.assert_close(gw.double(), ew, rtol=tol, atol=tol * ew.abs().max().item())


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_gradcheck_float64_stride1_input_gradient_by_the_forward_kernel(layout):
    """The stride-1 input gradient through the forward kernel's float64 loop (gradcheck), with a
    rectangular kernel, padding below k//2 on one side and dilation on the other."""
    x, weight, scale, shift = _case("cpu", torch.float64, 2, 3, 7, 6, (3, 5), layout=layout)
    inputs = [t.detach().requires_grad_() for t in (x, weight, scale.double(), shift.double())]
    f = lambda a, b, c, e: torch.ops.fastops.dwconv_bn_act(a, b, c, e, [1, 1], [0, 3], [2, 1], "silu")  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("geom", ((3, 1, 1, 1, 1), (5, 2, 1, 2, 1), (3, 1, 2, 2, 2)), ids=str)
def test_backward_op_without_affine_or_activation(device, geom, layout):
    """The backward op itself for the plain convolution (no scale, shift or activation:
    `dwconv_bn_act(x, w)`, where the CPU kernel skips recomputing the conv): all four outputs,
    the scale's and shift's gradients being those at scale = 1, shift = 0 (sums of g * z and g)."""
    k, s, d, p, m = geom
    x, weight, _, _ = _case(device, torch.float32, 2, 5, 9, 10, k, m, False, layout)
    y = fastops.ops.dwconv_bn_act(x, weight, None, None, s, p, d, "none")
    g = randn(y.shape, torch.float32, device)
    got = torch.ops.fastops.dwconv_bn_act_backward(g, x, weight, None, None, [s, s], [p, p], [d, d], "none")
    leaves = [x.double().requires_grad_(), weight.double().requires_grad_(),
              torch.ones(5 * m, dtype=torch.float64, device=device, requires_grad=True),
              torch.zeros(5 * m, dtype=torch.float64, device=device, requires_grad=True)]
    yr = reference.dwconv_bn_act(*leaves, stride=s, padding=p, dilation=d, act="none")
    want = torch.autograd.grad(yr, leaves, g.double())
    for name, a, b in zip(("x", "weight", "scale", "shift"), got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()), msg=name)


def test_backward_bfloat16(device):
    x, weight, scale, shift = _case(device, torch.bfloat16, 2, 16, 10, 10, 3, layout="channels_last")
    xr, wr = x.detach().requires_grad_(), weight.detach().requires_grad_()
    y = fastops.ops.dwconv_bn_act(xr, wr, scale, shift, 1, 1, 1, "hardswish")
    g = randn(y.shape, torch.bfloat16, device)
    gx, gw = torch.autograd.grad(y, (xr, wr), g)
    xd, wd = x.double().requires_grad_(), weight.double().requires_grad_()
    yd = reference.dwconv_bn_act(xd, wd, scale.double(), shift.double(), 1, 1, 1, "hardswish")
    ex, ew = torch.autograd.grad(yd, (xd, wd), g.double())
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    torch.testing.assert_close(gx.double(), ex, rtol=2e-2, atol=2e-2 * ex.abs().max().item())
    torch.testing.assert_close(gw.double(), ew, rtol=2e-2, atol=2e-2 * ew.abs().max().item())


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("act", ("hardswish", "silu", "relu6"))
def test_gradcheck_float64_all_four_inputs(device, layout, act):
    x, weight, scale, shift = _case(device, torch.float64, 1, 3, 6, 7, 3, mult=2, layout=layout)
    inputs = [t.detach().requires_grad_() for t in (x, weight, scale.double(), shift.double())]
    f = lambda a, b, c, e: torch.ops.fastops.dwconv_bn_act(a, b, c, e, [2, 1], [1, 1], [1, 2], act)  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("mult", (1, 2))
def test_stride_larger_than_the_input(layout, mult):
    """A stride far beyond the padded input (one output per axis): the reference's values and
    gradients, without scratch sized by the stride (the NCHW kernel's phase planes once took
    ~1 GB at stride 1e6 and raised std::bad_alloc at 1e8)."""
    x, weight, scale, shift = _case("cpu", torch.float32, 2, 16, 6, 7, 3, mult, layout=layout)
    stride = (10 ** 8, 10 ** 8 + 1)
    leaves = [t.detach().requires_grad_() for t in (x, weight)]
    y = fastops.ops.dwconv_bn_act(*leaves, scale, shift, stride, 1, 1, "relu6")
    assert y.shape == (2, 16 * mult, 1, 1)
    _assert_matches(y, _ref(x, weight, scale, shift, stride, 1, 1, "relu6"), torch.float32)
    g = randn(y.shape)
    got = torch.autograd.grad(y, leaves, g)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, weight)]
    yr = reference.dwconv_bn_act(*ref_leaves, scale.double(), shift.double(), stride, 1, 1, "relu6")
    for a, b in zip(got, torch.autograd.grad(yr, ref_leaves, g.double())):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_empty_batch(device):
    x, weight, scale, shift = _case(device, torch.float32, 0, 4, 5, 5, 3)
    y = fastops.ops.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu")
    assert y.shape == (0, 4, 5, 5)


BAD_ARGUMENTS = [
    # (what to change, expected exception, message fragment)
    (dict(x=lambda x: x[0]), ValueError, "argument 'x' must be 4-D"),
    (dict(x=lambda x: x.to(torch.int32)), TypeError, "argument 'x' must be a floating-point tensor"),
    (dict(weight=lambda w: torch.randn(6, 1, 3, 3)), ValueError, "not a multiple of the 4 channels"),
    (dict(weight=lambda w: w.view(2, 2, 3, 3)), ValueError, "argument 'weight' must have shape [C*m, 1, kh, kw]"),
    (dict(weight=lambda w: w.double()), TypeError, "argument 'weight' has dtype"),
    (dict(stride=0), ValueError, "argument 'stride' must be >= 1"),
    (dict(dilation=(1, 0)), ValueError, "argument 'dilation' must be >= 1"),
    (dict(padding=-1), ValueError, "argument 'padding' must be >= 0"),
    (dict(act="gelu"), ValueError, "argument 'act' must be one of"),
    (dict(weight=lambda w: torch.randn(4, 1, 9, 9)), ValueError, "is larger than the padded input"),
    (dict(scale=lambda s: s[:3]), ValueError, "argument 'scale' must have shape [4]"),
    (dict(shift=lambda s: s.view(2, 2)), ValueError, "argument 'shift' must have shape [4]"),
]


@pytest.mark.parametrize("change,exc,msg", BAD_ARGUMENTS, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("entry", ("ops", "torch.ops"))
def test_bad_arguments_are_clear_errors(change, exc, msg, entry):
    x, weight, scale, shift = _case("cpu", torch.float32, 1, 4, 6, 6, 3)
    kw = dict(x=x, weight=weight, scale=scale, shift=shift, stride=1, padding=1, dilation=1, act="relu6")
    for key, v in change.items():
        kw[key] = v(kw[key]) if callable(v) else v
    if entry == "torch.ops":
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        call = lambda: torch.ops.fastops.dwconv_bn_act(  # noqa: E731
            kw["x"], kw["weight"], kw["scale"], kw["shift"], pair(kw["stride"]), pair(kw["padding"]),
            pair(kw["dilation"]), kw["act"])
    else:
        call = lambda: fastops.ops.dwconv_bn_act(**kw)  # noqa: E731
    with pytest.raises(exc, match="fastops.dwconv_bn_act: .*" + msg.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        call()
