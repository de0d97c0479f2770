"""Shared test tools: input layouts, dtype tolerances, output poisoning."""

import contextlib

import torch

from fastops._layout import is_dense  # noqa: F401  (re-exported for the tests)

# Tolerances for comparing a kernel with the reference, per dtype.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}

LAYOUTS = ("contiguous", "channels_last", "strided", "permuted", "offset", "expanded")


def randn(shape, dtype=torch.float32, device="cpu", scale=4.0):
    """Normal data spread over the activations' interesting range (the kinks sit at +-3)."""
    return (torch.randn(shape, dtype=torch.float32, device=device) * scale).to(dtype)


def make_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor equal to x (same shape and values) stored in the named layout."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last) if x.dim() == 4 else x.contiguous()
    if layout == "strided":  # every other element of a twice-as-wide buffer
        buf = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        buf[..., ::2] = x
        return buf[..., ::2]
    if layout == "permuted":  # dense but in reversed dimension order
        dims = list(range(x.dim()))[::-1]
        return x.permute(dims).contiguous().permute(dims)
    if layout == "offset":  # storage offset of one element: not 16-byte aligned
        buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
        out = buf[1:].view(x.shape)
        out.copy_(x)
        return out
    if layout == "cl_sliced":  # channels_last storage, every other column: neither contiguous nor
        # channels_last, but the channel stride is below the width stride (a channels_last output)
        N, C, H, W = x.shape
        buf = torch.empty((N, C, H, 2 * W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        buf[..., ::2] = x
        return buf[..., ::2]
    if layout == "expanded":  # stride 0 along dim 0 (only valid for inputs, not in-place)
        return x[:1].expand(x.shape) if x.dim() > 0 else x
    raise ValueError(layout)


@contextlib.contextmanager
def poisoned_memory(like: torch.Tensor, count: int = 4):
    """Fill the memory the allocator is about to hand out with NaN, so an output element a
    kernel forgets to write shows up as NaN instead of a lucky zero. Works with the CUDA caching
    allocator and, for blocks below the mmap threshold, with glibc malloc on CPU."""
    bufs = [torch.full_like(like, float("nan"), memory_format=torch.preserve_format) for _ in range(count)]
    del bufs
    yield


def assert_close(actual, expected, dtype=None, equal_nan=True):
    dtype = dtype or expected.dtype
    torch.testing.assert_close(actual, expected, equal_nan=equal_nan, **TOL[dtype])


# ---- shared by the Triton kernel tests (tests/test_*_triton.py) ----
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: under Triton's interpreter


def triton_input(shape, dtype, layout="contiguous", scale=1.0, offset=0.0):
    """Normal data (times scale, plus offset) on the Triton tests' device, in the named layout."""
    return make_layout((torch.randn(shape, device=TRITON_DEVICE) * scale + offset).to(dtype), layout)


def expects_channels_last(layout: str) -> bool:
    """Whether an op's output for an input in this layout (make_layout) is channels_last."""
    return layout in ("channels_last", "permuted", "cl_sliced")


def check_close_to_f64(actual, expected, dtype, reduced=False, atol=None):
    """actual (kernel, any dtype) against expected (float64 truth) at dtype's tolerance; a sum
    over many terms (reduced) is allowed dtype's rtol of its largest element as absolute error.
    Half types must also round like the truth almost everywhere: computed in float32 and rounded
    once, to nearest even (the interpreter would truncate without an explicit rounding store)."""
    tol = dict(TOL[dtype])
    if reduced and expected.numel():
        tol["atol"] = max(tol["atol"], tol["rtol"] * expected.abs().max().item())
    if atol is not None:
        tol["atol"] = max(tol["atol"], atol)
    torch.testing.assert_close(actual.double(), expected, **tol)
    if actual.dtype in (torch.bfloat16, torch.float16) and expected.numel() >= 100:
        same = (actual == expected.to(actual.dtype)).double().mean().item()
        assert same > 0.97, f"only {same:.1%} of the {actual.dtype} results are the rounded truth"
