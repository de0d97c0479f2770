"""Argument checks of the Python layer. Same errors, same words as csrc/pointwise.h: a wrong
dtype raises TypeError, a wrong shape or device ValueError, and the message names the op and the
argument."""

import torch

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(op: str, arg: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastops.{op}: argument '{arg}' must be a torch.Tensor, got {type(t).__name__}")


def check_floating(op: str, arg: str, t) -> None:
    check_tensor(op, arg, t)
    if t.dtype not in FLOATING:
        raise TypeError(
            f"fastops.{op}: argument '{arg}' must be a floating-point tensor "
            f"(float32, float64, float16 or bfloat16), got {t.dtype}"
        )


def check_like(op: str, arg: str, a, barg: str, b) -> None:
    """`a` must match `b` (the primary argument) in shape, dtype and device."""
    check_tensor(op, arg, a)
    if a.shape != b.shape:
        raise ValueError(f"fastops.{op}: argument '{arg}' has shape {list(a.shape)} but '{barg}' has shape {list(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"fastops.{op}: argument '{arg}' has dtype {a.dtype} but '{barg}' has dtype {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"fastops.{op}: argument '{arg}' is on {a.device} but '{barg}' is on {b.device}")


def check_grad_out(op: str, grad_out, shape: list) -> None:
    """A backward op's grad_out must be a tensor of the forward output's shape."""
    check_tensor(op, "grad_out", grad_out)
    if list(grad_out.shape) != shape:
        raise ValueError(f"fastops.{op}: argument 'grad_out' must have shape {shape}, got {list(grad_out.shape)}")


def check_writable(op: str, arg: str, t) -> None:
    """An in-place op cannot write a tensor whose elements share memory (an expanded view)."""
    # (the stride test ATen's has_internal_overlap answers "yes" to; written out so that
    # torch.compile can trace it)
    if any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride())):
        raise RuntimeError(
            f"fastops.{op}: argument '{arg}' has elements that share memory (an expanded view); "
            "in-place is not possible, clone it first"
        )


ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu")


def _is_int(v) -> bool:
    """An int (a SymInt under dynamic shapes, where torch.compile passes the geometry as ints it
    may trace symbolically), not a bool."""
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def pair(op: str, arg: str, v) -> list:
    """An int or a pair of ints as a list of two ints."""
    if _is_int(v):
        return [v, v]
    items = list(v) if isinstance(v, (list, tuple, torch.Size)) else None
    if items is None or len(items) != 2 or not all(_is_int(i) for i in items):
        raise ValueError(f"fastops.{op}: argument '{arg}' must be an int or a pair of ints, got {v!r}")
    return items


def check_act(op: str, act) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"fastops.{op}: argument 'act' must be one of {', '.join(ACTIVATIONS)}; got {act!r}")


def _check_param_vector(op, arg, t, x, oc):
    if t is None:
        return
    check_tensor(op, arg, t)
    if t.dtype not in FLOATING:
        raise TypeError(f"fastops.{op}: argument '{arg}' must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != oc:
        raise ValueError(f"fastops.{op}: argument '{arg}' must have shape [{oc}] (one value per output channel), got {list(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"fastops.{op}: argument '{arg}' is on {t.device} but 'x' is on {x.device}")


def check_dwconv(op, x, weight, scale, shift, stride, padding, dilation, act, weight_arg="weight") -> list:
    """The checks of csrc/dwconv.h, in Python (same errors); returns the output shape."""
    check_floating(op, "x", x)
    if x.dim() != 4:
        raise ValueError(f"fastops.{op}: argument 'x' must be 4-D [N, C, H, W], got {x.dim()}-D shape {list(x.shape)}")
    check_tensor(op, weight_arg, weight)
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"fastops.{op}: argument '{weight_arg}' must have shape [C*m, 1, kh, kw], got {list(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"fastops.{op}: argument '{weight_arg}' has dtype {weight.dtype} but 'x' has dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"fastops.{op}: argument '{weight_arg}' is on {weight.device} but 'x' is on {x.device}")
    n, c, h, w = x.shape
    oc, _, kh, kw = weight.shape
    if c == 0 or oc % c != 0:
        raise ValueError(f"fastops.{op}: argument '{weight_arg}' has {oc} output channels, which is not a multiple of the {c} channels of 'x'")
    if kh == 0 or kw == 0:
        raise ValueError(f"fastops.{op}: argument '{weight_arg}' has an empty kernel {list(weight.shape)}")
    (sh, sw), (ph, pw), (dh, dw) = (pair(op, "stride", stride), pair(op, "padding", padding), pair(op, "dilation", dilation))
    if sh < 1 or sw < 1:
        raise ValueError(f"fastops.{op}: argument 'stride' must be >= 1, got {[sh, sw]}")
    if ph < 0 or pw < 0:
        raise ValueError(f"fastops.{op}: argument 'padding' must be >= 0, got {[ph, pw]}")
    if dh < 1 or dw < 1:
        raise ValueError(f"fastops.{op}: argument 'dilation' must be >= 1, got {[dh, dw]}")
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h + 2 * ph < eff_h or w + 2 * pw < eff_w:
        raise ValueError(
            f"fastops.{op}: the kernel ({kh}x{kw}, dilation {[dh, dw]}) is larger than the padded input "
            f"({h + 2 * ph}x{w + 2 * pw})"
        )
    _check_param_vector(op, "scale", scale, x, oc)
    _check_param_vector(op, "shift", shift, x, oc)
    check_act(op, act)
    return [n, oc, (h + 2 * ph - eff_h) // sh + 1, (w + 2 * pw - eff_w) // sw + 1]


def check_bn_act(op, x, weight, bias, eps, act) -> None:
    """The checks of csrc/bn_act.h, in Python (same errors)."""
    check_floating(op, "x", x)
    if x.dim() != 4:
        raise ValueError(f"fastops.{op}: argument 'x' must be 4-D [N, C, H, W], got {x.dim()}-D shape {list(x.shape)}")
    n, c, h, w = x.shape
    if c == 0:
        raise ValueError(f"fastops.{op}: argument 'x' has no channels")
    if n * h * w <= 1:
        raise ValueError(
            f"fastops.{op}: argument 'x' has {n * h * w} value per channel; batch statistics need more than 1 "
            f"(shape {list(x.shape)})"
        )
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"fastops.{op}: argument 'eps' must be a number >= 0, got {eps!r}")
    _check_param_vector(op, "weight", weight, x, c)
    _check_param_vector(op, "bias", bias, x, c)
    check_act(op, act)


def check_bn_act_backward(op, grad_out, x, mean, var, weight, bias, eps, act) -> None:
    check_bn_act(op, x, weight, bias, eps, act)
    check_like(op, "grad_out", grad_out, "x", x)
    _check_param_vector(op, "mean", mean, x, x.shape[1])
    _check_param_vector(op, "var", var, x, x.shape[1])


def check_nchw(op, arg, t) -> None:
    check_floating(op, arg, t)
    if t.dim() != 4:
        raise ValueError(f"fastops.{op}: argument '{arg}' must be 4-D [N, C, H, W], got {t.dim()}-D shape {list(t.shape)}")


def check_same_kind(op, arg, a, barg, b) -> None:
    """`a` must have `b`'s dtype and device."""
    check_tensor(op, arg, a)
    if a.dtype != b.dtype:
        raise TypeError(f"fastops.{op}: argument '{arg}' has dtype {a.dtype} but '{barg}' has dtype {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"fastops.{op}: argument '{arg}' is on {a.device} but '{barg}' is on {b.device}")


def _check_int(op, arg, v, least) -> None:
    # (a SymInt under dynamic shapes: the autograd formulas pass sizes derived from the input's)
    if not _is_int(v) or v < least:
        raise ValueError(f"fastops.{op}: argument '{arg}' must be an int >= {least}, got {v!r}")


def check_channel_shuffle(op, x, groups) -> None:
    """The checks of csrc/shuffle.h, in Python (same errors)."""
    check_nchw(op, "x", x)
    _check_int(op, "groups", groups, 1)
    if x.shape[1] % groups != 0:
        raise ValueError(f"fastops.{op}: argument 'groups' ({groups}) does not divide the {x.shape[1]} channels of 'x'")


def check_concat_shuffle(op, a, b) -> None:
    check_nchw(op, "a", a)
    check_nchw(op, "b", b)
    check_same_kind(op, "b", b, "a", a)
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"fastops.{op}: arguments 'a' and 'b' must agree in N, H and W, got shapes {list(a.shape)} and {list(b.shape)}")
    if (a.shape[1] + b.shape[1]) % 2 != 0:
        raise ValueError(
            f"fastops.{op}: the channels of 'a' and 'b' together ({a.shape[1]} + {b.shape[1]}) must be even to shuffle in 2 groups"
        )


def check_concat_shuffle_backward(op, grad_out, split) -> None:
    check_nchw(op, "grad_out", grad_out)
    c = grad_out.shape[1]
    if c % 2 != 0:
        raise ValueError(f"fastops.{op}: argument 'grad_out' must have an even number of channels, got {c}")
    if not isinstance(split, (int, torch.SymInt)) or isinstance(split, bool) or not 0 <= split <= c:
        raise ValueError(f"fastops.{op}: argument 'split' must be in [0, {c}], got {split!r}")


def _check_fc_weight(op, arg, w, x, rows, cols) -> None:
    check_same_kind(op, arg, w, "x", x)
    ok = (w.dim() == 2 or (w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1)) and (
        rows is None or w.shape[0] == rows) and w.shape[1] == cols
    if not ok:
        r = "S" if rows is None else rows
        raise ValueError(f"fastops.{op}: argument '{arg}' must have shape [{r}, {cols}] or [{r}, {cols}, 1, 1], got {list(w.shape)}")


def _check_se_fcs(op, x, c, w1, b1, w2, b2, prefix="") -> None:
    """Squeeze-excite's two fully connected layers on c channels: w1 [S, c] and w2 [c, S] (or
    [., ., 1, 1]), S > 0, biases [S] and [c]; arguments named prefix + "w1", ..."""
    _check_fc_weight(op, f"{prefix}w1", w1, x, None, c)
    s = w1.shape[0]
    if s == 0:
        raise ValueError(f"fastops.{op}: argument '{prefix}w1' has no squeeze channels")
    _check_fc_weight(op, f"{prefix}w2", w2, x, c, s)
    _check_param_vector(op, f"{prefix}b1", b1, x, s)
    _check_param_vector(op, f"{prefix}b2", b2, x, c)


def check_squeeze_excite(op, x, w1, b1, w2, b2, act, gate) -> None:
    """The checks of csrc/squeeze_excite.h, in Python (same errors)."""
    check_nchw(op, "x", x)
    n, c, h, w = x.shape
    if c == 0:
        raise ValueError(f"fastops.{op}: argument 'x' has no channels")
    if h * w == 0:
        raise ValueError(f"fastops.{op}: argument 'x' has an empty plane (shape {list(x.shape)}); the mean over H, W is undefined")
    _check_se_fcs(op, x, c, w1, b1, w2, b2)
    check_act(op, act)
    if gate not in ACTIVATIONS:
        raise ValueError(f"fastops.{op}: argument 'gate' must be one of {', '.join(ACTIVATIONS)}; got {gate!r}")


def check_pwconv(op, x, weight, scale, shift, groups, act, residual, shuffle_groups) -> list:
    """The checks of csrc/pwconv.h, in Python (same errors); returns the output shape."""
    check_nchw(op, "x", x)
    check_same_kind(op, "weight", weight, "x", x)
    n, c, h, w = x.shape
    _check_int(op, "groups", groups, 1)
    if c == 0 or c % groups != 0:
        raise ValueError(f"fastops.{op}: argument 'groups' ({groups}) does not divide the {c} channels of 'x'")
    if weight.dim() != 4 or list(weight.shape[1:]) != [c // groups, 1, 1] or weight.shape[0] == 0:
        raise ValueError(
            f"fastops.{op}: argument 'weight' must have shape [OC, {c // groups}, 1, 1] (a 1x1 conv over {c} channels in "
            f"{groups} groups), got {list(weight.shape)}"
        )
    oc = weight.shape[0]
    if oc % groups != 0:
        raise ValueError(f"fastops.{op}: argument 'groups' ({groups}) does not divide the {oc} output channels of 'weight'")
    _check_param_vector(op, "scale", scale, x, oc)
    _check_param_vector(op, "shift", shift, x, oc)
    if residual is not None:
        check_same_kind(op, "residual", residual, "x", x)
        if list(residual.shape) != [n, oc, h, w]:
            raise ValueError(f"fastops.{op}: argument 'residual' must have shape {[n, oc, h, w]} (the output's), got {list(residual.shape)}")
    _check_int(op, "shuffle_groups", shuffle_groups, 1)
    if oc % shuffle_groups != 0:
        raise ValueError(f"fastops.{op}: argument 'shuffle_groups' ({shuffle_groups}) does not divide the {oc} output channels")
    check_act(op, act)
    return [n, oc, h, w]


def check_separable(op, x, dw_weight, pw_weight, scale, shift, stride, padding, dilation, act) -> list:
    """The checks of csrc/separable.h, in Python (same errors); returns the output shape."""
    n, mid, oh, ow = check_dwconv(op, x, dw_weight, None, None, stride, padding, dilation, act, weight_arg="dw_weight")
    check_same_kind(op, "pw_weight", pw_weight, "x", x)
    if pw_weight.dim() != 4 or list(pw_weight.shape[1:]) != [mid, 1, 1] or pw_weight.shape[0] == 0:
        raise ValueError(
            f"fastops.{op}: argument 'pw_weight' must have shape [OC, {mid}, 1, 1] (a 1x1 conv over the depthwise conv's "
            f"{mid} channels), got {list(pw_weight.shape)}"
        )
    oc = pw_weight.shape[0]
    _check_param_vector(op, "scale", scale, x, oc)
    _check_param_vector(op, "shift", shift, x, oc)
    return [n, oc, oh, ow]


def _check_weight(op, arg, w, x, shape, what) -> None:
    """w has the given shape (None entries: any size > 0), x's dtype and device."""
    check_tensor(op, arg, w)
    if w.dim() != len(shape) or any(e is not None and e != a for e, a in zip(shape, w.shape)) or 0 in w.shape:
        want = ", ".join("*" if e is None else str(e) for e in shape)
        raise ValueError(f"fastops.{op}: argument '{arg}' must have shape [{want}] ({what}), got {list(w.shape)}")
    check_same_kind(op, arg, w, "x", x)


def check_inverted_residual(op, x, w1, s1, b1, w2, s2, b2, w3, s3, b3, stride, act, residual, se_w1=None,
                            se_b1=None, se_w2=None, se_b2=None) -> list:
    """The checks of csrc/cpu/inverted_residual.cpp, in Python; returns the output shape."""
    check_nchw(op, "x", x)
    n, c, h, w = x.shape
    if (w1 is None) != (s1 is None) or (w1 is None) != (b1 is None):
        raise ValueError(f"fastops.{op}: arguments 'w1', 's1' and 'b1' go together (all three, or none for a block "
                         "without expansion)")
    if w1 is not None:
        _check_weight(op, "w1", w1, x, [None, c, 1, 1], "the expanding 1x1 conv")
    e = c if w1 is None else w1.shape[0]
    _check_weight(op, "w2", w2, x, [e, 1, None, None], "the depthwise conv")
    k = w2.shape[2]
    if w2.shape[3] != k or k % 2 == 0:
        raise ValueError(f"fastops.{op}: argument 'w2' must be a square kernel of odd size, got {list(w2.shape)}")
    _check_weight(op, "w3", w3, x, [None, e, 1, 1], "the projecting 1x1 conv")
    o = w3.shape[0]
    for arg, t, size in (("s1", s1, e), ("b1", b1, e), ("s2", s2, e), ("b2", b2, e), ("s3", s3, o), ("b3", b3, o)):
        if t is None and arg in ("s1", "b1"):
            continue
        check_tensor(op, arg, t)
        _check_param_vector(op, arg, t, x, size)
    if se_w1 is not None or se_b1 is not None or se_w2 is not None or se_b2 is not None:
        if se_w1 is None or se_b1 is None or se_w2 is None or se_b2 is None:
            raise ValueError(f"fastops.{op}: arguments 'se_w1', 'se_b1', 'se_w2' and 'se_b2' go together")
        _check_se_fcs(op, x, e, se_w1, se_b1, se_w2, se_b2, prefix="se_")
    _check_int(op, "stride", stride, 1)
    check_act(op, act)
    if residual and (stride != 1 or o != c):
        raise ValueError(f"fastops.{op}: residual=True needs stride 1 and as many output channels as input channels, "
                         f"got stride {stride}, {c} -> {o} channels")
    p = k // 2
    if h + 2 * p < k or w + 2 * p < k:
        raise ValueError(f"fastops.{op}: the kernel ({k}x{k}) is larger than the padded input ({h + 2 * p}x{w + 2 * p})")
    return [n, o, (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1]


def check_shuffle_v2_block(op, x, w1, s1, b1, w2, s2, b2, w3, s3, b3, act, stride=1, w4=None, s4=None, b4=None,
                           w5=None, s5=None, b5=None) -> list:
    """The checks of csrc/cpu/shuffle_v2_block.cpp, in Python; returns the output shape."""
    check_nchw(op, "x", x)
    _check_int(op, "stride", stride, 1)
    n, c, h, w = x.shape
    if h < 1 or w < 1:
        raise ValueError(f"fastops.{op}: argument 'x' must have at least one row and column (the depthwise kernels "
                         f"are larger than an empty map however padded), got {h}x{w}")
    branch1 = (w4, s4, b4, w5, s5, b5)
    # (branches rather than comparing `t is None` with `stride == 1`: under torch.compile the
    # latter may be symbolic, which a comparison with a plain bool does not take)
    if stride == 1:
        mismatched = any(t is not None for t in branch1)
    else:
        mismatched = any(t is None for t in branch1)
    if mismatched:
        raise ValueError(f"fastops.{op}: arguments 'w4', 's4', 'b4', 'w5', 's5' and 'b5' (branch1) are given "
                         f"together, exactly when stride > 1, got stride {stride}")
    if stride == 1 and c % 2 != 0:
        raise ValueError(f"fastops.{op}: argument 'x' must have an even number of channels (split in two halves), "
                         f"got {c}")
    ci = c if stride > 1 else c // 2
    _check_weight(op, "w1", w1, x, [None, ci, 1, 1], "branch2's first 1x1 conv")
    e = w1.shape[0]

    def check_dw(arg, wt, channels):
        _check_weight(op, arg, wt, x, [channels, 1, None, None], "a depthwise conv")
        if wt.shape[3] != wt.shape[2] or wt.shape[2] % 2 == 0:
            raise ValueError(f"fastops.{op}: argument '{arg}' must be a square kernel of odd size, got {list(wt.shape)}")

    check_dw("w2", w2, e)
    half = w3.shape[0] if stride > 1 and w3.dim() == 4 else c // 2
    _check_weight(op, "w3", w3, x, [half, e, 1, 1], "branch2's last 1x1 conv")
    vectors = [("s1", s1, e), ("b1", b1, e), ("s2", s2, e), ("b2", b2, e), ("s3", s3, half), ("b3", b3, half)]
    if stride > 1:
        check_dw("w4", w4, c)
        _check_weight(op, "w5", w5, x, [half, c, 1, 1], "branch1's 1x1 conv")
        vectors += [("s4", s4, c), ("b4", b4, c), ("s5", s5, half), ("b5", b5, half)]
    for arg, t, size in vectors:
        check_tensor(op, arg, t)
        _check_param_vector(op, arg, t, x, size)
    check_act(op, act)
    # odd kernels, padding k // 2: both branches' maps are (size - 1) // stride + 1
    return [n, 2 * half, (h - 1) // stride + 1, (w - 1) // stride + 1]


def check_stem_conv(op, x, weight, scale, shift, stride, padding, act, pool_kernel, pool_stride, pool_padding) -> list:
    """The checks of csrc/cpu/stem_conv.cpp, in Python (stride ... pool_padding: pairs of ints);
    returns the output shape."""
    check_nchw(op, "x", x)
    n, c, h, w = x.shape
    _check_weight(op, "weight", weight, x, [None, c, None, None], "a dense conv")
    oc, _, kh, kw = weight.shape
    for arg, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            _check_param_vector(op, arg, t, x, oc)
    for arg, v, least in (("stride", stride, 1), ("padding", padding, 0), ("pool_kernel", pool_kernel, 1),
                          ("pool_stride", pool_stride, 1), ("pool_padding", pool_padding, 0)):
        if min(v) < least:
            raise ValueError(f"fastops.{op}: argument '{arg}' must be 2 ints >= {least}, got {list(v)}")
    check_act(op, act)
    if h + 2 * padding[0] < kh or w + 2 * padding[1] < kw:
        raise ValueError(f"fastops.{op}: the kernel ({kh}x{kw}) is larger than the padded input "
                         f"({h + 2 * padding[0]}x{w + 2 * padding[1]})")
    oh, ow = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    if list(pool_kernel) == [1, 1] and list(pool_stride) == [1, 1]:
        return [n, oc, oh, ow]
    if 2 * pool_padding[0] > pool_kernel[0] or 2 * pool_padding[1] > pool_kernel[1]:
        raise ValueError(f"fastops.{op}: argument 'pool_padding' must be at most half of 'pool_kernel', got "
                         f"{list(pool_padding)} and {list(pool_kernel)}")
    if oh + 2 * pool_padding[0] < pool_kernel[0] or ow + 2 * pool_padding[1] < pool_kernel[1]:
        raise ValueError(f"fastops.{op}: the pool window ({pool_kernel[0]}x{pool_kernel[1]}) is larger than the "
                         f"padded conv output ({oh + 2 * pool_padding[0]}x{ow + 2 * pool_padding[1]})")
    return [n, oc, (oh + 2 * pool_padding[0] - pool_kernel[0]) // pool_stride[0] + 1,
            (ow + 2 * pool_padding[1] - pool_kernel[1]) // pool_stride[1] + 1]
