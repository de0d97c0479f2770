"""Drop-in `nn.Module`s built on fastops' fused ops."""

from .activation import Hardsigmoid, Hardswish
from .conv import ConvBNAct, DepthwiseSeparable, create_act, fold_bn

__all__ = ["Hardswish", "Hardsigmoid", "ConvBNAct", "DepthwiseSeparable", "create_act", "fold_bn"]
