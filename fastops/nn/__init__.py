"""Drop-in `nn.Module`s built on fastops' fused ops: activations, conv blocks, and the blocks of
MobileNet V1/V2/V3, ShuffleNet V1/V2, SqueezeNet, Xception and ResNet/ResNeXt with the parameter
names of their torchvision (timm, for Xception) counterparts."""

from .activation import Hardsigmoid, Hardswish
from .conv import ConvBNAct, DepthwiseSeparable, conv_bn_act, create_act, fold_bn
from .separable import SeparableConv2d, separable_bn_act
from .sequential import FusedSequential
from .shuffle import ChannelShuffle
from .squeeze_excite import SqueezeExcite
from .mobilenet import InvertedResidual
from .shufflenet_v1 import ShuffleV1Block
from .shufflenet_v2 import ShuffleV2Block
from .squeezenet import Fire
from .resnet import BasicBlock, Bottleneck
from .xception import XceptionBlock

__all__ = [
    "Hardswish", "Hardsigmoid", "ConvBNAct", "DepthwiseSeparable", "conv_bn_act", "create_act", "fold_bn",
    "ChannelShuffle", "SqueezeExcite", "SeparableConv2d", "separable_bn_act", "FusedSequential",
    "InvertedResidual", "ShuffleV1Block", "ShuffleV2Block", "Fire", "BasicBlock", "Bottleneck", "XceptionBlock",
]
