"""Convolution blocks: `conv_bn_act` (the one function that turns conv [+ BatchNorm] [+ residual]
[+ activation] [+ channel shuffle] into fused kernels), `ConvBNAct` (torchvision's
Conv2dNormActivation, fused) and `DepthwiseSeparable` (the MobileNet V1 block).

Parameter names, buffers and train/eval behaviour are those of the unfused modules, so state
dicts load both ways and training matches:
  * eval mode: the BatchNorm folds into the kernel (from the module's current parameters and
    running statistics; kept between inference calls while they are unchanged, folded afresh
    under autograd so gradients reach BN's weight and bias). CPU channels_last float32/bfloat16
    inference without autograd: one oneDNN convolution with the activation (or residual + ReLU)
    as post-ops and the weights reordered once; otherwise depthwise convs run `dwconv_bn_act`,
    1x1 convs `pwconv_bn_act`, other convs one convolution with the BN folded into its weights;
  * training mode (batch statistics), any conv: the conv, then `bn_act_train` (BatchNorm with
    batch statistics + activation in two fused passes, forward and backward), and the running
    statistics updated exactly as nn.BatchNorm2d does (momentum, `momentum=None`,
    `num_batches_tracked`). CPU channels_last float32 depthwise convs run as `dwconv_bn_act`
    without affine or activation, for its one-sweep backward kernel, and so do NCHW 5x5 ones;
    float32 1x1 convs (NCHW: on maps of 14x14 or more) run as `pwconv_bn_act` (`_train_conv`).
Cases the kernels do not cover (string or non-zero padding modes, unsupported activations,
conv or BatchNorm subclasses) run the plain modules, with the same answer.
"""

import functools
import weakref
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import ops, reference
from .activation import Hardsigmoid, Hardswish

# activation module class -> the fused ops' name for it
_ACT_NAMES = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
}
_ACT_CLASSES = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": Hardswish,
    "hardsigmoid": Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}


def act_name(module: Optional[nn.Module]) -> Optional[str]:
    """The fused ops' name for an activation module ("none" for None), or None if unsupported."""
    if module is None or isinstance(module, nn.Identity):
        return "none"
    if isinstance(module, nn.ReLU6) and (module.min_val, module.max_val) != (0.0, 6.0):
        return None  # bounds changed on the instance: not the fused op's ReLU6
    for cls, name in _ACT_NAMES.items():
        if type(module) is cls or (isinstance(module, cls) and type(module).__module__.startswith("fastops")):
            return name
    return None


def create_act(act: Union[str, Callable[..., nn.Module], None], inplace: Optional[bool] = None) -> Optional[nn.Module]:
    """An activation module from a name ("relu6", ...), a module class, or None."""
    if act is None or act == "none":
        return None
    if isinstance(act, str):
        if act not in _ACT_CLASSES:
            raise ValueError(f"fastops.nn: unknown activation {act!r}; choose one of none, {', '.join(_ACT_CLASSES)}")
        act = _ACT_CLASSES[act]
    if act is nn.Hardswish:  # the fastops twin, a drop-in subclass
        act = Hardswish
    elif act is nn.Hardsigmoid:
        act = Hardsigmoid
    params = {} if inplace is None or act in (nn.Sigmoid,) else {"inplace": inplace}
    return act(**params)


def fold_bn(bn: nn.BatchNorm2d, conv_bias: Optional[torch.Tensor] = None):
    """(scale, shift) with bn(conv + bias) == conv * scale + shift, from bn's running stats."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = inv_std if bn.weight is None else bn.weight * inv_std
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv_bias is not None:
        shift = shift + conv_bias * scale
    return scale, shift


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, z: torch.Tensor) -> None:
    """What nn.BatchNorm2d does to its buffers in a training step, from the batch's mean and
    biased var: num_batches_tracked += 1, then running = (1 - f) * running + f * batch with
    f = momentum (or 1 / num_batches_tracked when momentum is None), the variance unbiased."""
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return
    with torch.no_grad():
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        m = z.numel() // z.shape[1]
        if bn.momentum is None:  # cumulative average (a tensor expression: no graph break)
            factor = 1.0 / bn.num_batches_tracked.to(mean.dtype)
            bn.running_mean.copy_(bn.running_mean * (1 - factor) + mean * factor)
            bn.running_var.copy_(bn.running_var * (1 - factor) + var * (m / (m - 1)) * factor)
        else:  # two in-place ops a buffer (a training step makes this update for every BN)
            f = bn.momentum
            bn.running_mean.mul_(1 - f).add_(mean, alpha=f)
            bn.running_var.mul_(1 - f).add_(var, alpha=f * m / (m - 1))


def _act_(y: torch.Tensor, name: str) -> torch.Tensor:
    """The activation `name` applied to y in place when autograd does not need y, else out of place."""
    if name == "none":
        return y
    if torch.is_grad_enabled() and y.requires_grad:
        return reference.activation(y, name)
    if name == "relu":
        return y.relu_()
    if name == "relu6":
        return y.clamp_(0, 6)
    if name == "hardswish":
        return ops.hardswish(y, inplace=True)
    if name == "hardsigmoid":
        return ops.hardsigmoid(y, inplace=True)
    if name == "sigmoid":
        return y.sigmoid_()
    return F.silu(y, inplace=True)


def _fusable(conv: nn.Module, bn: Optional[nn.Module]) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and (bn is None or type(bn) is nn.BatchNorm2d)
    )


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels and conv.out_channels % conv.in_channels == 0


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


# What _cached keeps, per module: {slot: (key, value)}. Outside the modules (weakly keyed), so a
# kept value never travels with the module: pickling, torch.save and deepcopy see none of it (a
# reordered oneDNN weight is an opaque tensor that cannot be pickled), and a copy starts empty.
_KEPT: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cached(owner: nn.Module, slot: str, tensors, extra, make):
    """make(), kept for `owner` between calls while the tensors it reads are unchanged (version
    counter, storage address, dtype; a move to another device changes the address) and `extra`
    is equal. Made afresh when autograd needs it
    (grad mode on and one of the tensors requires grad: gradients must flow through it) and under
    torch.compile (nothing stale is traced)."""
    if torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    ):
        return make()
    key = (torch.is_inference_mode_enabled(), extra) + tuple(
        None if t is None else (t._version, t.data_ptr(), t.dtype) for t in tensors
    )
    kept = _KEPT.setdefault(owner, {})
    cached = kept.get(slot)
    if cached is not None and cached[0] == key:
        return cached[1]
    value = make()
    kept[slot] = (key, value)
    return value


def folded_scale_shift(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]):
    """(scale, shift) with bn(conv(x)) == conv_nobias(x) * scale + shift (running statistics);
    (None, conv.bias) without bn. Kept on the conv between inference calls while unchanged."""
    if bn is None:
        return None, conv.bias
    return _cached(conv, "_fastops_fold", (bn.running_mean, bn.running_var, bn.weight, bn.bias, conv.bias), bn.eps,
                   lambda: fold_bn(bn, conv.bias))


def folded_conv(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]):
    """(weight, bias) of one convolution equal to bn(conv(x)) (running statistics), kept on the conv
    between inference calls while unchanged: what torch.compile's freezing does, done once."""
    if bn is None:
        return conv.weight, conv.bias

    def make():
        scale, shift = fold_bn(bn, conv.bias)
        return conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype), shift

    tensors = (conv.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, conv.bias)
    return _cached(conv, "_fastops_fold_conv", tensors, bn.eps, make)


# activation name -> oneDNN post-op (attr, scalars) of mkldnn::_convolution_pointwise
_ONEDNN_ACTS = {
    "none": ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0]), "hardswish": ("hardswish", []),
    "hardsigmoid": ("hardsigmoid", []), "sigmoid": ("sigmoid", []), "silu": ("swish", []),
}
# Which convs take the oneDNN path in inference (see conv_bn_act); the others run fastops' kernels.
# Measured in whole networks (torchvision MobileNet V2 / V3-Large / ShuffleNet V2 1.0, N=8,
# channels_last, 2 cores, interleaved): oneDNN's depthwise conv with the BN folded and the
# activation as a post-op ran the networks 8-15% faster than fastops' dwconv_bn_act, whose
# activations there come from the cache (L3) rather than from memory; 2-5% faster after the
# NHWC kernel's spills were fixed (MobileNet V2 67.1 vs 70.2 ms, V3-Large 34.8 vs 35.6,
# ShuffleNet V2 39.2 vs 40.7). dwconv_bn_act keeps NCHW, float64/float16, autograd and the CUDA
# tensors.
ONEDNN_CONVS = {"dense", "pointwise", "depthwise"}


_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


# While a FusedSequential records what its children run (fastops/nn/sequential.py), the list the
# inference paths below append their kernel calls to, each as (fn, args, x, y): y = fn(x, *args)
# with args constants (weights, folded BN, geometry); None otherwise.
_RECORDER: Optional[list] = None


def _record(fn, args: tuple, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if _RECORDER is not None:
        _RECORDER.append((fn, args, x, y))
    return y


def inference_call(op, *args):
    """op(*args) (a fastops op overload, CPU tensors) for the inference paths of the modules, which
    run only without autograd: straight to the op's CPU kernel, past the Python layer that
    torch.library's autograd registration puts in front of every call (~12 us of a ~20 us call
    on small maps). The plain call instead while the profiler records (so the op shows in its
    trace) or a Python dispatch or function mode is active (so the mode sees the op)."""
    if (torch._C._autograd._profiler_enabled() or _get_current_dispatch_mode() is not None
            or torch._C._is_torch_function_mode_enabled()):
        return op(*args)
    return op.redispatch(_CPU_KEYS, *args)


def recorded_call(op, x: torch.Tensor, *args) -> torch.Tensor:
    """inference_call(op, x, *args), appended to the recording while a FusedSequential records
    (as a call straight to the op's CPU kernel)."""
    y = inference_call(op, x, *args)
    if _RECORDER is not None:
        _RECORDER.append((functools.partial(op.redispatch, _CPU_KEYS), args, x, y))
    return y


# Depthwise convs that, in inference, run fastops' kernel even where oneDNN could take them:
# channels_last float32 on the CPU, multiplier 1, unit dilation, at least 16 channels, 3x3 or 5x5
# with stride 1 or 2 (the shapes of dwconv_bn_act's tiled kernel, csrc/cpu/dwconv.cpp). Measured
# as the op against ConvBNAct with this switch off (oneDNN's depthwise conv with the BN folded and
# the activation as a post-op), interleaved, 2 cores, inputs streamed from memory: N=8 0.98-1.51x
# over 12 MobileNet V2/V3 layers (C96 112x112 s2 1.20x, C672 14x14 5x5 1.38x, C960 7x7 5x5
# 0.98x), N=1 0.91-1.73x (5x5 stride 1 on 14x14 maps of 480-672 channels 0.91-0.98x). Whole
# networks (N=8 and N=1, MobileNet V2 / V3-Large / ShuffleNet V2) moved within noise (+-5%).
# False: oneDNN takes them all (when "depthwise" is in ONEDNN_CONVS).
DWCONV_KERNEL = True


def _tiled_depthwise_cl(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """x (4-D, on the CPU) and a depthwise conv in the shapes of dwconv_bn_act's channels_last
    tiled kernels (csrc/cpu/dwconv.cpp, forward and the backward sweep): channels_last float32,
    3x3 or 5x5, stride 1 or 2, unit dilation, no multiplier, at least 16 channels."""
    return (x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
            and conv.kernel_size in ((3, 3), (5, 5)) and conv.stride in ((1, 1), (2, 2))
            and conv.dilation == (1, 1) and conv.in_channels == conv.out_channels and conv.in_channels >= 16)


def _nchw_depthwise_tiled(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """x (4-D, on the CPU) NCHW float32 and a depthwise conv in the tiled kernels' shapes (3x3 or
    5x5, stride 1 or 2, unit dilation, no multiplier, at least 16 channels): dwconv_bn_act's
    forward and backward run those by blocks of 16 planes transposed into channels_last scratch
    images, where ATen's backward gathers NCHW planes. Forward + backward, N=8, one thread, ms,
    ATen / fastops: 3x3 C32 112x112 33.2 / 11.6, C96 112x112 s2 106 / 37.9, C144 56x56 38.9 /
    11.3, C144 56x56 s2 23.5 / 7.9, C192 28x28 7.95 / 4.25, C384 14x14 4.23 / 2.49, C576 14x14
    6.32 / 4.03, C960 7x7 2.95 / 1.48; 5x5 C72 56x56 s2 24.4 / 5.0, C120 28x28 27.8 / 4.5, C672
    14x14 s2 11.9 / 4.4, C960 7x7 12.1 / 2.9."""
    return (x.dtype == torch.float32 and x.is_contiguous() and conv.kernel_size in ((3, 3), (5, 5))
            and conv.stride in ((1, 1), (2, 2)) and conv.dilation == (1, 1)
            and conv.in_channels == conv.out_channels and conv.in_channels >= 16)


def _pointwise_train_kernel(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """x (4-D, on the CPU) float32, channels_last or NCHW on maps of at least 14x14, and an
    ungrouped 1x1 conv (stride 1, no padding): there pwconv_bn_act's forward (oneDNN's 1x1 conv in
    channels_last, sgemm by tiles in NCHW) + backward (`pwconv_backward`: GEMMs, by tiles of
    pixels on maps of 28x28 or more) beat ATen's conv forward + backward, which in NCHW reorders to
    oneDNN's blocked layout and back. N=8, ATen / fastops, ms: NCHW 128 -> 128 at 56x56 16.6 /
    12.0, 32 -> 64 at 112x112 18.1 / 9.3, 144 -> 24 at 56x56 8.5 / 5.1, 256 -> 256 at 28x28
    14.7 / 10.8, 384 -> 64 at 14x14 1.90 / 1.40, 512 -> 512 at 14x14 10.7 / 10.2 (1.05-1.95x on
    the 16 such MobileNet V1 / V2 layers; on 7x7 maps 0.79-1.03x, so those keep ATen's);
    channels_last 128 -> 128 11.5 / 10.3, 144 -> 24 5.1 / 4.0, 1024 -> 1024 at 7x7 14.2 / 10.4,
    64 -> 384 at 14x14 1.29 / 1.31 (0.98-1.37x on 20 layers)."""
    if x.dtype != torch.float32 or not _is_pointwise(conv) or conv.groups != 1:
        return False
    if x.is_contiguous():
        return x.shape[2] * x.shape[3] >= 14 * 14
    return x.is_contiguous(memory_format=torch.channels_last)


def _train_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(x) ahead of a training-mode BatchNorm. A CPU channels_last float32 depthwise conv
    that dwconv_bn_act's channels_last backward kernel takes (`_tiled_depthwise_cl`) runs as the
    plain `dwconv_bn_act(x, w)`: its forward as fast as ATen's, its backward the one-sweep
    kernel (MobileNet V2's depthwise layers, N=8: ATen's gradient call took 1.6-2.6x the time its
    memory traffic needs); so does an NCHW one of those shapes (`_nchw_depthwise_tiled`). A 1x1
    conv runs as the plain `pwconv_bn_act(x, w)` where that is faster (`_pointwise_train_kernel`).
    Not while compiling: the compiler keeps its own convolution."""
    if x.device.type != "cpu" or x.dim() != 4 or torch.compiler.is_compiling():
        return conv(x)
    if _is_depthwise(conv) and ((not x.is_contiguous() and _tiled_depthwise_cl(x, conv))
                                or _nchw_depthwise_tiled(x, conv)):
        return ops.dwconv_bn_act(x, conv.weight, None, conv.bias, conv.stride, conv.padding, conv.dilation, "none")
    if _pointwise_train_kernel(x, conv):
        return ops.pwconv_bn_act(x, conv.weight, None, conv.bias)
    return conv(x)


def _dwconv_kernel_usable(x: torch.Tensor, conv: nn.Conv2d, residual, shuffle_groups: int):
    """The memory format in which `_dwconv_kernel` runs this depthwise conv without autograd, or
    None: channels_last by the rules of DWCONV_KERNEL above; NCHW (contiguous, float32 or
    bfloat16, any depthwise geometry), which no oneDNN call takes, whatever DWCONV_KERNEL says:
    there the kept plan only saves the checks and the autograd layer (~80 us a call)."""
    if not (residual is None and shuffle_groups == 1 and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16) and _is_depthwise(conv)
            and not torch.compiler.is_compiling() and not torch.is_grad_enabled()):
        return None
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if DWCONV_KERNEL and _tiled_depthwise_cl(x, conv) else None


# the kind a `_dwconv_kernel` plan is kept under, by the memory format it takes, and back
_DW_PLANS = {torch.channels_last: "dwconv_kernel", torch.contiguous_format: "dwconv_kernel_nchw"}
_DW_FORMATS = {kind: fmt for fmt, kind in _DW_PLANS.items()}


def _dwconv_kernel(x, conv, bn, name, act, fmt):
    """act(bn(conv(x))) by dwconv_bn_act's CPU kernel, the BN folded once (kept on the conv while
    unchanged); kept as the conv's inference plan (`_kept_inference`) like a oneDNN call, for
    inputs of memory format `fmt`."""
    scale, shift = folded_scale_shift(conv, bn)
    weight, geometry = conv.weight, (list(conv.stride), list(conv.padding), list(conv.dilation))
    op = torch.ops.fastops.dwconv_bn_act.default

    def run(x, residual):
        return inference_call(op, x, weight, scale, shift, *geometry, name)

    _KEPT.setdefault(conv, {})["_fastops_inference"] = (
        bn, act, False, x.dtype, _DW_PLANS[fmt], _inference_state(conv, bn, act), DWCONV_KERNEL, run)
    return _record(run, (None,), x, run(x, None))


def _channels_last_view(x: torch.Tensor) -> bool:
    """x (4-D) is channels_last contiguous, or a view into such a tensor that keeps its order:
    channels innermost, then width, height, batch, with gaps allowed (ShuffleNet V2's channel
    split `x.chunk(2, 1)` gives one). oneDNN's path takes it after one channels_last copy, where
    the other paths would copy it as well."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    n, c, h, w = x.shape
    sn, sc, sh, sw = x.stride()
    return sc == 1 and sw >= c and sh >= sw * w and sn >= sh * h


def _onednn_usable(x: torch.Tensor, conv: nn.Conv2d, bn, name: str, residual, shuffle_groups: int, kind: str) -> bool:
    if (
        kind not in ONEDNN_CONVS or shuffle_groups != 1 or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.bfloat16) or x.dim() != 4 or not _channels_last_view(x)
        or torch.compiler.is_compiling() or not torch.backends.mkldnn.is_available()
    ):
        return False
    params = (conv.weight, conv.bias) + (() if bn is None else (bn.weight, bn.bias))
    if torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in params)):
        return False  # the fused oneDNN op has no autograd formula
    if residual is not None:  # oneDNN fuses "conv + residual" followed by nothing or ReLU only
        if name == "relu" and x.dtype == torch.bfloat16 and conv.groups != 1:
            return False  # torch's grouped bf16 fallback there hits an internal assert (add_relu: no bf16)
        return name in ("none", "relu") and residual.shape[1:] == (conv.out_channels,) + residual.shape[2:] \
            and residual.dtype == x.dtype and residual.is_contiguous(memory_format=torch.channels_last)
    return True


def _inference_state(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], act) -> tuple:
    """What a kept inference plan for `conv` (+ `bn`, + `act`) was made from: each parameter's and
    buffer's version, storage and dtype, the conv's geometry, the BN's eps and mode, the
    activation module's settings (a ReLU6's bounds: `settings`). (Read from the modules' dicts:
    nn.Module.__getattr__ would cost more than the rest together.)"""
    cp = conv._parameters
    tensors = [cp["weight"], cp.get("bias")]
    if bn is not None:
        bp, bb = bn._parameters, bn._buffers
        tensors += [bb.get("running_mean"), bb.get("running_var"), bp.get("weight"), bp.get("bias")]
    return (torch.is_inference_mode_enabled(), conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode,
            None if bn is None else (bn.eps, bn.training),
            None if act is None or isinstance(act, str) else tuple(act.__dict__.get(n) for n in settings(act)),
            [None if t is None else (t._version, t.data_ptr(), t.dtype) for t in tensors])


_PLAIN = (int, float, bool, str, tuple, type(None))
_SETTINGS: dict = {}


def settings(m: nn.Module) -> tuple:
    """The names of the settings of m's class that kept plans and replays watch: the public
    attributes an instance holds as plain values (a conv's stride, padding, dilation, groups; a
    BatchNorm's eps; a ReLU6's bounds ...), read from the first instance of the class seen."""
    cls = m.__class__
    names = _SETTINGS.get(cls)
    if names is None:
        names = _SETTINGS[cls] = tuple(k for k, v in m.__dict__.items() if not k.startswith("_")
                                       and k != "training" and isinstance(v, _PLAIN))
    return names


def _structure(module: nn.Module) -> tuple:
    """module's children and grandchildren (the modules a block's kernel call is planned from:
    a block's steps and the conv, BN and activation inside each), each one's training flag and
    settings (`settings`)."""
    kids = tuple(module._modules.values())
    mods = kids + tuple(g for k in kids if k is not None for g in k._modules.values())
    return mods + tuple(m is not None and m.training for m in mods) + tuple(
        m.__dict__.get(n) for m in mods if m is not None for n in settings(m))


def module_tensors(*modules: nn.Module) -> list:
    """The parameters and buffers the modules hold themselves (not their children's)."""
    return [t for m in modules for d in (m._parameters, m._buffers) for t in d.values() if t is not None]


def _tensor_state(tensors) -> list:
    return [(t._version, t.data_ptr()) for t in tensors]


def kept_block_call(block: nn.Module, x: torch.Tensor, key, make):
    """op(x, *args): a block's whole-block kernel call in inference (the caller has checked x and
    the switches), its arguments kept between calls. `make()` decides from the block's modules
    and returns (op, args, tensors) with `tensors` every parameter and buffer the arguments were
    made from (weights, and the BN statistics folded into scale / shift), or None when the kernel
    does not cover the block (then this returns None). The kept call is made again without
    deciding afresh while nothing make() read has changed: the block's children and
    grandchildren (the same modules, each in the same train / eval mode), `key` (what else the
    decision read, e.g. the input's channel count), inference mode and every tensor's version
    and storage. Saves 50-200 us of Python a call: ~60 us on warm caches, more between the
    large kernels of a network, whose data evicts the interpreter's."""
    structure = _structure(block)
    inference = torch.is_inference_mode_enabled()
    kept = _KEPT.get(block)
    plan = None if kept is None else kept.get("_fastops_block_call")
    if plan is not None:
        structure0, key0, inference0, op, args, tensors, state = plan
        if structure0 == structure and key0 == key and inference0 == inference and _tensor_state(tensors) == state:
            return recorded_call(op, x, *args)
    made = make()
    if made is None:
        return None
    op, args, tensors = made
    _KEPT.setdefault(block, {})["_fastops_block_call"] = (
        structure, key, inference, op, args, tensors, _tensor_state(tensors))
    return recorded_call(op, x, *args)


def _kept_inference(x, conv, bn, act, residual):
    """The oneDNN call (or fastops depthwise kernel call, `_dwconv_kernel`) `conv_bn_act` decided
    on the last time it ran this conv without autograd, made again without deciding afresh, when
    nothing the decision read has changed: the same BN and activation modules, a residual or not,
    the input's device, dtype, rank and layout, the parameters and buffers (`_inference_state`),
    ONEDNN_CONVS and DWCONV_KERNEL. None otherwise (the caller then
    takes the full path). Saves ~40 us of Python per call, which whole networks feel."""
    if torch.compiler.is_compiling():  # first: Dynamo would trace (and guard on) the weak dict's entries
        return None
    kept = _KEPT.get(conv)
    plan = None if kept is None else kept.get("_fastops_inference")
    if plan is None:
        return None
    bn0, act0, has_residual, dtype, kind, state, dw_kernel, run = plan
    if (bn0 is not bn or act0 is not act or (residual is not None) != has_residual or x.dtype != dtype
            or kind not in ONEDNN_CONVS and kind not in _DW_FORMATS or dw_kernel != DWCONV_KERNEL
            or x.device.type != "cpu" or x.dim() != 4
            or not (x.is_contiguous(memory_format=_DW_FORMATS[kind]) if kind in _DW_FORMATS
                    else _channels_last_view(x))
            or _inference_state(conv, bn, act) != state):
        return None
    if residual is not None and not (residual.dtype == dtype and residual.shape[1:2] == (conv.out_channels,)
                                     and residual.is_contiguous(memory_format=torch.channels_last)):
        return None
    return run(x, residual) if residual is not None else _record(run, (None,), x, run(x, None))


def _onednn_conv(x, conv, bn, name, residual, act=None, kind=None):
    """bn(conv(x)) [+ residual], activation: one oneDNN convolution with the BN folded into its
    weights, the weights reordered once into oneDNN's blocked layout (kept on the conv while
    unchanged) and the residual add and activation as post-ops. Without autograd the call is
    also kept as the conv's inference plan (`_kept_inference`); `act` is the activation module
    and `kind` the conv's ONEDNN_CONVS kind it is kept under."""
    def make():
        weight, bias = folded_conv(conv, bn)
        weight = weight.detach().to(x.dtype)
        bias = None if bias is None else bias.detach().to(x.dtype)
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(x.shape))
        return packed, bias

    tensors = (conv.weight, conv.bias) + (() if bn is None else (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    packed, bias = _cached(conv, "_fastops_onednn", tensors, (None if bn is None else bn.eps, x.dtype), make)
    geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if residual is not None:
        unary = None if name == "none" else name

        def run(x, residual):
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x.contiguous(memory_format=torch.channels_last), residual, packed, bias, *geometry, "add", 1.0,
                unary, [], None)
    else:
        attr, scalars = _ONEDNN_ACTS[name]

        def run(x, residual):
            return torch.ops.mkldnn._convolution_pointwise(
                x.contiguous(memory_format=torch.channels_last), packed, bias, *geometry, attr, scalars, None)
    if kind is not None and not torch.is_grad_enabled():
        _KEPT.setdefault(conv, {})["_fastops_inference"] = (
            bn, act, residual is not None, x.dtype, kind, _inference_state(conv, bn, act), DWCONV_KERNEL, run)
    return run(x, residual) if residual is not None else _record(run, (None,), x, run(x, None))


def conv_bn_act(x: torch.Tensor, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None, act=None,
                residual: Optional[torch.Tensor] = None, shuffle_groups: int = 1) -> torch.Tensor:
    """`shuffle(act(bn(conv(x)) + residual))` with fused kernels: the one place the blocks and
    networks of fastops.nn turn a conv (+ BatchNorm) (+ residual add) (+ activation) (+ channel
    shuffle) into kernels. `act` is an activation module, its fused name ("relu6", ...) or None;
    the residual is added before the activation (ResNet's order; the same as after it when act is
    None), the shuffle is ShuffleNet's channel shuffle of the result.

    * bn in training mode (batch statistics): the conv, then `bn_act_train` (statistics; normalise
      + activation), running statistics updated as nn.BatchNorm2d does;
    * otherwise (running statistics, or no bn) the BN folds into the kernel: on CPU, for a
      channels_last float32/bfloat16 input when autograd needs nothing, one oneDNN convolution
      with the activation (or the residual add + ReLU) as post-ops (`_onednn_conv`, the convs
      named in ONEDNN_CONVS); else depthwise convs run `dwconv_bn_act`, 1x1 stride-1 convs
      `pwconv_bn_act` (residual and shuffle included), other convs one convolution with BN
      folded into its weight and bias, then the residual and activation in place;
    * anything else (a conv subclass, string or non-zero padding, a BatchNorm subclass, an
      activation the kernels don't know, non-4-D input) runs the modules as they are."""
    if shuffle_groups == 1 and not torch.is_grad_enabled():
        y = _kept_inference(x, conv, bn, act, residual)
        if y is not None:
            return y
    name = act if isinstance(act, str) or act is None else act_name(act)
    name = "none" if name is None and act is None else name
    if name is None or x.dim() != 4 or not _fusable(conv, bn):
        y = conv(x)
        if bn is not None:
            y = bn(y)
        if residual is not None:
            y = y + residual
        if act is not None:
            y = act(y) if isinstance(act, nn.Module) else reference.activation(y, act)
        return y if shuffle_groups == 1 else ops.channel_shuffle(y, shuffle_groups)

    if bn is not None and (bn.training or bn.running_mean is None):
        z = _train_conv(x, conv)
        y, mean, var = ops.bn_act_train(z, bn.weight, bn.bias, bn.eps, name if residual is None else "none")
        _update_running_stats(bn, mean, var, z)
        if residual is not None:
            y = reference.activation(y + residual, name)
    elif (fmt := _dwconv_kernel_usable(x, conv, residual, shuffle_groups)) is not None:
        return _dwconv_kernel(x, conv, bn, name, act, fmt)
    elif _onednn_usable(x, conv, bn, name, residual, shuffle_groups, kind := (
            "depthwise" if _is_depthwise(conv) else "pointwise" if _is_pointwise(conv) else "dense")):
        return _onednn_conv(x, conv, bn, name, residual, act, kind)
    elif _is_pointwise(conv):
        scale, shift = folded_scale_shift(conv, bn)
        return ops.pwconv_bn_act(x, conv.weight, scale, shift, conv.groups, name, residual, shuffle_groups)
    elif _is_depthwise(conv) and residual is None:
        scale, shift = folded_scale_shift(conv, bn)
        y = ops.dwconv_bn_act(x, conv.weight, scale, shift, conv.stride, conv.padding, conv.dilation, name)
    else:
        weight, bias = folded_conv(conv, bn)
        y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if residual is not None:
            y = y + residual if torch.is_grad_enabled() and (y.requires_grad or residual.requires_grad) \
                else y.add_(residual)
        y = _act_(y, name)
    return y if shuffle_groups == 1 else ops.channel_shuffle(y, shuffle_groups)


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, laid out like torchvision's Conv2dNormActivation
    (children "0", "1", "2"; same arguments and defaults), run by `conv_bn_act`'s fused kernels.
    `forward(x, residual=None, shuffle_groups=1)` also takes a residual (added before the
    activation) and a channel shuffle of the result."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: Optional[int] = None,
        groups: int = 1,
        norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
        activation_layer: Union[str, Callable[..., nn.Module], None] = nn.ReLU,
        dilation: int = 1,
        inplace: Optional[bool] = True,
        bias: Optional[bool] = None,
    ):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        act = create_act(activation_layer, inplace)
        if act is not None:
            layers.append(act)
        super().__init__(*layers)
        self.out_channels = out_channels

    def parts(self):
        """(conv, bn or None, act module or None), or None when the children are not that shape.
        Kept between calls while the children are the same modules."""
        mods = tuple(self._modules.values())
        kept = self.__dict__.get("_fastops_parts")
        if kept is not None and kept[0] == mods:  # element-wise identity (modules compare by identity)
            return kept[1]
        parts = None
        if mods and isinstance(mods[0], nn.Conv2d):
            conv, rest = mods[0], list(mods[1:])
            bn = rest.pop(0) if rest and isinstance(rest[0], nn.BatchNorm2d) else None
            if len(rest) <= 1:
                parts = conv, bn, (rest[0] if rest else None)
        self.__dict__["_fastops_parts"] = (mods, parts)
        return parts

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, shuffle_groups: int = 1) -> torch.Tensor:
        parts = self.parts()
        if parts is None:
            if residual is not None:
                raise ValueError("fastops.nn.ConvBNAct: residual= needs children conv [, bn] [, act]")
            y = super().forward(x)
            return y if shuffle_groups == 1 else ops.channel_shuffle(y, shuffle_groups)
        conv, bn, act = parts
        return conv_bn_act(x, conv, bn, act, residual, shuffle_groups)


class DepthwiseSeparable(nn.Sequential):
    """The MobileNet V1 block: depthwise ConvBNAct (k x k, stride) then pointwise ConvBNAct
    (1x1), both with `act`. Children "0" (depthwise) and "1" (pointwise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, act="relu6"):
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels, activation_layer=act),
            ConvBNAct(in_channels, out_channels, 1, activation_layer=act),
        )
