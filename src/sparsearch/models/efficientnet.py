"""EfficientNet-B0 (Tan and Le 2019) in the ImageNet layout: MBConv blocks (1x1 expansion, 3x3 or 5x5 depthwise,
squeeze-and-excitation gating the channels, 1x1 projection), SiLU throughout; 5.3M parameters for 1000 classes
(torchvision's count). No stochastic depth or dropout: the model users bring to the engine, where those are
identities anyway."""

from __future__ import annotations

import torch
import torch.nn as nn

from . import multiplied, register_model

# (expansion, output channels, blocks, first stride, kernel)
STAGES = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5), (6, 192, 4, 2, 5),
          (6, 320, 1, 1, 3)]


def conv_bn_silu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)]
    return nn.Sequential(*layers, nn.SiLU(inplace=True)) if act else nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(nn.functional.silu(self.reduce(nn.functional.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int, kernel: int):
        super().__init__()
        hidden = in_ch * expansion
        expand = [conv_bn_silu(in_ch, hidden, 1)] if expansion != 1 else []
        self.block = nn.Sequential(*expand, conv_bn_silu(hidden, hidden, kernel, stride, groups=hidden),
                                   SqueezeExcitation(hidden, max(1, in_ch // 4)), conv_bn_silu(hidden, out_ch, 1, act=False))
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class EfficientNetB0(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        ch = int(32 * width)
        layers: list[nn.Module] = [conv_bn_silu(in_channels, ch, 3, 2)]
        for t, c, n, s, k in STAGES:
            for i in range(n):
                layers.append(MBConv(ch, int(c * width), t, s if i == 0 else 1, k))
                ch = int(c * width)
        layers.append(conv_bn_silu(ch, 4 * int(320 * width), 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(4 * int(320 * width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


register_model("efficientnet_b0", widen=multiplied("width", 1.0))(EfficientNetB0)
