"""Drop-in `nn.Module`s built on fastops' fused ops."""

from .activation import Hardsigmoid, Hardswish

__all__ = ["Hardswish", "Hardsigmoid"]
