"""Triton kernels of dwconv_bn_act: depthwise conv, per-channel affine, activation; forward and
backward.

    z[n, oc, oh, ow] = sum_{kh, kw} x[n, oc // m, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * w[oc, 0, kh, kw]
    u = z * scale[oc] + shift[oc]          (scale = 1, shift = 0 where None)
    y = act(u)

Every kernel works on a tile [BLOCK_C channels, BLOCK_P pixels] of one image, with the taps
unrolled over the constexpr kernel size. Tensors are indexed through the strides passed in, so
any layout costs nothing; all offsets are 64-bit. Math in float32 (float64 for float64 tensors),
stores rounded to nearest even (the `_store` of fastops/triton/activation.py).

Forward, dense channels_last input with multiplier 1: `_forward_cl_kernel` instead, one output
row's [BLOCK_W pixels, BLOCK_C channels] per program, its index math per program and per tap
rather than per element (the generic kernel divides each flat pixel index by the row width and
computes 64-bit offsets and masks per element and tap; on an H200 it reached ~11% of the copy
bandwidth at C144 56x56, N=64, fp16). Not yet timed on a GPU.

Backward runs two kernels (for dense channels_last x and grad_out with multiplier 1, their
channels_last twins `_backward_gz_cl_kernel` and `_grad_x_cl_kernel`, tiled the same way):
  1. `_backward_gz_kernel`, over the output: recomputes z and u, forms gu = grad_out * act'(u)
     and gz = gu * scale, writes gz (float32 / float64) and per-program partial sums of gu
     (grad_shift), gu * z (grad_scale) and gz * x per tap (grad_weight); torch sums the partials,
     so the reductions are deterministic and need no atomics.
  2. `_grad_x_kernel`, over the input: the transposed depthwise conv of gz.
"""

import collections

import torch
import triton
import triton.language as tl

from .. import _checks, _layout
from ._pointwise import cdiv, needs_manual_bf16_rounding, next_power_of_2
from .activation import _hardsigmoid, _hardsigmoid_grad, _hardswish, _hardswish_grad, _load, _store

OP = "dwconv_bn_act"

# ------------------------------------------------------------------------------- checks

DwConvShape = collections.namedtuple(
    "DwConvShape", "N C H W OC M KH KW SH SW PH PW DH DW OH OW"
)


def _check(x, weight, scale, shift, stride, padding, dilation, act, op=OP) -> DwConvShape:
    """The argument checks every dwconv_bn_act path shares (fastops/_checks.py, same errors as
    csrc/dwconv.h); returns the shape arithmetic."""
    OH, OW = _checks.check_dwconv(op, x, weight, scale, shift, stride, padding, dilation, act)[2:]
    (SH, SW), (PH, PW), (DH, DW) = (_checks.pair(op, n, v) for n, v in
                                    (("stride", stride), ("padding", padding), ("dilation", dilation)))
    N, C, H, W = x.shape
    OC, _, KH, KW = weight.shape
    return DwConvShape(N, C, H, W, OC, OC // C, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)


def output_channels_last(x: torch.Tensor) -> bool:
    return _layout.conv_output_format(x) == torch.channels_last


def _empty(shape, dtype, device, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)


# ------------------------------------------------------------------------------- math


@triton.jit
def _act(u, ACT: tl.constexpr):
    if ACT == "relu":
        u = tl.where(u < 0.0, 0.0, u)  # NaN passes through, as in torch
    elif ACT == "relu6":
        u = tl.where(u < 0.0, 0.0, u)
        u = tl.where(u > 6.0, 6.0, u)
    elif ACT == "hardswish":
        u = _hardswish(u)
    elif ACT == "hardsigmoid":
        u = _hardsigmoid(u)
    elif ACT == "sigmoid":
        u = 1.0 / (1.0 + tl.exp(-u))
    elif ACT == "silu":
        u = u / (1.0 + tl.exp(-u))
    return u


@triton.jit
def _act_grad(g, u, ACT: tl.constexpr):
    """g * act'(u), with PyTorch's choices at the kinks."""
    if ACT == "relu":
        g = tl.where(u <= 0.0, 0.0, g)
    elif ACT == "relu6":
        g = tl.where((u <= 0.0) | (u >= 6.0), 0.0, g)
    elif ACT == "hardswish":
        g = _hardswish_grad(g, u)
    elif ACT == "hardsigmoid":
        g = _hardsigmoid_grad(g, u)
    elif ACT == "sigmoid":
        s = 1.0 / (1.0 + tl.exp(-u))
        g = g * s * (1.0 - s)
    elif ACT == "silu":
        s = 1.0 / (1.0 + tl.exp(-u))
        g = g * s * (1.0 + u * (1.0 - s))
    return g


@triton.jit
def _tile(pid_p, pid_c, TILES, NC, NPIX, NCOL, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The tile of program (pid_p, pid_c): image n, channels c [BLOCK_C, 1], flat pixels
    p [1, BLOCK_P] (row-major over an NCOL-wide plane of NPIX pixels), masks, all 64-bit."""
    n = (pid_p // TILES).to(tl.int64)
    t = (pid_p % TILES).to(tl.int64)
    c = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    p = t * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)[None, :]
    cmask = c < NC
    pmask = p < NPIX
    return n, c, p // NCOL, p % NCOL, cmask, pmask


@triton.jit
def _conv(x_ptr, w_ptr, x_img, xc, w_row, oh, ow, cmask, mask, H, W, sxh, sxw,
          SH, SW, PH, PW, DH, DW, KH: tl.constexpr, KW: tl.constexpr, FP64: tl.constexpr):
    """z for a tile: x_img is the image's offset, xc [BLOCK_C, 1] the input channels' offsets,
    w_row [BLOCK_C, 1] the weight rows (oc * KH * KW). (The tap loop calls no helpers: the
    interpreter pays for every call.)"""
    if FP64:
        acc = tl.zeros(mask.shape, dtype=tl.float64)
    else:
        acc = tl.zeros(mask.shape, dtype=tl.float32)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    x_c = x_ptr + (x_img + xc)
    w_c = w_ptr + w_row
    for kh in tl.static_range(KH):
        ih = ih0 + kh * DH
        x_row = x_c + ih * sxh
        hmask = mask & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw * DW
            xv = tl.load(x_row + iw * sxw, mask=hmask & (iw >= 0) & (iw < W), other=0.0)
            wv = tl.load(w_c + (kh * KW + kw), mask=cmask, other=0.0)
            acc += xv.to(acc.dtype) * wv.to(acc.dtype)
    return acc


@triton.jit
def _affine(z, scale_ptr, shift_ptr, oc, cmask, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
            FP64: tl.constexpr):
    """(u, scale): u = z * scale + shift; scale is 1 when absent."""
    if HAS_SCALE:
        scale = _load(scale_ptr, oc, cmask, FP64)
    else:
        scale = tl.full(oc.shape, 1.0, z.dtype)
    u = z * scale
    if HAS_SHIFT:
        u += _load(shift_ptr, oc, cmask, FP64)
    return u, scale


# ------------------------------------------------------------------------------- kernels


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, y_ptr,
    H, W, OC, OH, OW, M, TILES,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    FP64: tl.constexpr, BF16_RNE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    n, oc, oh, ow, cmask, pmask = _tile(tl.program_id(0), tl.program_id(1), TILES, OC, OH * OW, OW, BLOCK_C, BLOCK_P)
    mask = cmask & pmask
    z = _conv(x_ptr, w_ptr, n * sxn, (oc // M) * sxc, oc * (KH * KW), oh, ow, cmask, mask, H, W, sxh, sxw,
              SH, SW, PH, PW, DH, DW, KH, KW, FP64)
    u, _ = _affine(z, scale_ptr, shift_ptr, oc, cmask, HAS_SCALE, HAS_SHIFT, FP64)
    _store(y_ptr, n * syn + oc * syc + oh * syh + ow * syw, _act(u, ACT), mask, BF16_RNE)


@triton.jit
def _cl_tile(ROWS, COLS, C, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile of a channels_last program (row, w, c) over images of ROWS x COLS pixels: image
    n and row (scalars), columns [BLOCK_W, 1], channels [1, BLOCK_C], the channel mask and the
    tile's mask."""
    row = tl.program_id(0)
    n = row // ROWS
    col = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[:, None]
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    cmask = c < C
    return n, row - n * ROWS, col, c, cmask, (col < COLS) & cmask


@triton.jit
def _forward_cl_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, y_ptr,
    H, W, C, OH, OW,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    FP64: tl.constexpr, BF16_RNE: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The forward for dense channels_last x and y, multiplier 1: program (row, w, c) computes
    output row `row` = n * OH + oh, pixels [BLOCK_W, 1] and channels [1, BLOCK_C] (contiguous in
    memory). The index math is per program and per tap, not per element: a tap's row is one
    scalar test, its columns one [BLOCK_W, 1] test; offsets inside an image are int32 (the
    launcher checks that an image has fewer than 2^31 elements), the image's own offset int64."""
    n, oh, ow, c, cmask, mask = _cl_tile(OH, OW, C, BLOCK_W, BLOCK_C)
    # _conv with the strides of a dense channels_last image (channel 1, column C, row W * C)
    z = _conv(x_ptr, w_ptr, n.to(tl.int64) * H * W * C, c, c * (KH * KW), oh, ow, cmask, mask, H, W, W * C, C,
              SH, SW, PH, PW, DH, DW, KH, KW, FP64)
    u, _ = _affine(z, scale_ptr, shift_ptr, c, cmask, HAS_SCALE, HAS_SHIFT, FP64)
    y_img = n.to(tl.int64) * OH * OW * C
    _store(y_ptr + y_img, (oh * OW + ow) * C + c, _act(u, ACT), mask, BF16_RNE)


@triton.jit
def _backward_gz_cl_kernel(
    g_ptr, x_ptr, w_ptr, scale_ptr, shift_ptr, gz_ptr, part_ptr, part_w_ptr,
    H, W, C, OH, OW, W_BLOCKS,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    FP64: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """_backward_gz_kernel for dense channels_last x, grad_out and gz, multiplier 1, tiled as
    _forward_cl_kernel: gz, and this program's partial sums in row (output row) * W_BLOCKS + (w
    block) of part [rows, 2, C] and part_w [rows, C, KH * KW]."""
    n, oh, ow, c, cmask, mask = _cl_tile(OH, OW, C, BLOCK_W, BLOCK_C)
    x_img = n.to(tl.int64) * H * W * C
    z = _conv(x_ptr, w_ptr, x_img, c, c * (KH * KW), oh, ow, cmask, mask, H, W, W * C, C,
              SH, SW, PH, PW, DH, DW, KH, KW, FP64)
    u, scale = _affine(z, scale_ptr, shift_ptr, c, cmask, HAS_SCALE, HAS_SHIFT, FP64)
    out = n.to(tl.int64) * OH * OW * C + (oh * OW + ow) * C + c
    g = _load(g_ptr, out, mask, FP64)
    gu = tl.where(mask, _act_grad(g, u, ACT), 0.0)
    gz = gu * scale
    tl.store(gz_ptr + out, gz, mask=mask)
    prow = tl.program_id(0).to(tl.int64) * W_BLOCKS + tl.program_id(1)
    _partial_sums(part_ptr, part_w_ptr, prow, c, C, gu, z, gz, x_ptr, x_img, c, oh,
                  ow, cmask, mask, H, W, W * C, C, SH, SW, PH, PW, DH, DW, KH, KW, 0)


@triton.jit
def _grad_x_cl_kernel(
    gz_ptr, w_ptr, gx_ptr,
    H, W, C, OH, OW,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, FP64: tl.constexpr, BF16_RNE: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """_grad_x_kernel for dense channels_last gz and grad_x, multiplier 1: program (row, w, c)
    gathers input row `row` = n * H + ih, pixels [BLOCK_W, 1] x channels [1, BLOCK_C]; a tap's
    output row is one scalar test, its output columns one [BLOCK_W, 1] test (no division where
    the stride is 1: Triton specialises an argument equal to 1)."""
    n, ih, iw, c, cmask, mask = _cl_tile(H, W, C, BLOCK_W, BLOCK_C)
    if FP64:
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    # _gather_taps with the strides of a dense channels_last gz (channel 1, column C, row OW * C)
    acc = _gather_taps(acc, gz_ptr + n.to(tl.int64) * OH * OW * C + c, w_ptr + c * (KH * KW), ih, iw, mask, cmask,
                       OH, OW, OW * C, C, SH, SW, PH, PW, DH, DW, KH, KW)
    _store(gx_ptr + n.to(tl.int64) * H * W * C, (ih * W + iw) * C + c, acc, mask, BF16_RNE)


@triton.jit
def _gather_taps(acc, gz_c, w_c, ih, iw, mask, cmask, OH, OW, szh, szw, SH, SW, PH, PW, DH, DW,
                 KH: tl.constexpr, KW: tl.constexpr):
    """acc + sum over the taps of gz * w at the outputs that read input (ih, iw): gz_c points at
    the output channels' planes (row stride szh, column stride szw), w_c at their weight rows."""
    for kh in tl.static_range(KH):
        th = ih + PH - kh * DH
        thc = tl.maximum(th, 0)  # divide non-negative numbers only: // and % round alike everywhere
        oh = thc // SH
        gz_row = gz_c + oh * szh
        hmask = mask & (th >= 0) & (thc % SH == 0) & (oh < OH)
        for kw in tl.static_range(KW):
            tw = iw + PW - kw * DW
            twc = tl.maximum(tw, 0)
            ow = twc // SW
            g = tl.load(gz_row + ow * szw, mask=hmask & (tw >= 0) & (twc % SW == 0) & (ow < OW), other=0.0)
            wv = tl.load(w_c + (kh * KW + kw), mask=cmask, other=0.0)
            acc += g.to(acc.dtype) * wv.to(acc.dtype)
    return acc


@triton.jit
def _backward_gz_kernel(
    g_ptr, x_ptr, w_ptr, scale_ptr, shift_ptr, gz_ptr, part_ptr, part_w_ptr,
    H, W, OC, OH, OW, M, TILES,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, szn, szc, szh, szw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """gz = grad_out * act'(u) * scale into gz_ptr (the output's shape, compute dtype); partial
    sums of this program's pixels: part[pid, 0, oc] = sum gu, part[pid, 1, oc] = sum gu * z,
    part_w[pid, oc, tap] = sum gz * x_tap."""
    pid = tl.program_id(0)
    n, oc, oh, ow, cmask, pmask = _tile(pid, tl.program_id(1), TILES, OC, OH * OW, OW, BLOCK_C, BLOCK_P)
    mask = cmask & pmask
    x_img = n * sxn
    xc = (oc // M) * sxc
    w_row = oc * (KH * KW)
    z = _conv(x_ptr, w_ptr, x_img, xc, w_row, oh, ow, cmask, mask, H, W, sxh, sxw,
              SH, SW, PH, PW, DH, DW, KH, KW, FP64)
    u, scale = _affine(z, scale_ptr, shift_ptr, oc, cmask, HAS_SCALE, HAS_SHIFT, FP64)
    g = _load(g_ptr, n * sgn + oc * sgc + oh * sgh + ow * sgw, mask, FP64)
    gu = tl.where(mask, _act_grad(g, u, ACT), 0.0)
    gz = gu * scale
    tl.store(gz_ptr + n * szn + oc * szc + oh * szh + ow * szw, gz, mask=mask)

    _partial_sums(part_ptr, part_w_ptr, pid.to(tl.int64), oc, OC, gu, z, gz, x_ptr, x_img, xc, oh, ow, cmask, mask,
                  H, W, sxh, sxw, SH, SW, PH, PW, DH, DW, KH, KW, 1)


@triton.jit
def _partial_sums(part_ptr, part_w_ptr, prow, oc, OC, gu, z, gz, x_ptr, x_img, xc, oh, ow, cmask, mask,
                  H, W, sxh, sxw, SH, SW, PH, PW, DH, DW, KH: tl.constexpr, KW: tl.constexpr, AXIS: tl.constexpr):
    """A backward program's partial sums over its pixels (axis AXIS of its tiles: 1 for the
    generic kernel's [channels, pixels], 0 for the channels_last one's [pixels, channels]):
    part[prow, 0, oc] = sum gu, part[prow, 1, oc] = sum gu * z, part_w[prow, oc, tap] =
    sum gz * x_tap (x re-read tap by tap, as _conv reads it)."""
    part = part_ptr + prow * (2 * OC) + oc
    tl.store(part, tl.expand_dims(tl.sum(gu, axis=AXIS), AXIS), mask=cmask)
    tl.store(part + OC, tl.expand_dims(tl.sum(gu * z, axis=AXIS), AXIS), mask=cmask)
    part_w = part_w_ptr + prow * (OC * KH * KW) + oc * (KH * KW)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    x_c = x_ptr + (x_img + xc)
    for kh in tl.static_range(KH):
        ih = ih0 + kh * DH
        x_row = x_c + ih * sxh
        hmask = mask & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw * DW
            xv = tl.load(x_row + iw * sxw, mask=hmask & (iw >= 0) & (iw < W), other=0.0)
            tl.store(part_w + (kh * KW + kw), tl.expand_dims(tl.sum(gz * xv.to(gz.dtype), axis=AXIS), AXIS),
                     mask=cmask)


@triton.jit
def _grad_x_kernel(
    gz_ptr, w_ptr, gx_ptr,
    H, W, C, OH, OW, M, TILES,
    szn, szc, szh, szw, sgn, sgc, sgh, sgw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, FP64: tl.constexpr, BF16_RNE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """grad_x[n, c, ih, iw] = sum_{j < M, kh, kw} gz[n, c*M + j, oh, ow] * w[c*M + j, kh, kw]
    over the (oh, ow) with oh*SH - PH + kh*DH == ih and ow*SW - PW + kw*DW == iw."""
    n, c, ih, iw, cmask, pmask = _tile(tl.program_id(0), tl.program_id(1), TILES, C, H * W, W, BLOCK_C, BLOCK_P)
    mask = cmask & pmask
    if FP64:
        acc = tl.zeros(mask.shape, dtype=tl.float64)
    else:
        acc = tl.zeros(mask.shape, dtype=tl.float32)
    gz_img = gz_ptr + n * szn
    for j in range(M):
        oc = c * M + j
        acc = _gather_taps(acc, gz_img + oc * szc, w_ptr + oc * (KH * KW), ih, iw, mask, cmask, OH, OW, szh, szw,
                           SH, SW, PH, PW, DH, DW, KH, KW)
    _store(gx_ptr, n * sgn + c * sgc + ih * sgh + iw * sgw, acc, mask, BF16_RNE)


# ------------------------------------------------------------------------------- launchers


def _blocks(channels, channels_last):
    """Tile shape: channels_last tiles run along the channels (contiguous there), NCHW tiles
    along the pixels; 512 elements either way."""
    block_c = min(next_power_of_2(channels), 32 if channels_last else 4)
    block_c = max(block_c, 2)
    return block_c, 512 // block_c


def _strides(t):
    return tuple(t.stride())


def _params(s: DwConvShape):
    return dict(SH=s.SH, SW=s.SW, PH=s.PH, PW=s.PW, DH=s.DH, DW=s.DW, KH=s.KH, KW=s.KW)


def _vector_or(t, fallback):
    """A 1-D parameter as a dense buffer, or (absent) any pointer the kernel won't read."""
    return fallback if t is None else t.contiguous()


_INT32_MAX = 2**31 - 1


def _cl_blocks(channels, out_w):
    """_forward_cl_kernel's tile: the largest power of two up to 64 that divides the channel
    count (so no lane is masked off; at least 8, masking the tail where none divides), and
    pixels of the row to make about 1024 elements."""
    block_c = 64
    while block_c > 8 and channels % block_c:
        block_c //= 2
    block_c = min(block_c, next_power_of_2(channels))
    return min(next_power_of_2(out_w), max(1, 1024 // block_c)), block_c


def _cl_kernel_usable(x, s: DwConvShape, cl: bool) -> bool:
    """The channels_last kernels (forward, and backward with a dense channels_last grad_out) take
    dense channels_last x, multiplier 1, images of fewer than 2^31 elements (int32 offsets inside
    an image) and input and output rows that fit the grid."""
    return (cl and s.M == 1 and x.is_contiguous(memory_format=torch.channels_last)
            and max(s.H * s.W, s.OH * s.OW) * s.C <= _INT32_MAX and s.N * max(s.H, s.OH) <= _INT32_MAX
            and cdiv(s.OW, _cl_blocks(s.C, s.OW)[0]) <= 65535 and cdiv(s.W, _cl_blocks(s.C, s.W)[0]) <= 65535
            and cdiv(s.C, 8) <= 65535)


def forward(x, weight, scale, shift, stride, padding, dilation, act) -> torch.Tensor:
    s = _check(x, weight, scale, shift, stride, padding, dilation, act)
    cl = output_channels_last(x)
    y = _empty((s.N, s.OC, s.OH, s.OW), x.dtype, x.device, cl)
    if y.numel() == 0:
        return y
    w = weight.reshape(s.OC, s.KH * s.KW).contiguous()
    if _cl_kernel_usable(x, s, cl):
        block_w, block_c = _cl_blocks(s.C, s.OW)
        _forward_cl_kernel[(s.N * s.OH, cdiv(s.OW, block_w), cdiv(s.C, block_c))](
            x, w, _vector_or(scale, w), _vector_or(shift, w), y,
            s.H, s.W, s.C, s.OH, s.OW,
            ACT=act, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
            FP64=x.dtype == torch.float64, BF16_RNE=needs_manual_bf16_rounding(y),
            BLOCK_W=block_w, BLOCK_C=block_c, **_cl_params(s),
        )
        return y
    block_c, block_p = _blocks(s.OC, cl)
    tiles = cdiv(s.OH * s.OW, block_p)
    _forward_kernel[(s.N * tiles, cdiv(s.OC, block_c))](
        x, w, _vector_or(scale, w), _vector_or(shift, w), y,
        s.H, s.W, s.OC, s.OH, s.OW, s.M, tiles,
        *_strides(x), *_strides(y),
        ACT=act, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        FP64=x.dtype == torch.float64, BF16_RNE=needs_manual_bf16_rounding(y),
        BLOCK_C=block_c, BLOCK_P=block_p, **_params(s),
    )
    return y


def _cl_params(s: DwConvShape):
    """The geometry the channels_last kernels take: a stride with one output along its axis is
    never applied (and in int32 could overflow), so it is passed as 1."""
    return _params(s._replace(SH=s.SH if s.OH > 1 else 1, SW=s.SW if s.OW > 1 else 1))


def _backward_cl(grad_out, x, w, scale, shift, act, s, gz, grad_x, scale_dtype, shift_dtype, weight_dtype):
    """backward by the channels_last kernels (dense channels_last x and grad_out, multiplier 1)."""
    fp64 = x.dtype == torch.float64
    block_w, block_c = _cl_blocks(s.C, s.OW)
    w_blocks = cdiv(s.OW, block_w)
    rows = s.N * s.OH * w_blocks
    part = torch.empty((rows, 2, s.OC), dtype=gz.dtype, device=x.device)
    part_w = torch.empty((rows, s.OC, s.KH * s.KW), dtype=gz.dtype, device=x.device)
    _backward_gz_cl_kernel[(s.N * s.OH, w_blocks, cdiv(s.C, block_c))](
        grad_out, x, w, _vector_or(scale, w), _vector_or(shift, w), gz, part, part_w,
        s.H, s.W, s.C, s.OH, s.OW, w_blocks,
        ACT=act, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, FP64=fp64,
        BLOCK_W=block_w, BLOCK_C=block_c, **_cl_params(s),
    )
    sums = part.sum(0)
    grad_shift = sums[0].to(shift_dtype, copy=True)  # copies: outputs must not alias each other
    grad_scale = sums[1].to(scale_dtype, copy=True)
    grad_weight = part_w.sum(0).view(s.OC, 1, s.KH, s.KW).to(weight_dtype)
    block_w, block_c = _cl_blocks(s.C, s.W)
    _grad_x_cl_kernel[(s.N * s.H, cdiv(s.W, block_w), cdiv(s.C, block_c))](
        gz, w, grad_x,
        s.H, s.W, s.C, s.OH, s.OW,
        FP64=fp64, BF16_RNE=needs_manual_bf16_rounding(grad_x),
        BLOCK_W=block_w, BLOCK_C=block_c, **_cl_params(s),
    )
    return grad_x, grad_weight, grad_scale, grad_shift


def backward(grad_out, x, weight, scale, shift, stride, padding, dilation, act):
    """(grad_x, grad_weight, grad_scale, grad_shift); grad_scale and grad_shift are computed
    even where scale / shift are None (in x's dtype then)."""
    s = _check(x, weight, scale, shift, stride, padding, dilation, act, op=f"{OP}_backward")
    out_shape = (s.N, s.OC, s.OH, s.OW)
    if not isinstance(grad_out, torch.Tensor) or tuple(grad_out.shape) != out_shape:
        got = list(grad_out.shape) if isinstance(grad_out, torch.Tensor) else type(grad_out).__name__
        raise ValueError(f"fastops.{OP}_backward: argument 'grad_out' must have shape {list(out_shape)}, got {got}")
    if grad_out.device != x.device:
        raise ValueError(f"fastops.{OP}_backward: argument 'grad_out' is on {grad_out.device} but 'x' is on {x.device}")
    fp64 = x.dtype == torch.float64
    acc_dtype = torch.float64 if fp64 else torch.float32
    scale_dtype = x.dtype if scale is None else scale.dtype
    shift_dtype = x.dtype if shift is None else shift.dtype
    cl = output_channels_last(x)
    grad_x = _empty(tuple(x.shape), x.dtype, x.device, cl)
    if x.numel() == 0:
        return (grad_x, torch.zeros_like(weight, memory_format=torch.contiguous_format),
                torch.zeros(s.OC, dtype=scale_dtype, device=x.device),
                torch.zeros(s.OC, dtype=shift_dtype, device=x.device))

    w = weight.reshape(s.OC, s.KH * s.KW).contiguous()
    gz = _empty(out_shape, acc_dtype, x.device, cl)
    if _cl_kernel_usable(x, s, cl) and grad_out.is_contiguous(memory_format=torch.channels_last):
        return _backward_cl(grad_out, x, w, scale, shift, act, s, gz, grad_x, scale_dtype, shift_dtype, weight.dtype)
    block_c, block_p = _blocks(s.OC, cl)
    tiles = cdiv(s.OH * s.OW, block_p)
    rows = s.N * tiles
    part = torch.empty((rows, 2, s.OC), dtype=acc_dtype, device=x.device)
    part_w = torch.empty((rows, s.OC, s.KH * s.KW), dtype=acc_dtype, device=x.device)
    _backward_gz_kernel[(rows, cdiv(s.OC, block_c))](
        grad_out, x, w, _vector_or(scale, w), _vector_or(shift, w), gz, part, part_w,
        s.H, s.W, s.OC, s.OH, s.OW, s.M, tiles,
        *_strides(grad_out), *_strides(x), *_strides(gz),
        ACT=act, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, FP64=fp64,
        BLOCK_C=block_c, BLOCK_P=block_p, **_params(s),
    )
    sums = part.sum(0)
    grad_shift = sums[0].to(shift_dtype, copy=True)  # copies: outputs must not alias each other
    grad_scale = sums[1].to(scale_dtype, copy=True)
    grad_weight = part_w.sum(0).view(s.OC, 1, s.KH, s.KW).to(weight.dtype)

    block_c, block_p = _blocks(s.C, cl)
    tiles = cdiv(s.H * s.W, block_p)
    _grad_x_kernel[(s.N * tiles, cdiv(s.C, block_c))](
        gz, w, grad_x,
        s.H, s.W, s.C, s.OH, s.OW, s.M, tiles,
        *_strides(gz), *_strides(grad_x),
        FP64=fp64, BF16_RNE=needs_manual_bf16_rounding(grad_x),
        BLOCK_C=block_c, BLOCK_P=block_p, **_params(s),
    )
    return grad_x, grad_weight, grad_scale, grad_shift
