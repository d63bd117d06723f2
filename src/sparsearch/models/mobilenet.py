"""MobileNetV2 (Sandler et al. 2018). "mobilenetv2": for 32x32 inputs, the ImageNet layout with a stride-1 stem and
the second stage at stride 1, so the final feature map is 4x4 (about 2.2M parameters for 10 classes);
"mobilenetv2_imagenet": the paper's layout for 224x224 (stride-2 stem, 7x7 final map; 3.5M parameters for 1000
classes)."""

from __future__ import annotations

import torch.nn as nn

from . import multiplied, register_model

# (expansion t, output channels c, blocks n, first stride s); stage two has s=1 instead of ImageNet's 2
CIFAR_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
IMAGENET_STAGES = [(t, c, n, 2 if i == 1 else s) for i, (t, c, n, s) in enumerate(CIFAR_STAGES)]


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        expand = conv_bn(in_ch, hidden, 1) if expansion != 1 else []
        self.block = nn.Sequential(*expand, *conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   *conv_bn(hidden, out_ch, 1, act=False))
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem_stride: int = 1,
                 stages=CIFAR_STAGES):
        super().__init__()
        ch = int(32 * width)
        layers: list[nn.Module] = conv_bn(in_channels, ch, 3, stem_stride)
        for t, c, n, s in stages:
            out = int(c * width)
            for i in range(n):
                layers.append(InvertedResidual(ch, out, s if i == 0 else 1, t))
                ch = out
        last = max(1280, int(1280 * width))
        layers += conv_bn(ch, last, 1)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("mobilenetv2", widen=multiplied("width", 1.0))
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width)


@register_model("mobilenetv2_imagenet", widen=multiplied("width", 1.0))
def mobilenetv2_imagenet(num_classes: int = 1000, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width, stem_stride=2, stages=IMAGENET_STAGES)
