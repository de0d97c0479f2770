"""Triton kernels of hardswish / hardsigmoid (forward, backward, in-place).

Same formulas as csrc/activation.h: math in float32 (float64 for float64 tensors), stores
rounded to nearest even. Operands are flat (fastops/triton/_pointwise.py arranges the layout the
same way csrc/pointwise.h does), so the kernels walk raw buffers with 64-bit offsets.
"""

import torch
import triton
import triton.language as tl

from .. import _checks
from .._layout import as_flat_layout_of, is_dense
from ._pointwise import BLOCK, grid, needs_manual_bf16_rounding

# ------------------------------------------------------------------------------- math


@triton.jit
def _relu6_shift3(x):
    t = x + 3.0
    t = tl.where(t < 0.0, 0.0, t)  # NaN compares false and passes through
    return tl.where(t > 6.0, 6.0, t)


@triton.jit
def _hardswish(x):
    return x * _relu6_shift3(x) / 6.0


@triton.jit
def _hardsigmoid(x):
    return _relu6_shift3(x) / 6.0


@triton.jit
def _hardswish_grad(g, x):
    return tl.where(x <= -3.0, 0.0, tl.where(x >= 3.0, g, g * (x / 3.0 + 0.5)))


@triton.jit
def _hardsigmoid_grad(g, x):
    return tl.where((x > -3.0) & (x < 3.0), g * (1.0 / 6.0), 0.0)


# ------------------------------------------------------------------------------- kernels


@triton.jit
def _store(ptr, offs, v, mask, BF16_RNE: tl.constexpr):
    if BF16_RNE:  # see _pointwise.needs_manual_bf16_rounding
        u = v.to(tl.float32).to(tl.uint32, bitcast=True)
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where((u & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, r)
        tl.store(ptr + offs, r.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr + offs, v.to(ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


@triton.jit
def _load(ptr, offs, mask, FP64: tl.constexpr):
    """Masked load (0 where masked off) in the compute precision (float64 or float32); the other
    Triton kernels load their operands through it too."""
    v = tl.load(ptr + offs, mask=mask, other=0.0)
    # one return: compiled Triton (unlike its interpreter) rejects an early return whose type
    # differs from the final one, even under a constexpr condition
    if FP64:
        v = v.to(tl.float64)
    else:
        v = v.to(tl.float32)
    return v


@triton.jit
def _forward_kernel(x_ptr, y_ptr, n, ACT: tl.constexpr, FP64: tl.constexpr, BF16_RNE: tl.constexpr,
                    BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = _load(x_ptr, offs, mask, FP64)
    if ACT == "hardswish":
        y = _hardswish(x)
    else:
        y = _hardsigmoid(x)
    _store(y_ptr, offs, y, mask, BF16_RNE)


@triton.jit
def _backward_kernel(g_ptr, x_ptr, dx_ptr, n, ACT: tl.constexpr, FP64: tl.constexpr, BF16_RNE: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = _load(g_ptr, offs, mask, FP64)
    x = _load(x_ptr, offs, mask, FP64)
    if ACT == "hardswish":
        dx = _hardswish_grad(g, x)
    else:
        dx = _hardsigmoid_grad(g, x)
    _store(dx_ptr, offs, dx, mask, BF16_RNE)


# ------------------------------------------------------------------------------- launchers


def _launch_forward(act, x, y):
    n = y.numel()
    if n:
        _forward_kernel[grid(n)](
            x, y, n, ACT=act, FP64=x.dtype == torch.float64, BF16_RNE=needs_manual_bf16_rounding(y), BLOCK=BLOCK
        )


def forward(act: str, x: torch.Tensor) -> torch.Tensor:
    _checks.check_floating(act, "x", x)
    y = torch.empty_like(x)
    _launch_forward(act, as_flat_layout_of(x, y), y)
    return y


def forward_(act: str, x: torch.Tensor) -> None:
    _checks.check_floating(act, "x", x)
    _checks.check_writable(act, "x", x)
    if x.numel() == 0:
        return
    if is_dense(x):  # write straight over x
        _launch_forward(act, x, x)
    else:
        dense = x.contiguous()
        _launch_forward(act, dense, dense)
        x.copy_(dense)


def backward(act: str, grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    name = f"{act}_backward"
    _checks.check_floating(name, "x", x)
    _checks.check_like(name, "grad_out", grad_out, "x", x)
    dx = torch.empty_like(x)
    n = dx.numel()
    if n:
        _backward_kernel[grid(n)](
            as_flat_layout_of(grad_out, dx), as_flat_layout_of(x, dx), dx, n,
            ACT=act, FP64=x.dtype == torch.float64, BF16_RNE=needs_manual_bf16_rounding(dx), BLOCK=BLOCK,
        )
    return dx
