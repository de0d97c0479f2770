"""Launch plumbing for flat Triton pointwise kernels.

The output is `torch.empty_like(x)` (dense, x's memory format); an operand that does not share
its strides is copied into that layout first (fastops/_layout.py), so kernels index raw buffers
with one offset.
"""

import os

import torch

BLOCK = 1024


# The launchers' grid arithmetic in plain Python: triton.cdiv and triton.next_power_of_2 are
# Triton constexpr functions, and a call from Python costs ~4 us (Triton 3.8), several of them in
# every launch. Same values (next_power_of_2(0) == 0 as Triton's).
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 0 else 0


def grid(n: int):
    return (cdiv(n, BLOCK),)


# Triton's interpreter truncates float32 -> bfloat16 conversions, where compiled Triton (and
# PyTorch) round to nearest even. Under the interpreter the kernels round explicitly, so the CPU
# checks see the numbers the GPU produces. Read once, like Triton itself reads it.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def needs_manual_bf16_rounding(out: torch.Tensor) -> bool:
    return INTERPRETING and out.dtype == torch.bfloat16
