"""VGG-16 for CIFAR (Simonyan & Zisserman's 13 conv layers with BatchNorm, one linear classifier on the
1x1x512 feature map, as in the CIFAR pruning literature): about 14.7M parameters."""

from __future__ import annotations

import torch.nn as nn

from . import multiplied, register_model

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    def __init__(self, plan: list = VGG16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                ch = item
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("vgg16", widen=multiplied("width", 1.0))
def vgg16(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """`width` multiplies every layer's channels."""
    return CifarVGG([c if c == "M" else max(1, round(c * width)) for c in VGG16], num_classes, in_channels)
