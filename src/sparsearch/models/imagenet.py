"""ResNet-50 in the ImageNet layout of He et al. (2016) (the torchvision one: a 7x7 stride-2 stem and a max pool,
then 3-4-6-3 bottleneck blocks of 64-128-256-512 x 4 channels, stride in the 3x3 convolution, projection
shortcuts): 25.6M parameters for 1000 classes. Any input size works (global pooling); 224x224 is what it was
made for. The model users bring to the engine and to sparse training at full size."""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register_model, scaled


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
                           if stride != 1 or in_ch != out_ch else nn.Identity())

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        ch, stages = width, []
        for i, blocks in enumerate((3, 4, 6, 3)):
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(ch, width * 2**i, 2 if i > 0 and b == 0 else 1))
                ch = width * 2**i * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


register_model("resnet50", widen=scaled("width", 64))(ResNet50)
