"""Triton kernels of bn_act_train: training-mode BatchNorm (batch statistics) then activation,
forward and backward.

    mean[c] = E[x[:, c]],  var[c] = E[(x[:, c] - mean[c])^2]      (over N, H, W; M = N*H*W values)
    xhat = (x - mean) * rsqrt(var + eps),  u = xhat * weight + bias,  y = act(u)

Forward runs three kernels:
  1. `_stats_kernel`: program (k, cb) reduces channel block cb over pixel chunk k (a run of
     TILES tiles of BLOCK_P pixels) to a partial (mean, M2) per channel: Welford's update per
     lane of the tile, the lanes merged exactly at the end, so the variance stays accurate when
     |mean| >> std (no E[x^2] - E[x]^2). Partials go to a small buffer [chunks, 2, C] in the
     compute dtype.
  2. `_stats_merge_kernel`: merges the chunks' partials per channel, BLOCK_K chunks at a time
     (exact two-pass formula within a block, Chan's formula across blocks): mean, var.
  3. `_forward_kernel`: y = act((x - mean) * rsqrt(var + eps) * weight + bias), tiled over
     (channels x pixels).
Backward runs two:
  1. `_backward_reduce_kernel`: per (chunk, channel block) partial sums of gu = act'(u) * grad_out
     (grad_bias) and gu * xhat (grad_weight); torch sums the partials (deterministic, no atomics).
  2. `_backward_dx_kernel`: grad_x = weight * invstd * (gu - grad_bias / M - xhat * grad_weight / M).

Pixels are numbered p = n * H*W + h * W + w (M of them per channel) and every tensor is
addressed through its own strides: offset = n * s_n + (p % HW) * s_hw + c * s_c, which holds
whenever (h, w) collapse into one dimension (contiguous, channels_last, strided views, expanded
views...); other inputs are first copied into the output's layout. When n and hw collapse too
(channels_last, N == 1, H*W == 1) the offset is p * s_hw and the kernels skip the division.
Tiles run along the channels when they are the fastest dimension (channels_last) and along the
pixels otherwise, so both layouts read and write memory in contiguous runs. Math in float32
(float64 for float64 x), stores rounded to nearest even (`_store` of fastops/triton/activation.py).
"""

import torch
import triton
import triton.language as tl

from .. import _checks, _layout
from ._pointwise import cdiv, needs_manual_bf16_rounding, next_power_of_2
from .activation import _load, _store
from .dwconv import _act, _act_grad

OP = "bn_act_train"

# The statistics / gradient reductions aim at about this many programs (channel blocks x pixel
# chunks): a few per SM of a large GPU, each reducing a long run of pixels; tests lower it to
# make every program merge several tiles.
MAX_PROGRAMS = 2048
# Tile sizes (elements per program and loop step); modest, so the interpreter stays fast.
TILE = 1024
MERGE_BLOCK_K = 128
MERGE_BLOCK_C = 16


# ------------------------------------------------------------------------------- math


@triton.jit
def _pixels(p, HW, sn, shw, SPLIT: tl.constexpr):
    """The offsets of pixels p (any shape) in a tensor whose image stride is sn and whose
    (collapsed) pixel stride is shw; 64-bit."""
    if SPLIT:
        return (p // HW).to(tl.int64) * sn + (p % HW).to(tl.int64) * shw
    return p.to(tl.int64) * shw


@triton.jit
def _pixel_ids(t, M, BLOCK_P: tl.constexpr, P64: tl.constexpr):
    """Pixels of tile t as a row [1, BLOCK_P], and their mask."""
    if P64:
        p = t.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)[None, :]
    else:
        p = t * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    return p, p < M


@triton.jit
def _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, cmask, eps,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, FP64: tl.constexpr):
    """(mean, invstd, weight, bias) of channels c, in the compute dtype (weight 1 and bias 0
    where absent)."""
    mean = _load(mean_ptr, c, cmask, FP64)
    var = _load(var_ptr, c, cmask, FP64)
    if FP64:
        invstd = 1.0 / tl.sqrt(var + eps)  # IEEE for float64
    else:
        invstd = 1.0 / tl.sqrt_rn(var + eps)  # tl.sqrt is the approximate one for float32
    if HAS_W:
        w = _load(w_ptr, c, cmask, FP64)
    else:
        w = tl.full(mean.shape, 1.0, mean.dtype)
    if HAS_B:
        b = _load(b_ptr, c, cmask, FP64)
    else:
        b = tl.zeros(mean.shape, mean.dtype)
    return mean, invstd, w, b


# ------------------------------------------------------------------------------- kernels


@triton.jit
def _stats_kernel(
    x_ptr, part_ptr, C, HW, M, TILES,
    sxn, sxc, sxhw,
    SPLIT: tl.constexpr, P64: tl.constexpr, FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """part[k, 0, c] = mean and part[k, 1, c] = sum of squared deviations of x[:, c] over the
    pixels of chunk k (tiles k*TILES ... k*TILES + TILES - 1; the count is implied).

    Each lane of the tile runs Welford's update over the chunk's tiles (no reduction in the
    loop); the lanes are merged once at the end, exactly (two-pass over the lanes' means)."""
    k = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    cmask = c < C
    x_c = x_ptr + c * sxc
    if FP64:
        dt = tl.float64
    else:
        dt = tl.float32
    mean = tl.zeros([BLOCK_C, BLOCK_P], dtype=dt)
    m2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=dt)
    count = tl.zeros([1, BLOCK_P], dtype=dt)  # values each lane has seen (0 past the end of x)
    for i in range(TILES):
        p, pmask = _pixel_ids(k * TILES + i, M, BLOCK_P, P64)
        v = tl.load(x_c + _pixels(p, HW, sxn, sxhw, SPLIT), mask=cmask & pmask, other=0.0).to(dt)
        count += pmask.to(dt)
        delta = tl.where(pmask, v - mean, 0.0)
        mean += delta * (1.0 / tl.maximum(count, 1.0))
        m2 += delta * (v - mean)  # 0 where masked: delta is
    n = tl.sum(count, axis=1)  # [1]: the chunk's pixels, at least 1
    chunk_mean = tl.sum(mean * count, axis=1) / n  # [BLOCK_C]
    d = mean - chunk_mean[:, None]
    chunk_m2 = tl.sum(m2 + count * (d * d), axis=1)
    part = part_ptr + k.to(tl.int64) * (2 * C) + c
    tl.store(part, chunk_mean[:, None], mask=cmask)
    tl.store(part + C, chunk_m2[:, None], mask=cmask)


@triton.jit
def _stats_merge_kernel(
    part_ptr, mean_ptr, var_ptr, C, M, K, CHUNK,
    FP64: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """mean[c], var[c] from the K chunks' partials (chunk k holds min(CHUNK, M - k*CHUNK)
    pixels)."""
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[None, :]
    cmask = c < C
    if FP64:
        dt = tl.float64
    else:
        dt = tl.float32
    mean = tl.zeros([1, BLOCK_C], dtype=dt)
    m2 = tl.zeros([1, BLOCK_C], dtype=dt)
    count = tl.zeros([1, 1], dtype=dt)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)[:, None]  # [BLOCK_K, 1]
        kmask = k < K
        nk = tl.where(kmask, tl.minimum(M - k * CHUNK, CHUNK), 0).to(dt)
        mask = kmask & cmask
        part = part_ptr + k * (2 * C) + c
        pm = tl.load(part, mask=mask, other=0.0)
        pq = tl.load(part + C, mask=mask, other=0.0)
        # this block of chunks: exact two-pass merge
        nb = tl.sum(nk, axis=0, keep_dims=True)  # [1, 1]
        mean_b = tl.sum(nk * pm, axis=0, keep_dims=True) / nb  # [1, BLOCK_C]
        d = tl.where(mask, pm - mean_b, 0.0)
        m2_b = tl.sum(pq + nk * d * d, axis=0, keep_dims=True)
        # Chan across blocks
        total = count + nb
        frac = nb / total
        delta = mean_b - mean
        mean += delta * frac
        m2 += m2_b + delta * delta * (count * frac)
        count = total
    tl.store(mean_ptr + c, mean, mask=cmask)
    tl.store(var_ptr + c, m2 / count, mask=cmask)


@triton.jit
def _forward_kernel(
    x_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, y_ptr, C, HW, M, eps,
    sxn, sxc, sxhw, syn, syc, syhw,
    ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, SPLIT: tl.constexpr, P64: tl.constexpr,
    FP64: tl.constexpr, BF16_RNE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    cmask = c < C
    p, pmask = _pixel_ids(tl.program_id(0), M, BLOCK_P, P64)
    mask = cmask & pmask
    mean, invstd, w, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, cmask, eps, HAS_W, HAS_B, FP64)
    x = _load(x_ptr, _pixels(p, HW, sxn, sxhw, SPLIT) + c * sxc, mask, FP64)
    u = tl.where(mask, (x - mean) * invstd, 0.0)  # masked lanes stay finite
    if HAS_W:
        u = u * w
    if HAS_B:
        u = u + b
    _store(y_ptr, _pixels(p, HW, syn, syhw, SPLIT) + c * syc, _act(u, ACT), mask, BF16_RNE)


@triton.jit
def _backward_reduce_kernel(
    g_ptr, x_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, part_ptr, C, HW, M, eps, TILES,
    sgn, sgc, sghw, sxn, sxc, sxhw,
    ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, SPLIT: tl.constexpr, P64: tl.constexpr,
    FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """part[k, 0, c] = sum gu, part[k, 1, c] = sum gu * xhat over the pixels of chunk k."""
    k = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    cmask = c < C
    mean, invstd, w, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, cmask, eps, HAS_W, HAS_B, FP64)
    g_c = g_ptr + c * sgc
    x_c = x_ptr + c * sxc
    # per-lane sums, reduced once after the loop
    acc_b = tl.zeros([BLOCK_C, BLOCK_P], dtype=mean.dtype)
    acc_w = tl.zeros([BLOCK_C, BLOCK_P], dtype=mean.dtype)
    for i in range(TILES):
        p, pmask = _pixel_ids(k * TILES + i, M, BLOCK_P, P64)
        mask = cmask & pmask
        x = _load(x_c, _pixels(p, HW, sxn, sxhw, SPLIT), mask, FP64)
        g = _load(g_c, _pixels(p, HW, sgn, sghw, SPLIT), mask, FP64)
        xhat = tl.where(mask, (x - mean) * invstd, 0.0)  # (finite where masked: g is 0 there)
        gu = _act_grad(g, xhat * w + b, ACT)
        acc_b += gu
        acc_w += gu * xhat
    part = part_ptr + k.to(tl.int64) * (2 * C) + c
    tl.store(part, tl.sum(acc_b, axis=1)[:, None], mask=cmask)
    tl.store(part + C, tl.sum(acc_w, axis=1)[:, None], mask=cmask)


@triton.jit
def _backward_dx_kernel(
    g_ptr, x_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, sums_ptr, gx_ptr, C, HW, M, eps,
    sgn, sgc, sghw, sxn, sxc, sxhw, sdn, sdc, sdhw,
    ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, SPLIT: tl.constexpr, P64: tl.constexpr,
    FP64: tl.constexpr, BF16_RNE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """grad_x = w * invstd * (gu - sum(gu) / M - xhat * sum(gu * xhat) / M); sums_ptr holds
    [sum gu; sum gu * xhat] ([2, C], compute dtype)."""
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    cmask = c < C
    p, pmask = _pixel_ids(tl.program_id(0), M, BLOCK_P, P64)
    mask = cmask & pmask
    mean, invstd, w, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, cmask, eps, HAS_W, HAS_B, FP64)
    mean_gb = _load(sums_ptr, c, cmask, FP64) / M
    mean_gw = _load(sums_ptr + C, c, cmask, FP64) / M
    x = _load(x_ptr, _pixels(p, HW, sxn, sxhw, SPLIT) + c * sxc, mask, FP64)
    g = _load(g_ptr, _pixels(p, HW, sgn, sghw, SPLIT) + c * sgc, mask, FP64)
    xhat = tl.where(mask, (x - mean) * invstd, 0.0)  # masked lanes stay finite
    gu = _act_grad(g, xhat * w + b, ACT)
    gx = (w * invstd) * (gu - mean_gb - xhat * mean_gw)
    _store(gx_ptr, _pixels(p, HW, sdn, sdhw, SPLIT) + c * sdc, gx, mask, BF16_RNE)


# ------------------------------------------------------------------------------- launchers


def _pixel_strides(t):
    """(s_n, s_c, s_hw) addressing t[n, c, hw] with hw = h * W + w, or None where h and w do
    not collapse into one dimension. s_n = H*W * s_hw where n and hw collapse too."""
    N, C, H, W = t.shape
    sn, sc, sh, sw = t.stride()
    if H == 1 and W == 1:
        shw = sn  # hw is always 0: the pixels are the images
    elif W == 1:
        shw = sh
    elif H == 1:
        shw = sw
    elif sh == W * sw:
        shw = sw
    else:
        return None
    if N == 1:
        sn = H * W * shw
    return sn, sc, shw


def _addressable(t, fmt):
    """(t or a copy of it in layout fmt, its pixel strides)."""
    strides = _pixel_strides(t)
    if strides is None:
        t = t.contiguous(memory_format=fmt)
        strides = _pixel_strides(t)
    return t, strides


def _blocks(C, channels_fast):
    """Tile [BLOCK_C, BLOCK_P] of TILE elements: along the channels when they are the fastest
    dimension, along the pixels otherwise."""
    block_c = max(2, min(next_power_of_2(C), 64 if channels_fast else 4))
    return block_c, TILE // block_c


class _Plan:
    """Shapes, strides and grids shared by a forward or backward call."""

    def __init__(self, x, fmt, *others):
        N, C, H, W = x.shape
        self.C, self.HW, self.M = C, H * W, N * H * W
        self.fp64 = x.dtype == torch.float64
        self.acc = torch.float64 if self.fp64 else torch.float32
        x, sx = _addressable(x, fmt)
        self.x, self.sx = x, sx
        self.others = [_addressable(t, fmt) for t in others]
        # tile orientation from x (the operand every pass reads)
        sn, sc, shw = sx
        self.block_c, self.block_p = _blocks(C, sc < shw)
        self.tiles = cdiv(self.M, self.block_p)
        self.c_blocks = cdiv(C, self.block_c)
        self.tiles_per_chunk = max(1, cdiv(self.tiles * self.c_blocks, MAX_PROGRAMS))
        self.chunks = cdiv(self.tiles, self.tiles_per_chunk)
        self.p64 = self.M + self.tiles_per_chunk * self.block_p >= 2**31

    def split(self, *strides):
        """Whether any of these tensors needs pixels split into (n, hw)."""
        return any(sn != self.HW * shw for sn, _, shw in strides)

    def consts(self, *strides):
        return dict(SPLIT=self.split(*strides), P64=self.p64, FP64=self.fp64,
                    BLOCK_C=self.block_c, BLOCK_P=self.block_p)


def _vector_or(t, fallback):
    """A 1-D parameter as a dense buffer, or (absent) any pointer the kernel won't read."""
    return fallback if t is None else t.contiguous()


def _empty_like_out(x, fmt):
    return torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device, memory_format=fmt)


def forward(x, weight, bias, eps, act):
    """(y, mean, var): see the module docstring."""
    _checks.check_bn_act(OP, x, weight, bias, eps, act)
    fmt = _layout.conv_output_format(x)
    y = _empty_like_out(x, fmt)
    plan = _Plan(x, fmt)
    sy = _pixel_strides(y)
    C, M = plan.C, plan.M
    mean = torch.empty(C, dtype=plan.acc, device=x.device)
    var = torch.empty(C, dtype=plan.acc, device=x.device)

    part = torch.empty((plan.chunks, 2, C), dtype=plan.acc, device=x.device)
    _stats_kernel[(plan.chunks, plan.c_blocks)](
        plan.x, part, C, plan.HW, M, plan.tiles_per_chunk, *plan.sx, **plan.consts(plan.sx),
    )
    _stats_merge_kernel[(cdiv(C, MERGE_BLOCK_C),)](
        part, mean, var, C, M, plan.chunks, plan.tiles_per_chunk * plan.block_p,
        FP64=plan.fp64, BLOCK_K=MERGE_BLOCK_K, BLOCK_C=MERGE_BLOCK_C,
    )
    _forward_kernel[(plan.tiles, plan.c_blocks)](
        plan.x, mean, var, _vector_or(weight, mean), _vector_or(bias, mean), y, C, plan.HW, M, float(eps),
        *plan.sx, *sy, ACT=act, HAS_W=weight is not None, HAS_B=bias is not None,
        BF16_RNE=needs_manual_bf16_rounding(y), **plan.consts(plan.sx, sy),
    )
    return y, mean, var


def backward(grad_out, x, mean, var, weight, bias, eps, act):
    """(grad_x, grad_weight, grad_bias); grad_weight / grad_bias are computed even where weight /
    bias are None (in the statistics' dtype then)."""
    op = f"{OP}_backward"
    _checks.check_bn_act_backward(op, grad_out, x, mean, var, weight, bias, eps, act)
    fmt = _layout.conv_output_format(x)
    grad_x = _empty_like_out(x, fmt)
    plan = _Plan(x, fmt, grad_out)
    (g, sg), = plan.others
    sd = _pixel_strides(grad_x)
    C, M = plan.C, plan.M
    mean, var = mean.contiguous(), var.contiguous()
    w, b = _vector_or(weight, mean), _vector_or(bias, mean)
    flags = dict(ACT=act, HAS_W=weight is not None, HAS_B=bias is not None)

    part = torch.empty((plan.chunks, 2, C), dtype=plan.acc, device=x.device)
    _backward_reduce_kernel[(plan.chunks, plan.c_blocks)](
        g, plan.x, mean, var, w, b, part, C, plan.HW, M, float(eps), plan.tiles_per_chunk,
        *sg, *plan.sx, **flags, **plan.consts(sg, plan.sx),
    )
    sums = part.sum(0)  # [2, C]: sum gu, sum gu * xhat
    _backward_dx_kernel[(plan.tiles, plan.c_blocks)](
        g, plan.x, mean, var, w, b, sums, grad_x, C, plan.HW, M, float(eps),
        *sg, *plan.sx, *sd, **flags, BF16_RNE=needs_manual_bf16_rounding(grad_x), **plan.consts(sg, plan.sx, sd),
    )
    # copies: outputs must not alias each other
    grad_weight = sums[1].to(plan.acc if weight is None else weight.dtype, copy=True)
    grad_bias = sums[0].to(plan.acc if bias is None else bias.dtype, copy=True)
    return grad_x, grad_weight, grad_bias
