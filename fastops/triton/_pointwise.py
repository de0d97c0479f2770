"""Launch plumbing for flat Triton pointwise kernels.

The output is `torch.empty_like(x)` (dense, x's memory format); an operand that does not share
its strides is copied into that layout first (fastops/_layout.py), so kernels index raw buffers
with one offset.
"""

import os

import torch
import triton

BLOCK = 1024


def grid(n: int):
    return (triton.cdiv(n, BLOCK),)


# Triton's interpreter truncates float32 -> bfloat16 conversions, where compiled Triton (and
# PyTorch) round to nearest even. Under the interpreter the kernels round explicitly, so the CPU
# checks see the numbers the GPU produces. Read once, like Triton itself reads it.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def needs_manual_bf16_rounding(out: torch.Tensor) -> bool:
    return INTERPRETING and out.dtype == torch.bfloat16
