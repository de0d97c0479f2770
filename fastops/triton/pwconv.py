"""Triton kernels of pwconv_bn_act: grouped 1x1 conv with the epilogue in registers; forward and
backward (csrc/pwconv.h).

    z[p, o] = sum_{c < Cg} x[p, g(o)*Cg + c] * w[o, c]     (p: a pixel n, h, w; g(o) = o // OCg)
    u = z * scale[o] + shift[o] (+ residual[p, o]),   v = act(u)
    y[p, q(o)] = v[p, o],  q(o) = (o % OCs) * SG + o // OCs   (OCs = OC / SG: the channel
                 shuffle of csrc/shuffle.h folded into the store; q(o) = o for SG = 1)

Work decomposition: a program owns a tile of BLOCK_P pixels x BLOCK_O output channels of one
group (grid: pixel tiles, output-channel blocks, groups) and accumulates `tl.dot`s of
[BLOCK_P, BLOCK_K] input tiles with [BLOCK_K, BLOCK_O] weight tiles over the group's Cg input
channels; float32 is multiplied at IEEE precision, float16 / bfloat16 on the tensor cores with
float32 accumulation, float64 in float64. Pixels are one flat index over N*H*W, addressed
through the tensors' strides (split into (n, hw) only where the image stride requires it);
offsets are 64-bit.

Backward:
  1. `_backward_kernel`: recomputes z tile by tile with the same dot loop, reads grad_out at
     the shuffled channel q(o), forms gu = act'(u) * g, writes grad_residual = gu and
     gz = gu * scale (float32 / float64), and per-program partial sums of gu (grad_shift) and
     gu * z (grad_scale); torch sums the partials (deterministic, no atomics).
  2. grad_x and grad_weight, the 1x1 conv's input and weight gradients of gz, are torch matmuls.
"""

import torch
import triton
import triton.language as tl

from .. import _checks, _layout
from ._pointwise import INTERPRETING, cdiv, needs_manual_bf16_rounding, next_power_of_2
from .activation import _load, _store
from .bn_act import _addressable, _pixel_strides, _pixels
from .dwconv import _act, _act_grad, _affine

OP = "pwconv_bn_act"

# Tile sizes: BLOCK_P pixels; output / input channels up to these (at least 16: tl.dot's least).
BLOCK_P = 64
MAX_BLOCK_O = 64
MAX_BLOCK_K = 32


# ------------------------------------------------------------------------------- kernels


@triton.jit
def _conv_tile(
    x_ptr, w_ptr, pid_p, pid_o, grp, M, HW, Cg, OCg, sxn, sxc, sxp,
    SPLIT: tl.constexpr, FP64: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """z for the tile: (z [BLOCK_P, BLOCK_O], pixels p [BLOCK_P, 1], their mask, output channels
    o [1, BLOCK_O], their mask). w is [OC, Cg], dense."""
    p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)[:, None]
    pmask = p < M
    og = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)[None, :]
    omask = og < OCg
    o = grp.to(tl.int64) * OCg + og
    x_rows = x_ptr + (_pixels(p, HW, sxn, sxp, SPLIT) + (grp.to(tl.int64) * Cg) * sxc)  # [BLOCK_P, 1]
    w_cols = w_ptr + o * Cg  # [1, BLOCK_O]
    if FP64:
        acc = tl.zeros([BLOCK_P, BLOCK_O], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_P, BLOCK_O], dtype=tl.float32)
    for k0 in range(0, Cg, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < Cg
        xt = tl.load(x_rows + k[None, :].to(tl.int64) * sxc, mask=pmask & kmask[None, :], other=0.0)
        wt = tl.load(w_cols + k[:, None], mask=kmask[:, None] & omask, other=0.0)
        if UPCAST:  # the interpreter multiplies bfloat16 as raw integers: give it float32
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        # out_dtype: compiled Triton asserts that it matches acc's (float64 for float64)
        acc = tl.dot(xt, wt, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc, p, pmask, o, omask


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, res_ptr, y_ptr,
    M, HW, Cg, OCg, OCS, SG,
    sxn, sxc, sxp, srn, src, srp, syn, syc, syp,
    ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RES: tl.constexpr,
    SPLIT: tl.constexpr, FP64: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr, BF16_RNE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    z, p, pmask, o, omask = _conv_tile(
        x_ptr, w_ptr, tl.program_id(0), tl.program_id(1), tl.program_id(2), M, HW, Cg, OCg, sxn, sxc, sxp,
        SPLIT, FP64, UPCAST, PREC, BLOCK_P, BLOCK_O, BLOCK_K)
    mask = pmask & omask
    u, _ = _affine(z, scale_ptr, shift_ptr, o, omask, HAS_SCALE, HAS_SHIFT, FP64)
    if HAS_RES:
        u += _load(res_ptr, _pixels(p, HW, srn, srp, SPLIT) + o * src, mask, FP64)
    q = (o % OCS) * SG + o // OCS
    _store(y_ptr, _pixels(p, HW, syn, syp, SPLIT) + q * syc, _act(u, ACT), mask, BF16_RNE)


@triton.jit
def _backward_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, res_ptr, g_ptr, gz_ptr, gr_ptr, part_ptr,
    M, HW, Cg, OCg, OC, OCS, SG,
    sxn, sxc, sxp, srn, src, srp, sgn, sgc, sgp, szn, szc, szp, sdn, sdc, sdp,
    ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RES: tl.constexpr,
    WRITE_GR: tl.constexpr, SPLIT: tl.constexpr, FP64: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
    BF16_RNE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gu = act'(u) * grad_out[.., q(o)]; gz = gu * scale into gz_ptr (compute dtype), gu into
    gr_ptr (grad_residual, x's dtype) with WRITE_GR; part[pid_p, 0, o] = sum gu and
    part[pid_p, 1, o] = sum gu * z over the tile's pixels."""
    pid_p = tl.program_id(0)
    z, p, pmask, o, omask = _conv_tile(
        x_ptr, w_ptr, pid_p, tl.program_id(1), tl.program_id(2), M, HW, Cg, OCg, sxn, sxc, sxp,
        SPLIT, FP64, UPCAST, PREC, BLOCK_P, BLOCK_O, BLOCK_K)
    mask = pmask & omask
    u, scale = _affine(z, scale_ptr, shift_ptr, o, omask, HAS_SCALE, HAS_SHIFT, FP64)
    if HAS_RES:
        u += _load(res_ptr, _pixels(p, HW, srn, srp, SPLIT) + o * src, mask, FP64)
    q = (o % OCS) * SG + o // OCS
    g = _load(g_ptr, _pixels(p, HW, sgn, sgp, SPLIT) + q * sgc, mask, FP64)
    gu = tl.where(mask, _act_grad(g, u, ACT), 0.0)
    tl.store(gz_ptr + (_pixels(p, HW, szn, szp, SPLIT) + o * szc), gu * scale, mask=mask)
    if WRITE_GR:
        _store(gr_ptr, _pixels(p, HW, sdn, sdp, SPLIT) + o * sdc, gu, mask, BF16_RNE)
    part = part_ptr + pid_p.to(tl.int64) * (2 * OC) + o  # [1, BLOCK_O]
    tl.store(part, tl.sum(gu, axis=0)[None, :], mask=omask)
    tl.store(part + OC, tl.sum(gu * z, axis=0)[None, :], mask=omask)


# ------------------------------------------------------------------------------- launchers


class _Plan:
    """Shapes, tiles and the dot's flavour for a call on x ([N, C, H, W]) and w ([OC, Cg, 1, 1],
    x's dtype)."""

    def __init__(self, x, weight, groups, shuffle_groups, fmt):
        N, C, H, W = x.shape
        self.N, self.C, self.H, self.W, self.HW, self.M = N, C, H, W, H * W, N * H * W
        self.OC, self.G, self.SG = weight.shape[0], groups, shuffle_groups
        self.Cg, self.OCg = C // groups, self.OC // groups
        self.fmt = fmt
        self.fp64 = x.dtype == torch.float64
        self.acc = torch.float64 if self.fp64 else torch.float32
        self.x, self.sx = _addressable(x, fmt)
        self.w = weight.reshape(self.OC, self.Cg).contiguous()
        upcast = INTERPRETING and x.dtype == torch.bfloat16
        half = x.dtype in (torch.float16, torch.bfloat16) and not upcast
        self.block_p = BLOCK_P
        self.block_o = max(16, min(next_power_of_2(self.OCg), MAX_BLOCK_O))
        self.block_k = max(16, min(next_power_of_2(self.Cg), MAX_BLOCK_K))
        self.tiles = cdiv(self.M, self.block_p)
        self.grid = (self.tiles, cdiv(self.OCg, self.block_o), groups)
        self.consts = dict(FP64=self.fp64, UPCAST=upcast, PREC=None if half else "ieee",
                           BLOCK_P=self.block_p, BLOCK_O=self.block_o, BLOCK_K=self.block_k)

    def out_shape(self):
        return (self.N, self.OC, self.H, self.W)

    def empty(self, dtype):
        """An output-shaped tensor in the output layout."""
        return torch.empty(self.out_shape(), dtype=dtype, device=self.x.device, memory_format=self.fmt)

    def split(self, *strides):
        """Whether the pixels of any of these tensors need splitting into (n, hw)."""
        return any(sn != self.HW * sp for sn, _, sp in strides)

    def addressable(self, t):
        """(t or a copy, its pixel strides); (x, x's strides) for None: a pointer never read."""
        return (self.x, self.sx) if t is None else _addressable(t, self.fmt)


def _vector_or(t, fallback):
    return fallback if t is None else t.contiguous()


def _forward(x, weight, scale, shift, groups, act, residual, shuffle_groups, fmt, out_dtype):
    plan = _Plan(x, weight, groups, shuffle_groups, fmt)
    y = plan.empty(out_dtype)
    if plan.M == 0:
        return y
    res, sr = plan.addressable(residual)
    sy = _pixel_strides(y)
    _forward_kernel[plan.grid](
        plan.x, plan.w, _vector_or(scale, plan.w), _vector_or(shift, plan.w), res, y,
        plan.M, plan.HW, plan.Cg, plan.OCg, plan.OC // shuffle_groups, shuffle_groups,
        *plan.sx, *sr, *sy,
        ACT=act, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, HAS_RES=residual is not None,
        SPLIT=plan.split(plan.sx, sr, sy), BF16_RNE=needs_manual_bf16_rounding(y), **plan.consts,
    )
    return y


def _backward_elementwise(grad_out, x, weight, scale, shift, groups, act, residual, shuffle_groups, fmt,
                          write_grad_residual=True):
    """(gz, [2, OC] sums of gu and gu * z, grad_residual or None); gz in the compute dtype,
    grad_residual in x's dtype, both in layout fmt."""
    plan = _Plan(x, weight, groups, shuffle_groups, fmt)
    gz = plan.empty(plan.acc)
    gr = plan.empty(x.dtype) if write_grad_residual else None
    if plan.M == 0:
        sums = torch.zeros((2, plan.OC), dtype=plan.acc, device=x.device)
        return gz, sums, gr
    res, sr = plan.addressable(residual)
    g, sg = _addressable(grad_out, fmt)
    sz = _pixel_strides(gz)
    sd = sz if gr is None else _pixel_strides(gr)
    part = torch.empty((plan.tiles, 2, plan.OC), dtype=plan.acc, device=x.device)
    _backward_kernel[plan.grid](
        plan.x, plan.w, _vector_or(scale, plan.w), _vector_or(shift, plan.w), res, g, gz,
        gz if gr is None else gr, part,
        plan.M, plan.HW, plan.Cg, plan.OCg, plan.OC, plan.OC // shuffle_groups, shuffle_groups,
        *plan.sx, *sr, *sg, *sz, *sd,
        ACT=act, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, HAS_RES=residual is not None,
        WRITE_GR=gr is not None, SPLIT=plan.split(plan.sx, sr, sg, sz, sd),
        BF16_RNE=gr is not None and needs_manual_bf16_rounding(gr), **plan.consts,
    )
    return gz, part.sum(0), gr


def _input_weight_grads(gz, x, weight, groups):
    """The 1x1 conv's (grad_x, grad_weight) for gz (torch matmuls, in gz's dtype): grad_x[n, c]
    = sum_o gz[n, o] * w[o, c] and grad_w[o, c] = sum_{n, h, w} gz[n, o] * x[n, c], per group."""
    OC, Cg = weight.shape[:2]
    gz5 = gz.unflatten(1, (groups, OC // groups))
    x5 = x.to(gz.dtype).unflatten(1, (groups, Cg))
    w3 = weight.reshape(groups, OC // groups, Cg).to(gz.dtype)
    grad_x = torch.einsum("ngohw,goc->ngchw", gz5, w3).flatten(1, 2)
    grad_w = torch.einsum("ngohw,ngchw->goc", gz5, x5).reshape(OC, Cg, 1, 1)
    return grad_x, grad_w


def check_grad_out(op, grad_out, shape, x):
    """grad_out must have the output's shape and x's device (the fake impls' words)."""
    _checks.check_tensor(op, "grad_out", grad_out)
    if list(grad_out.shape) != list(shape):
        raise ValueError(f"fastops.{op}: argument 'grad_out' must have shape {list(shape)}, got {list(grad_out.shape)}")
    if grad_out.device != x.device:
        raise ValueError(f"fastops.{op}: argument 'grad_out' is on {grad_out.device} but 'x' is on {x.device}")


def forward(x, weight, scale, shift, groups, act, residual, shuffle_groups):
    _checks.check_pwconv(OP, x, weight, scale, shift, groups, act, residual, shuffle_groups)
    return _forward(x, weight, scale, shift, groups, act, residual, shuffle_groups,
                    _layout.conv_output_format(x), x.dtype)


def backward(grad_out, x, weight, scale, shift, groups, act, residual, shuffle_groups):
    """(grad_x, grad_weight, grad_scale, grad_shift, grad_residual); grad_scale / grad_shift as if
    scale = 1 / shift = 0 where None (in x's dtype then), grad_residual empty (0 elements) where
    residual is None."""
    op = f"{OP}_backward"
    shape = _checks.check_pwconv(op, x, weight, scale, shift, groups, act, residual, shuffle_groups)
    check_grad_out(op, grad_out, shape, x)
    fmt = _layout.conv_output_format(x)
    gz, sums, grad_residual = _backward_elementwise(grad_out, x, weight, scale, shift, groups, act, residual,
                                                    shuffle_groups, fmt, write_grad_residual=residual is not None)
    if grad_residual is None:
        grad_residual = x.new_empty(0)
    grad_x, grad_w = _input_weight_grads(gz, x, weight, groups)
    return (grad_x.to(x.dtype).contiguous(memory_format=fmt), grad_w.to(weight.dtype).contiguous(),
            sums[1].to(x.dtype if scale is None else scale.dtype, copy=True),
            sums[0].to(x.dtype if shift is None else shift.dtype, copy=True), grad_residual)
