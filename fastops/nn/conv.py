"""Convolution blocks: `ConvBNAct` (torchvision's Conv2dNormActivation, fused) and
`DepthwiseSeparable` (the MobileNet V1 block).

Parameter names, buffers and train/eval behaviour are those of the unfused modules, so state
dicts load both ways and training matches:
  * eval mode, depthwise conv: the BatchNorm folds into `dwconv_bn_act`'s per-channel scale /
    shift (from the module's current parameters and running statistics: kept between inference
    calls while they are unchanged, folded afresh under autograd so gradients reach BN's weight
    and bias);
  * training mode (batch statistics), any conv: the conv, then `bn_act_train` (BatchNorm with
    batch statistics + activation in two fused passes, forward and backward), and the running
    statistics updated exactly as nn.BatchNorm2d does (momentum, `momentum=None`,
    `num_batches_tracked`).
Cases the kernels do not cover (eval-mode non-depthwise convs, string or non-zero padding modes,
unsupported activations, BatchNorm subclasses) run the plain `Sequential`, with the same answer.
"""

from typing import Callable, Optional, Union

import torch
from torch import nn

from .. import ops
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
        if bn.momentum is None:  # cumulative average (a tensor expression: no graph break)
            factor = 1.0 / bn.num_batches_tracked.to(mean.dtype)
        else:
            factor = bn.momentum
        m = z.numel() // z.shape[1]
        unbiased = var * (m / (m - 1))
        bn.running_mean.copy_(bn.running_mean * (1 - factor) + mean * factor)
        bn.running_var.copy_(bn.running_var * (1 - factor) + unbiased * factor)


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, laid out like torchvision's Conv2dNormActivation
    (children "0", "1", "2"; same arguments and defaults). Depthwise convolutions run the fused
    `dwconv_bn_act` kernel."""

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

    # ---- the fused path

    def _parts(self):
        conv = self[0]
        bn = self[1] if len(self) > 1 and isinstance(self[1], nn.BatchNorm2d) else None
        rest = list(self)[2 if bn is not None else 1:]
        act = rest[0] if len(rest) == 1 else None
        return conv, bn, act, len(rest) <= 1

    def _plan(self):
        """(conv, bn, act name, depthwise) when this block can run fused ops, else None."""
        conv, bn, act, simple = self._parts()
        if not simple or type(conv) is not nn.Conv2d or (bn is not None and type(bn) is not nn.BatchNorm2d):
            return None
        name = act_name(act)
        if name is None:
            return None
        depthwise = (
            conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and conv.groups == conv.in_channels
            and conv.out_channels % conv.in_channels == 0
        )
        return conv, bn, name, depthwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._plan()
        if plan is None or x.dim() != 4:
            return super().forward(x)
        conv, bn, name, depthwise = plan
        if bn is not None and (bn.training or bn.running_mean is None):
            # Batch statistics: the convolution, then BN + activation in two fused passes
            # (statistics; normalise + activation), running stats updated as nn.BatchNorm2d does.
            z = conv(x)
            y, mean, var = ops.bn_act_train(z, bn.weight, bn.bias, bn.eps, name)
            _update_running_stats(bn, mean, var, z)
            return y
        if not depthwise:
            return super().forward(x)  # pointwise / dense convs join with pwconv_bn_act
        geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        if bn is None:
            return ops.dwconv_bn_act(x, conv.weight, None, conv.bias, act=name, **geometry)
        scale, shift = self._folded(conv, bn)
        return ops.dwconv_bn_act(x, conv.weight, scale, shift, act=name, **geometry)

    def _folded(self, conv, bn):
        """fold_bn(bn, conv.bias), kept between inference calls (folding is five small ops, ~15 us a
        call) and made afresh when any tensor it reads changed (version counter, storage, dtype,
        device) or eps did. Under autograd or torch.compile it is always made afresh."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return fold_bn(bn, conv.bias)
        key = (torch.is_inference_mode_enabled(), bn.eps) + tuple(
            None if t is None else (t._version, t.data_ptr(), t.dtype, t.device)
            for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias, conv.bias)
        )
        cached = self.__dict__.get("_fold_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        folded = fold_bn(bn, conv.bias)
        self.__dict__["_fold_cache"] = (key, folded)
        return folded


class DepthwiseSeparable(nn.Sequential):
    """The MobileNet V1 block: depthwise ConvBNAct (k x k, stride) then pointwise ConvBNAct
    (1x1), both with `act`. Children "0" (depthwise) and "1" (pointwise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, act="relu6"):
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels, activation_layer=act),
            ConvBNAct(in_channels, out_channels, 1, activation_layer=act),
        )
