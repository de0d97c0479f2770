"""Drop-in `nn.Module`s built on fastops' fused ops."""

from .activation import Hardsigmoid, Hardswish
from .conv import ConvBNAct, DepthwiseSeparable, create_act, fold_bn
from .separable import SeparableConv2d
from .shuffle import ChannelShuffle
from .squeeze_excite import SqueezeExcite

__all__ = [
    "Hardswish", "Hardsigmoid", "ConvBNAct", "DepthwiseSeparable", "create_act", "fold_bn", "ChannelShuffle",
    "SqueezeExcite", "SeparableConv2d",
]
