"""Triton kernels of squeeze_excite (forward, backward); the formulas of csrc/squeeze_excite.h.

    p[n, c] = mean_hw x[n, c]                 _reduce_kernel (one read of x)
    h = act(p @ w1^T + b1), s = gate(h @ w2^T + b2)        torch, on the [N, C] / [N, S] vectors
    y = x * s[n, c]                           _scale_kernel (one read + write)

backward (g = grad_out):
    sum_hw x and gs = sum_hw g * x            _reduce_kernel (one read of x and g)
    the fully connected layers' backward      torch, on the small vectors (written out below)
    grad_x = g * s[n, c] + gp[n, c] / HW      _scale_kernel (one read of g, one write)

Two passes over x each way. Both kernels work on tiles [BLOCK_C channels, BLOCK_P pixels] of one
image, along the pixels for NCHW data and along the channels for channels_last data; the pixels
of a plane are addressed as one dimension (any layout whose H and W collapse is read in place,
others are copied once). Sums and the small math run in float32 (float64 for float64 x); stores
round to nearest even (the `_store` of fastops/triton/activation.py).
"""

import torch
import triton
import triton.language as tl

from .. import _checks, _layout, reference
from ._pointwise import cdiv, needs_manual_bf16_rounding, next_power_of_2
from .activation import _load, _store
from .bn_act import _addressable, _pixel_strides

OP = "squeeze_excite"
TILE = 1024  # elements per program (and per step of the reduction loop)


@triton.jit
def _reduce_kernel(
    x_ptr, g_ptr, out_ptr, C, HW, N,
    sxn, sxc, sxp, sgn, sgc, sgp,
    HAS_G: tl.constexpr, FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out[0, n, c] = sum_p x[n, c, p]; with HAS_G also out[1, n, c] = sum_p g[n, c, p] * x[n, c, p].
    Program (n, channel block) loops over the plane; each lane accumulates, reduced once."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    cmask = c < C
    x_c = x_ptr + (n * sxn + c * sxc)
    g_c = g_ptr + (n * sgn + c * sgc)
    if FP64:
        dt = tl.float64
    else:
        dt = tl.float32
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=dt)
    acc_g = tl.zeros([BLOCK_C, BLOCK_P], dtype=dt)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)[None, :]
        mask = cmask & (p < HW)
        x = _load(x_c, p * sxp, mask, FP64)
        acc += x
        if HAS_G:
            acc_g += _load(g_c, p * sgp, mask, FP64) * x
    out = out_ptr + n * C + c
    tl.store(out, tl.sum(acc, axis=1)[:, None], mask=cmask)
    if HAS_G:
        tl.store(out + N * C, tl.sum(acc_g, axis=1)[:, None], mask=cmask)


@triton.jit
def _scale_kernel(
    x_ptr, s_ptr, b_ptr, y_ptr, C, HW, TILES,
    sxn, sxc, sxp, syn, syc, syp,
    HAS_B: tl.constexpr, FP64: tl.constexpr, BF16_RNE: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """y[n, c, p] = x[n, c, p] * s[n, c] (+ b[n, c]); s, b: [N, C] dense, compute dtype.
    Program (image n * TILES + pixel tile, channel block)."""
    pid = tl.program_id(0)
    n = (pid // TILES).to(tl.int64)
    p = (pid % TILES).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)[None, :]
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)[:, None]
    cmask = c < C
    mask = cmask & (p < HW)
    nc = n * C + c
    y = _load(x_ptr, n * sxn + c * sxc + p * sxp, mask, FP64) * _load(s_ptr, nc, cmask, FP64)
    if HAS_B:
        y += _load(b_ptr, nc, cmask, FP64)
    _store(y_ptr, n * syn + c * syc + p * syp, y, mask, BF16_RNE)


# ------------------------------------------------------------------------------- launchers


def _blocks(C, channels_fast):
    block_c = max(2, min(next_power_of_2(C), 64 if channels_fast else 4))
    return block_c, TILE // block_c


def _reduce(x, g, fmt):
    """[1 or 2, N, C] in the compute dtype: sum_hw x (and sum_hw g * x)."""
    N, C, H, W = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty((1 if g is None else 2, N, C), dtype=acc, device=x.device)
    x, sx = _addressable(x, fmt)
    if g is None:
        g, sg = x, sx
    else:
        g, sg = _addressable(g, fmt)
    block_c, block_p = _blocks(C, sx[1] < sx[2])
    _reduce_kernel[(N, cdiv(C, block_c))](
        x, g, out, C, H * W, N, *sx, *sg,
        HAS_G=out.shape[0] == 2, FP64=x.dtype == torch.float64, BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return out


def _scale(x, s, b, fmt):
    """x * s[:, :, None, None] (+ b[:, :, None, None]) in x's dtype and layout fmt."""
    N, C, H, W = x.shape
    y = torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device, memory_format=fmt)
    x, sx = _addressable(x, fmt)
    sy = _pixel_strides(y)
    block_c, block_p = _blocks(C, sy[1] < sy[2])
    tiles = cdiv(H * W, block_p)
    _scale_kernel[(N * tiles, cdiv(C, block_c))](
        x, s, s if b is None else b, y, C, H * W, tiles, *sx, *sy,
        HAS_B=b is not None, FP64=x.dtype == torch.float64, BF16_RNE=needs_manual_bf16_rounding(y),
        BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return y


def _matrix(w, acc):
    """A fully connected weight ([M, K] or [M, K, 1, 1]) as an [M, K] matrix in dtype acc."""
    return w.reshape(w.shape[0], w.shape[1]).to(acc)


def _excite(p, w1, b1, w2, b2, act, gate):
    """(z, h, t, s) of the two fully connected layers, in p's dtype."""
    z = p @ w1.T
    if b1 is not None:
        z = z + b1.to(p.dtype)
    h = reference.activation(z, act)
    t = h @ w2.T
    if b2 is not None:
        t = t + b2.to(p.dtype)
    return z, h, t, reference.activation(t, gate)


def forward(x, w1, b1, w2, b2, act, gate):
    _checks.check_squeeze_excite(OP, x, w1, b1, w2, b2, act, gate)
    fmt = _layout.conv_output_format(x)
    N, C, H, W = x.shape
    if N == 0:
        return torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device, memory_format=fmt)
    sums = _reduce(x, None, fmt)
    p = sums[0] / (H * W)
    *_, s = _excite(p, _matrix(w1, p.dtype), b1, _matrix(w2, p.dtype), b2, act, gate)
    return _scale(x, s.contiguous(), None, fmt)


def backward(grad_out, x, w1, b1, w2, b2, act, gate):
    """(grad_x, grad_w1, grad_b1, grad_w2, grad_b2); grad_b1 / grad_b2 as if the biases were 0
    where None (in x's dtype then)."""
    op = f"{OP}_backward"
    _checks.check_squeeze_excite(op, x, w1, b1, w2, b2, act, gate)
    _checks.check_like(op, "grad_out", grad_out, "x", x)
    fmt = _layout.conv_output_format(x)
    N, C, H, W = x.shape
    HW = H * W
    b1_dtype = x.dtype if b1 is None else b1.dtype
    b2_dtype = x.dtype if b2 is None else b2.dtype
    if N == 0:
        return (torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device, memory_format=fmt),
                torch.zeros_like(w1, memory_format=torch.contiguous_format),
                torch.zeros(w1.shape[0], dtype=b1_dtype, device=x.device),
                torch.zeros_like(w2, memory_format=torch.contiguous_format),
                torch.zeros(C, dtype=b2_dtype, device=x.device))
    sums = _reduce(x, grad_out, fmt)  # [2, N, C]: sum x, sum g * x
    p, gs = sums[0] / HW, sums[1]
    m1, m2 = _matrix(w1, p.dtype), _matrix(w2, p.dtype)
    z, h, t, s = _excite(p, m1, b1, m2, b2, act, gate)
    # y = x * s:  dL/ds = gs; back through s = gate(t), t = h @ w2^T + b2, h = act(z), z = p @ w1^T + b1
    gt = reference.activation_backward(gs, t, gate)
    grad_b2 = gt.sum(0)
    grad_w2 = gt.T @ h
    gh = gt @ m2
    gz = reference.activation_backward(gh, z, act)
    grad_b1 = gz.sum(0)
    grad_w1 = gz.T @ p
    gp = gz @ m1
    # y = x * s with s a function of p = mean_hw x:  grad_x = g * s + gp / HW
    grad_x = _scale(grad_out, s.contiguous(), (gp / HW).contiguous(), fmt)
    return (grad_x, grad_w1.reshape(w1.shape).to(w1.dtype), grad_b1.to(b1_dtype),
            grad_w2.reshape(w2.shape).to(w2.dtype), grad_b2.to(b2_dtype))
