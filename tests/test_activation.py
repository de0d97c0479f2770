"""hardswish / hardsigmoid: every implementation (C++ CPU, Triton, CUDA C++) against the
reference, on odd shapes, every layout and dtype, forward, backward and in place."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import fastops
from fastops import reference
from helpers import LAYOUTS, assert_close, is_dense, make_layout, poisoned_memory, randn

OPS = ("hardswish", "hardsigmoid")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# one element, primes, a 4-D NCHW tensor with odd sizes, N=1, and (CPU only) more than 1M elements
SHAPES = [(1,), (7,), (1, 1, 1, 1), (3, 5, 7, 11), (1, 13, 17, 19), (2, 3, 1, 5)]
BIG_SHAPES = [(1_048_583,), (4, 257, 33, 37)]

TORCH_FN = {"hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid}


def _triton_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


class Impl:
    """One implementation of the ops: a device, a namespace of functions, a backend setting."""

    def __init__(self, name):
        self.name = name
        if name == "cpu":
            self.device, self.backend = "cpu", None
        elif name == "cuda":
            self.device, self.backend = "cuda", "cuda"
        else:
            self.device, self.backend = _triton_device(), "triton"

    def fn(self, op):
        if self.name == "triton":
            return getattr(fastops.triton, op)
        return getattr(fastops.ops, op)

    def context(self):
        return fastops.use_backend(self.backend) if self.device == "cuda" else contextlib.nullcontext()


IMPLS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", id="triton"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]


@pytest.fixture(params=IMPLS)
def impl(request):
    return Impl(request.param)


def _check_forward(impl, op, x):
    with impl.context(), poisoned_memory(x):
        y = impl.fn(op)(x)
    expected = TORCH_FN[op](x.double()).to(x.dtype)  # the truth, computed in float64
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert_close(y, expected)
    return y


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_torch(impl, op, dtype, shape):
    _check_forward(impl, op, randn(shape, dtype, impl.device))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_forward_layouts(impl, op, layout, dtype):
    x = make_layout(randn((2, 5, 7, 9), dtype, impl.device), layout)
    y = _check_forward(impl, op, x)
    if is_dense(x):  # output keeps the input's memory format exactly
        assert y.stride() == x.stride()
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", BIG_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_forward_large(op, shape, dtype):
    """More than 1M elements: the multi-threaded CPU path, split across tasks."""
    x = randn(shape, dtype)
    _check_forward(Impl("cpu"), op, x)
    _check_forward(Impl("cpu"), op, x.to(memory_format=torch.channels_last) if x.dim() == 4 else x)


@pytest.mark.parametrize("op", OPS)
def test_thread_count_does_not_change_results(op):
    x = randn((3_000_017,))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = getattr(fastops.ops, op)(x)
        torch.set_num_threads(max(2, threads))
        many = getattr(fastops.ops, op)(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16), ids=str)
def test_special_values(impl, op, dtype):
    """The kinks at +-3, zeros of both signs, infinities and NaN, forward and backward."""
    vals = [-3.0, 3.0, -2.999, 2.999, -0.0, 0.0, 1e-30, -1e30, 1e30, float("inf"), -float("inf"), float("nan")]
    x = torch.tensor(vals, dtype=dtype, device=impl.device)
    y = _check_forward(impl, op, x)
    assert torch.isnan(y[-1])
    g = randn(x.shape, dtype, impl.device)
    with impl.context():
        dx = impl.fn(f"{op}_backward")(g, x)
    expected = getattr(torch.ops.aten, f"{op}_backward")(g.double(), x.double()).to(dtype)
    # PyTorch's own kernels disagree on NaN for hardswish (scalar path: g, vector path: NaN);
    # fastops returns NaN for NaN, the value no one can mistake for a number.
    assert_close(dx[:-1], expected[:-1])
    assert torch.isnan(dx[-1]) if op == "hardswish" else dx[-1] == 0


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "strided"))
def test_backward_matches_torch(impl, op, dtype, layout):
    x0 = make_layout(randn((3, 6, 5, 7), dtype, impl.device), layout)
    g = make_layout(randn(x0.shape, dtype, impl.device), "permuted")  # gradient in another layout
    x = x0.detach().clone().requires_grad_()
    xr = x0.detach().double().requires_grad_()
    with impl.context():
        impl.fn(op)(x).backward(g)
    TORCH_FN[op](xr).backward(g.double())
    assert x.grad.dtype == dtype
    assert_close(x.grad, xr.grad.to(dtype))
    # the backward op called directly, and its output layout (the input's)
    with impl.context():
        dx = impl.fn(f"{op}_backward")(g, x0)
    assert_close(dx, xr.grad.to(dtype))
    if is_dense(x0):
        assert dx.stride() == x0.stride()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "strided", "offset"))
def test_inplace(impl, op, layout):
    x = make_layout(randn((2, 3, 5, 7), torch.float32, impl.device), layout)
    expected = TORCH_FN[op](x)
    ptr, stride = x.data_ptr(), x.stride()
    with impl.context():
        out = impl.fn(op)(x, inplace=True)
    assert out is x and x.data_ptr() == ptr and x.stride() == stride
    assert_close(x, expected)


@pytest.mark.parametrize("op", OPS)
def test_inplace_refuses_overlapping_memory(impl, op):
    x = randn((1, 5), device=impl.device).expand(4, 5)
    with impl.context(), pytest.raises(RuntimeError, match=f"fastops.{op}: argument 'x' has elements that share memory"):
        impl.fn(op)(x, inplace=True)
    if impl.name != "triton":
        with pytest.raises(RuntimeError, match=f"fastops.{op}: argument 'x' has elements that share memory"):
            getattr(torch.ops.fastops, f"{op}_")(x)
    else:
        with pytest.raises(RuntimeError, match=f"fastops.{op}: argument 'x' has elements that share memory"):
            getattr(fastops.triton.ops, f"{op}_")(x)


@pytest.mark.parametrize("op", OPS)
def test_inplace_under_autograd(impl, op):
    """As torch's: a non-leaf is overwritten and gradients still flow; a leaf is refused."""
    a = randn((4, 9), torch.float32, impl.device).requires_grad_()
    ar = a.detach().clone().requires_grad_()
    g = randn((4, 9), torch.float32, impl.device)
    with impl.context():
        h = a * 2
        out = impl.fn(op)(h, inplace=True)
        assert out is h
        out.backward(g)
    TORCH_FN[op](ar * 2, inplace=True).backward(g)
    assert_close(a.grad, ar.grad)
    with impl.context(), pytest.raises(RuntimeError, match="leaf"):
        impl.fn(op)(a, inplace=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", (torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64), ids=str)
def test_non_float_input_is_a_clear_error(impl, op, dtype):
    x = torch.ones(4, 4, device=impl.device).to(dtype)
    with impl.context():
        with pytest.raises(TypeError, match=f"fastops.{op}: argument 'x' must be a floating-point tensor"):
            impl.fn(op)(x)
        with pytest.raises(TypeError, match=f"fastops.{op}: argument 'x'"):
            impl.fn(op)(x, inplace=True)
        with pytest.raises(TypeError, match=f"fastops.{op}_backward: argument 'x'"):
            impl.fn(f"{op}_backward")(x, x)


@pytest.mark.parametrize("op", OPS)
def test_raw_ops_reject_bad_input(op):
    """torch.ops.fastops.* checks its arguments in C++ too: an error, never a crash."""
    with pytest.raises(TypeError, match=f"fastops.{op}: argument 'x' must be a floating-point tensor"):
        getattr(torch.ops.fastops, op)(torch.arange(10))
    x = randn((3, 4))
    bwd = getattr(torch.ops.fastops, f"{op}_backward")
    with pytest.raises(ValueError, match=f"fastops.{op}_backward: argument 'grad_out' has shape"):
        bwd(randn((4, 3)), x)
    with pytest.raises(TypeError, match=f"fastops.{op}_backward: argument 'grad_out' has dtype"):
        bwd(x.double(), x)
    with pytest.raises(TypeError, match=f"fastops.{op}: argument 'x' must be a torch.Tensor"):
        getattr(fastops.ops, op)([1.0, 2.0])


@pytest.mark.parametrize("op", OPS)
def test_meta_tensors(op):
    x = torch.empty(2, 3, 4, 5, device="meta").to(memory_format=torch.channels_last)
    y = getattr(fastops.ops, op)(x)
    assert y.device.type == "meta" and y.shape == x.shape and y.stride() == x.stride()


@pytest.mark.parametrize("op", OPS)
def test_empty_tensor(impl, op):
    x = torch.empty(0, 3, device=impl.device)
    assert impl.fn(op)(x).shape == (0, 3)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64_through_cpp_kernels(op):
    x = randn((3, 4, 5), torch.float64).requires_grad_()
    x.data[(x.data.abs() - 3).abs() < 1e-3] += 0.01  # keep finite differences off the kinks
    f = getattr(torch.ops.fastops, op)
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    g = randn((3, 4, 5), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(getattr(torch.ops.fastops, f"{op}_backward"), (g, x))


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64_through_triton_kernels(op):
    x = randn((2, 3, 5), torch.float64, _triton_device()).requires_grad_()
    x.data[(x.data.abs() - 3).abs() < 1e-3] += 0.01
    f = getattr(fastops.triton, op)
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("op", OPS)
def test_reference_module(op):
    x = randn((5, 6))
    torch.testing.assert_close(getattr(reference, op)(x), TORCH_FN[op](x), rtol=0, atol=0)
    g = randn((5, 6))
    assert_close(getattr(reference, f"{op}_backward")(g, x), getattr(torch.ops.aten, f"{op}_backward")(g, x))


# -------------------------------------------------------------------------------- modules


@pytest.mark.parametrize("name", ("Hardswish", "Hardsigmoid"))
@pytest.mark.parametrize("inplace", (False, True))
def test_modules_drop_in(name, inplace):
    ours, theirs = getattr(fastops.nn, name)(inplace=inplace), getattr(torch.nn, name)(inplace=inplace)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(theirs) and ours.state_dict().keys() == theirs.state_dict().keys()
    x = randn((2, 8, 5, 5)).to(memory_format=torch.channels_last)
    expected = theirs(x.clone())
    xin = x.clone()
    y = ours(xin)
    assert_close(y, expected)
    assert (y is xin) == inplace
    assert y.is_contiguous(memory_format=torch.channels_last)


# -------------------------------------------------------------------------------- CUDA only


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS)
def test_cuda_and_triton_backends_agree(op):
    x = randn((8, 240, 28, 28), torch.float16, "cuda").to(memory_format=torch.channels_last)
    with fastops.use_backend("cuda"):
        a = getattr(fastops.ops, op)(x)
    with fastops.use_backend("triton"):
        b = getattr(fastops.ops, op)(x)
    assert_close(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ("cuda", "triton"))
def test_cuda_runs_on_the_current_stream(backend):
    x = randn((64, 96, 56, 56), torch.float32, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with fastops.use_backend(backend), torch.cuda.stream(side):
        y = fastops.ops.hardswish(x * 1.0)  # producer and consumer both on `side`
    side.synchronize()
    assert_close(y, F.hardswish(x))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ("cuda", "triton"))
def test_cuda_more_than_2_to_the_31_elements(backend):
    """64-bit indexing: a 4.3 GB float16 tensor whose tail lies past element 2**31."""
    n = 2**31 + 4099
    x = torch.empty(n, dtype=torch.float16, device="cuda").normal_(0, 4)
    with fastops.use_backend(backend):
        y = fastops.ops.hardswish(x)
    for sl in (slice(0, 4096), slice(2**31 - 2048, 2**31 + 2048), slice(n - 4096, n)):
        assert_close(y[sl], F.hardswish(x[sl].float()).half())
    del x, y
    torch.cuda.empty_cache()
