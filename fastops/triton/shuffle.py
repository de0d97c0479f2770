"""Triton kernel of channel_shuffle, concat_shuffle and concat_shuffle_backward: one gather pass.

All three are one channel permutation between up to two sources and up to two destinations
(csrc/shuffle.h): output channel o of the C-channel result reads channel
j = shuffle_source(o, G, K) = (o % G) * K + o // G of the sources' concatenation, which is
`src1[j]` for j < C1 and `src2[j - C1]` otherwise; o itself is `dst1[o]` for o < D1 and
`dst2[o - D1]` otherwise.

    channel_shuffle(x, G)            src1 = x,           G,     K = C/G, dst1 = y
    concat_shuffle(a, b)             src1 = a, src2 = b, G = 2, K = C/2, dst1 = y
    concat_shuffle_backward(g, Ca)   src1 = g,           G = C/2, K = 2,  dst1 = grad_a, dst2 = grad_b
                                     (channel_shuffle(g, C/2) split at Ca)

Each program copies a tile [BLOCK_C channels, BLOCK_P pixels] of one image, the channel index
permuted on the read side. The tile is oriented by the output layout: NCHW tiles run along the
pixels (plane copies with a permuted channel index), channels_last tiles along the channels (a
gather within each pixel's channel vector). Every tensor is indexed through its strides, so any
input layout is read in place; offsets are 64-bit. Values are copied bit-exactly (no
conversion).
"""

import torch
import triton
import triton.language as tl

from .. import _checks, _layout
from ._pointwise import cdiv, next_power_of_2

TILE = 1024  # elements per program


@triton.jit
def _shuffle_kernel(
    src1_ptr, src2_ptr, dst1_ptr, dst2_ptr,
    C, C1, D1, G, K, W, HW, TILES,
    s1n, s1c, s1h, s1w, s2n, s2c, s2h, s2w,
    d1n, d1c, d1h, d1w, d2n, d2c, d2h, d2w,
    TWO_SRC: tl.constexpr, TWO_DST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    n = (pid // TILES).to(tl.int64)
    t = (pid % TILES).to(tl.int64)
    o = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    p = t * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)[None, :]
    h = p // W
    w = p % W
    mask = (o < C) & (p < HW)
    j = (o % G) * K + o // G  # the source channel (csrc/shuffle.h's shuffle_source)
    if TWO_SRC:
        in1 = j < C1
        v = tl.load(src1_ptr + (n * s1n + j * s1c + h * s1h + w * s1w), mask=mask & in1)
        v2 = tl.load(src2_ptr + (n * s2n + (j - C1) * s2c + h * s2h + w * s2w), mask=mask & (j >= C1))
        v = tl.where(in1, v, v2)
    else:
        v = tl.load(src1_ptr + (n * s1n + j * s1c + h * s1h + w * s1w), mask=mask)
    if TWO_DST:
        tl.store(dst1_ptr + (n * d1n + o * d1c + h * d1h + w * d1w), v, mask=mask & (o < D1))
        tl.store(dst2_ptr + (n * d2n + (o - D1) * d2c + h * d2h + w * d2w), v, mask=mask & (o >= D1))
    else:
        tl.store(dst1_ptr + (n * d1n + o * d1c + h * d1h + w * d1w), v, mask=mask)


def _empty(shape, like, fmt):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def _launch(srcs, dsts, C, G, fmt):
    """Run the gather: output channel o (of C) reads shuffle_source(o, G, C // G) of cat(srcs),
    written to cat(dsts) (all [N, *, H, W])."""
    N, _, H, W = srcs[0].shape
    if N * C * H * W == 0:
        return
    # A channel-less operand takes no part (and may have no storage to point at): with it
    # dropped, the channel indices of the other one stay right.
    srcs = [t for t in srcs if t.shape[1]]
    dsts = [t for t in dsts if t.shape[1]]
    two_src, two_dst = len(srcs) == 2, len(dsts) == 2
    src1, src2 = srcs[0], srcs[-1]
    dst1, dst2 = dsts[0], dsts[-1]
    channels_last = fmt == torch.channels_last
    block_c = max(2, min(next_power_of_2(C), 64 if channels_last else 4))
    block_p = TILE // block_c
    tiles = cdiv(H * W, block_p)
    _shuffle_kernel[(N * tiles, cdiv(C, block_c))](
        src1, src2, dst1, dst2,
        C, src1.shape[1], dst1.shape[1], G, C // G, W, H * W, tiles,
        *src1.stride(), *src2.stride(), *dst1.stride(), *dst2.stride(),
        TWO_SRC=two_src, TWO_DST=two_dst, BLOCK_C=block_c, BLOCK_P=block_p,
    )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    _checks.check_channel_shuffle("channel_shuffle", x, groups)
    fmt = _layout.conv_output_format(x)
    y = _empty(tuple(x.shape), x, fmt)
    _launch([x], [y], x.shape[1], groups, fmt)
    return y


def concat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _checks.check_concat_shuffle("concat_shuffle", a, b)
    N, Ca, H, W = a.shape
    C = Ca + b.shape[1]
    fmt = _layout.conv_output_format(a)
    y = _empty((N, C, H, W), a, fmt)
    _launch([a, b], [y], C, 2, fmt)
    return y


def concat_shuffle_backward(grad_out: torch.Tensor, split: int):
    """(grad_a, grad_b) = split(channel_shuffle(grad_out, C / 2), [split, C - split]), both written
    by one pass."""
    _checks.check_concat_shuffle_backward("concat_shuffle_backward", grad_out, split)
    N, C, H, W = grad_out.shape
    fmt = _layout.conv_output_format(grad_out)
    grad_a = _empty((N, split, H, W), grad_out, fmt)
    grad_b = _empty((N, C - split, H, W), grad_out, fmt)
    _launch([grad_out], [grad_a, grad_b], C, C // 2, fmt)
    return grad_a, grad_b
