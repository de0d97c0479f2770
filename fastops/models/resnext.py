"""ResNeXt-50 32x4d (Xie et al. 2017), and the ResNets it grew from, with torchvision's layout:
`conv1`, `bn1`, `relu`, `maxpool`, `layer1..4`, `avgpool`, `fc`."""

import torch
from torch import nn

from ..nn.conv import conv_bn_act
from ..nn.resnet import BasicBlock, Bottleneck
from ..nn.sequential import FusedSequential
from ._init import init_weights
from ._registry import register_model


class ResNet(nn.Module):
    """torchvision's ResNet (BasicBlock or Bottleneck; groups and width_per_group for ResNeXt):
    keys and shapes identical, same init."""

    def __init__(self, block, layers, num_classes: int = 1000, groups: int = 1, width_per_group: int = 64,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(block, 64, layers[0])
        self.layer2 = self._layer(block, 128, layers[1], stride=2)
        self.layer3 = self._layer(block, 256, layers[2], stride=2)
        self.layer4 = self._layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self, linear_std=None)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _layer(self, block, planes: int, blocks: int, stride: int = 1) -> FusedSequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = FusedSequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return FusedSequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(conv_bn_act(x, self.conv1, self.bn1, self.relu))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnext50_32x4d(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (torchvision's `resnext50_32x4d`, same keys); kwargs: zero_init_residual."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, groups=32, width_per_group=4, **kwargs)


@register_model
def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18 (torchvision's `resnet18`, same keys); kwargs: zero_init_residual."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


@register_model
def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50 (torchvision's `resnet50`, same keys); kwargs: zero_init_residual."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)
