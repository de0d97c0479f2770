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


def conv_output_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of a convolution op's output (and input gradient): channels_last when
    x is, else contiguous. A non-contiguous x counts as channels_last when its channel stride is
    smaller than the stride of its innermost spatial dimension with more than one element (the
    width; the height when the width is 1, whose stride is arbitrary then; the width again for a
    1x1 map). Same rule as csrc/dwconv.h's output_channels_last."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    inner = 2 if x.shape[3] == 1 and x.shape[2] != 1 else 3
    return torch.channels_last if x.stride(1) < x.stride(inner) else torch.contiguous_format
