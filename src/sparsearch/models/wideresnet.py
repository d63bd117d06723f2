"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR: pre-activation basic blocks, (depth - 4) / 6 blocks
per stage at widths 16k, 32k, 64k, 1x1 convolution shortcuts where the shape changes. WRN-28-10 has about
36.5M parameters, WRN-28-2 about 1.5M."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from . import multiplied, register_model


class PreActBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if stride != 1 or in_ch != out_ch else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        skip = self.shortcut(o) if self.shortcut is not None else x
        o = F.relu(self.bn2(self.conv1(o)))
        o = F.dropout(o, self.dropout, self.training)
        return self.conv2(o) + skip


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: float = 10, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, ch = [], 16
        for stage, width in enumerate(round(c * widen) for c in (16, 32, 64)):
            for i in range(n):
                blocks.append(PreActBlock(ch, width, 2 if stage > 0 and i == 0 else 1, dropout))
                ch = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(ch)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


register_model("wideresnet", widen=multiplied("widen", 10))(WideResNet)
for _widen in (2, 4, 10):
    register_model(f"wrn28-{_widen}", widen=multiplied("widen", _widen))(
        lambda widen=_widen, **kw: WideResNet(depth=28, widen=widen, **kw))
