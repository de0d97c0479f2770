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
    if layout in ("channel_slice", "cl_channel_slice"):  # channels [3, 3 + C) of a dense tensor with
        # C + 5 channels, NCHW or channels_last: what ShuffleNet V2's x.chunk(2, 1) hands on
        N, C, H, W = x.shape
        fmt = torch.channels_last if layout == "cl_channel_slice" else torch.contiguous_format
        buf = torch.empty((N, C + 5, H, W), dtype=x.dtype, device=x.device, memory_format=fmt)
        out = buf[:, 3:3 + C]
        out.copy_(x)
        return out
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


@contextlib.contextmanager
def num_threads(threads: int):
    """torch's intra-op thread count set to `threads` inside the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assert_close(actual, expected, dtype=None, equal_nan=True):
    dtype = dtype or expected.dtype
    torch.testing.assert_close(actual, expected, equal_nan=equal_nan, **TOL[dtype])


def check_gradients_against_reference(op, reference_fn, args, n_grads=None):
    """The gradients of every tensor in `args` through `op` (its autograd formula) against
    autograd through `reference_fn`, for one random channels_last upstream gradient; `n_grads`:
    how many tensors must get one."""
    ours = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    ref = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    y = op(*ours)
    g = torch.randn(y.shape).contiguous(memory_format=torch.channels_last)
    tensors = lambda a: [t for t in a if isinstance(t, torch.Tensor)]  # noqa: E731
    got = torch.autograd.grad(y, tensors(ours), g)
    want = torch.autograd.grad(reference_fn(*ref), tensors(ref), g)
    if n_grads is not None:
        assert len(got) == n_grads
    for i, (u, v) in enumerate(zip(got, want)):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4 * v.abs().max().item(), msg=f"input {i}")


# ---- shared by the Triton kernel tests (tests/test_*_triton.py) ----
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: under Triton's interpreter


def triton_input(shape, dtype, layout="contiguous", scale=1.0, offset=0.0):
    """Normal data (times scale, plus offset) on the Triton tests' device, in the named layout."""
    return make_layout((torch.randn(shape, device=TRITON_DEVICE) * scale + offset).to(dtype), layout)


def expects_channels_last(layout: str) -> bool:
    """Whether an op's output for an input in this layout (make_layout) is channels_last."""
    return layout in ("channels_last", "permuted", "cl_sliced", "cl_channel_slice")


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


# ---- shared by the module and model tests (tests/test_blocks.py, test_models.py, test_optimize.py) ----
def randomise_bn(module, seed: int = 0):
    """Non-trivial BatchNorm state (weight, bias, running statistics) so that folding a BN into a
    kernel is really exercised; returns the module."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return module


def assert_scaled_close(actual, expected, rtol=1e-4, msg=None, atol_floor=1e-6):
    """assert_close with an absolute tolerance relative to expected's largest magnitude (deep
    networks sum many terms: an element near zero carries the error of the large ones), and at
    least atol_floor (a gradient that is zero in exact arithmetic, e.g. the bias of a BN that
    another BN in training mode follows, is rounding noise of ~1e-8 in both)."""
    scale = expected.detach().abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=max(rtol * scale, atol_floor),
                               msg=None if msg is None else (lambda detail: f"{msg}: {detail}"))


def check_module_parity(ours, theirs, x, mode: str, rtol=1e-4, grad_rtol=1e-3, steps: int = 1):
    """`ours` and `theirs` hold the same weights; in `mode` ("eval" or "train") they must give the
    same output (no_grad, then with autograd), the same gradient of x and of every parameter for
    a random upstream gradient, and (train) the same BatchNorm buffers after `steps` SGD steps."""
    getattr(ours, mode)(), getattr(theirs, mode)()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if mode == "eval":
        with torch.no_grad():
            assert_scaled_close(ours(x), theirs(x), rtol, msg="eval output (no_grad)")
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for step in range(steps):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        assert_scaled_close(ya, yb, rtol, msg=f"{mode} step {step}: output")
        g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(step)) / ya.numel() ** 0.5
        for opt, y in ((opt_a, ya), (opt_b, yb)):
            opt.zero_grad()
            y.backward(g)
        assert_scaled_close(xa.grad, xb.grad, grad_rtol, msg=f"{mode} step {step}: grad of x")
        for (name, pa), (_, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
            if pb.grad is None:
                assert pa.grad is None or not pa.grad.any(), name
                continue
            assert_scaled_close(pa.grad, pb.grad, grad_rtol, msg=f"{mode} step {step}: grad of {name}")
        opt_a.step(), opt_b.step()
    for (name, ba), (_, bb) in zip(ours.named_buffers(), theirs.named_buffers()):
        if ba.is_floating_point():
            assert_scaled_close(ba, bb, rtol, msg=f"buffer {name}")
        else:
            assert torch.equal(ba, bb), name
