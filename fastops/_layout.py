"""Memory-layout helpers shared by the Python-side kernels (the rule of csrc/pointwise.h)."""

import torch


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill one block of memory exactly, in some order
    of dimensions (contiguous, channels_last, any permutation of them)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def as_flat_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` if it already has the strides of `like` (a dense tensor), else a copy of it in that
    layout, so that element i of one buffer is element i of the other."""
    if t.shape == like.shape and t.stride() == like.stride():
        return t
    copy = torch.empty_like(like)
    copy.copy_(t)
    return copy
