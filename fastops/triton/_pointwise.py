"""Layout plumbing for flat Triton pointwise kernels; the rule of csrc/pointwise.h.

The output is `torch.empty_like(x)` (dense, x's memory format); an operand that does not share
its strides is copied into that layout first, so kernels index raw buffers with one offset.
"""

import os

import torch
import triton

BLOCK = 1024


def grid(n: int):
    return (triton.cdiv(n, BLOCK),)


def as_flat_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` if it already has dense `like`'s strides, else a copy of it in that layout."""
    if t.shape == like.shape and t.stride() == like.stride():
        return t
    copy = torch.empty_like(like)
    copy.copy_(t)
    return copy


# Triton's interpreter truncates float32 -> bfloat16 conversions, where compiled Triton (and
# PyTorch) round to nearest even. Under the interpreter the kernels round explicitly, so the CPU
# checks see the numbers the GPU produces. Read once, like Triton itself reads it.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def needs_manual_bf16_rounding(out: torch.Tensor) -> bool:
    return INTERPRETING and out.dtype == torch.bfloat16
