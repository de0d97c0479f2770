"""Triton path of separable_conv_bn_act: depthwise conv, then 1x1 conv + affine + activation.

    d = dwconv(x, dw_weight, stride, padding, dilation)       [N, C*m, OH, OW]
    y = act(pw(d) * scale[o] + shift[o])                      pw_weight: [OC, C*m, 1, 1]

Not fused: the depthwise result d IS written to memory here, as a temporary in the compute dtype
(float32; float64 for float64 x, so half inputs are rounded once, at the end). The forward runs
the depthwise kernel of fastops/triton/dwconv.py (no affine, no activation) into d, then the
pointwise kernel of fastops/triton/pwconv.py on d. Keeping d in cache, a tile at a time, is
the C++ kernels' job (csrc/separable.h).

Backward recomputes d, runs pwconv's backward kernel on it (gz = act'(u) * grad_out * scale, and
the sums giving grad_scale / grad_shift), takes grad_pw_weight and grad_d from gz with torch
matmuls, and hands grad_d to dwconv's Triton backward (act "none") for grad_x and
grad_dw_weight.
"""

import torch

from .. import _checks, _layout
from . import dwconv, pwconv
from ._pointwise import cdiv

OP = "separable_conv_bn_act"


def _depthwise(x, dw_weight, stride, padding, dilation, fmt):
    """d = dwconv(x, dw_weight) in the compute dtype and layout fmt (dwconv's forward kernel,
    with a float32 / float64 output buffer)."""
    s = dwconv._check(x, dw_weight, None, None, stride, padding, dilation, "none", op=OP)
    fp64 = x.dtype == torch.float64
    cl = fmt == torch.channels_last
    d = dwconv._empty((s.N, s.OC, s.OH, s.OW), torch.float64 if fp64 else torch.float32, x.device, cl)
    if d.numel() == 0:
        return d
    w = dw_weight.reshape(s.OC, s.KH * s.KW).contiguous()
    block_c, block_p = dwconv._blocks(s.OC, cl)
    tiles = cdiv(s.OH * s.OW, block_p)
    dwconv._forward_kernel[(s.N * tiles, cdiv(s.OC, block_c))](
        x, w, w, w, d, s.H, s.W, s.OC, s.OH, s.OW, s.M, tiles, *x.stride(), *d.stride(),
        ACT="none", HAS_SCALE=False, HAS_SHIFT=False, FP64=fp64, BF16_RNE=False,
        BLOCK_C=block_c, BLOCK_P=block_p, **dwconv._params(s),
    )
    return d


def forward(x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act):
    _checks.check_separable(OP, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act)
    fmt = _layout.conv_output_format(x)
    d = _depthwise(x, dw_weight, stride, padding, dilation, fmt)
    return pwconv._forward(d, pw_weight.to(d.dtype), scale, shift, 1, act, None, 1, fmt, x.dtype)


def backward(grad_out, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act):
    """(grad_x, grad_dw_weight, grad_pw_weight, grad_scale, grad_shift); grad_scale / grad_shift
    as if scale = 1 / shift = 0 where None (in x's dtype then)."""
    op = f"{OP}_backward"
    shape = _checks.check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act)
    pwconv.check_grad_out(op, grad_out, shape, x)
    fmt = _layout.conv_output_format(x)
    d = _depthwise(x, dw_weight, stride, padding, dilation, fmt)
    w_pw = pw_weight.to(d.dtype)
    gz, sums, _ = pwconv._backward_elementwise(grad_out, d, w_pw, scale, shift, 1, act, None, 1, fmt,
                                               write_grad_residual=False)
    grad_d, grad_pw = pwconv._input_weight_grads(gz, d, w_pw, 1)
    grad_x, grad_dw, _, _ = dwconv.backward(grad_d, x, dw_weight, None, None, stride, padding, dilation, "none")
    return (grad_x, grad_dw, grad_pw.to(pw_weight.dtype).contiguous(),
            sums[1].to(x.dtype if scale is None else scale.dtype, copy=True),
            sums[0].to(x.dtype if shift is None else shift.dtype, copy=True))
