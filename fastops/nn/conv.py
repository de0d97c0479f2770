"""Convolution blocks: `ConvBNAct` (torchvision's Conv2dNormActivation, fused) and
`DepthwiseSeparable` (the MobileNet V1 block).

Parameter names, buffers and train/eval behaviour are those of the unfused modules, so state
dicts load both ways and training matches:
  * eval mode: the BatchNorm folds into the kernel's per-channel scale / shift (recomputed from
    the module's current parameters and running statistics on each call, so gradients still
    reach BN's weight and bias);
  * training mode (batch statistics): the module runs unfused, as the plain `Sequential` — its
    own BatchNorm keeps nn.BatchNorm2d's semantics (running-stat updates with its momentum,
    `momentum=None`, `num_batches_tracked`). A fused training path (conv + per-channel sums in one
    pass, normalise + act in the next) is not there yet: the conv-then-BatchNorm composition
    through the fused op measured 0.75x eager (bench/results), so training stays on eager.
Cases the kernel does not cover (non-depthwise convs, string or non-zero padding modes,
unsupported activations) run the plain `Sequential`, with the same answer.
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

    def _fused_act(self):
        """The activation's name if this block can run fused, else None."""
        conv, bn, act, simple = self._parts()
        if not simple or not isinstance(conv, nn.Conv2d) or type(conv) is not nn.Conv2d:
            return None
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return None
        if conv.groups != conv.in_channels or conv.out_channels % conv.in_channels:
            return None  # not depthwise (pointwise / dense convs join with pwconv_bn_act)
        return act_name(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = self._fused_act()
        if name is None or x.dim() != 4:
            return super().forward(x)
        conv, bn, act, _ = self._parts()
        geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        if bn is None:
            return ops.dwconv_bn_act(x, conv.weight, None, conv.bias, act=name, **geometry)
        if bn.training or bn.running_mean is None:
            return super().forward(x)  # batch statistics: see the module docstring
        scale, shift = fold_bn(bn, conv.bias)
        return ops.dwconv_bn_act(x, conv.weight, scale, shift, act=name, **geometry)


class DepthwiseSeparable(nn.Sequential):
    """The MobileNet V1 block: depthwise ConvBNAct (k x k, stride) then pointwise ConvBNAct
    (1x1), both with `act`. Children "0" (depthwise) and "1" (pointwise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, act="relu6"):
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels, activation_layer=act),
            ConvBNAct(in_channels, out_channels, 1, activation_layer=act),
        )
