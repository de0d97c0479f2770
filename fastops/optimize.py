"""`fastops.optimize(model)`: speed up an existing model in place of its modules.

It walks the model and gives each module it recognises the fused forward of its fastops twin,
keeping the module's children, parameters, buffers and attributes (the twin has the same
layout, so only the class changes): state_dict keys, `.train()`/`.eval()` behaviour and outputs
stay as they were. Recognised:

  * torchvision: Conv2dNormActivation -> nn.ConvBNAct; SqueezeExcitation -> nn.SqueezeExcite;
    MobileNet V2 / V3 InvertedResidual -> nn.InvertedResidual (residual add in the projection's
    epilogue); ShuffleNet V2 InvertedResidual -> nn.ShuffleV2Block (the whole unit one kernel
    call in inference) and ShuffleNetV2 -> models.shufflenet_v2.ShuffleNetV2 (the stem conv
    and max pool one kernel in inference); SqueezeNet Fire -> nn.Fire; ResNet BasicBlock / Bottleneck (ResNeXt's too) ->
    nn.BasicBlock / nn.Bottleneck (shortcut add + ReLU in the last conv's epilogue);
  * timm: legacy_xception's SeparableConv2d and Block -> nn.SeparableConv2d, nn.XceptionBlock;
  * torch: every plain nn.Sequential -> nn.FusedSequential (its runs of conv -> BatchNorm2d ->
    activation become one kernel each); nn.Hardswish, nn.Hardsigmoid, nn.ChannelShuffle -> the
    fastops twins.
Modules with a forward of their own that fastops does not know are left as they are (their
children are still converted).
"""

import copy
from collections import Counter
from typing import Dict, Tuple, Type, Union

from torch import nn

from . import nn as fnn
from .models.shufflenet_v2 import ShuffleNetV2

# "module.QualName" of a recognised class -> its fastops twin
_TWINS: Dict[str, Type[nn.Module]] = {
    "torchvision.ops.misc.Conv2dNormActivation": fnn.ConvBNAct,
    "torchvision.ops.misc.SqueezeExcitation": fnn.SqueezeExcite,
    "torchvision.models.mobilenetv2.InvertedResidual": fnn.InvertedResidual,
    "torchvision.models.mobilenetv3.InvertedResidual": fnn.InvertedResidual,
    "torchvision.models.shufflenetv2.InvertedResidual": fnn.ShuffleV2Block,
    "torchvision.models.shufflenetv2.ShuffleNetV2": ShuffleNetV2,
    "torchvision.models.squeezenet.Fire": fnn.Fire,
    "torchvision.models.resnet.BasicBlock": fnn.BasicBlock,
    "torchvision.models.resnet.Bottleneck": fnn.Bottleneck,
    "timm.models.xception.SeparableConv2d": fnn.SeparableConv2d,
    "timm.models.xception.Block": fnn.XceptionBlock,
    "torch.nn.modules.container.Sequential": fnn.FusedSequential,
    "torch.nn.modules.activation.Hardswish": fnn.Hardswish,
    "torch.nn.modules.activation.Hardsigmoid": fnn.Hardsigmoid,
    "torch.nn.modules.channelshuffle.ChannelShuffle": fnn.ChannelShuffle,
}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def optimize(model: nn.Module, inplace: bool = False, verbose: bool = False,
             return_summary: bool = False) -> Union[nn.Module, Tuple[nn.Module, Counter]]:
    """A model that computes what `model` computes with fastops' fused modules (see the module
    docstring for what is recognised). `inplace=False` (default) converts a deep copy and leaves
    `model` untouched. The summary, a Counter of "torchvision...Class -> fastops.nn.Twin": count,
    is printed with `verbose=True` and returned as `(model, summary)` with `return_summary=True`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastops.optimize: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    summary: Counter = Counter()
    for module in model.modules():
        cls = type(module)
        twin = _TWINS.get(_name(cls))
        if twin is None:
            continue
        module.__class__ = twin
        summary[f"{_name(cls)} -> fastops.nn.{twin.__name__}"] += 1
    if verbose:
        total = sum(summary.values())
        print(f"fastops.optimize: {total} module{'s' if total != 1 else ''} replaced")
        for line, count in sorted(summary.items()):
            print(f"  {count:4d} x {line}")
    return (model, summary) if return_summary else model
