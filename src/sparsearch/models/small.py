"""Small networks for MNIST-sized inputs and quick tests."""

from __future__ import annotations

import torch.nn as nn

from . import register_model, scaled


@register_model("cnn", widen=scaled("width", 32))
def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """A LeNet-style CNN: two conv-BN-ReLU blocks with pooling, then a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


@register_model("mlp", widen=lambda kw, f: {**kw, "hidden": [max(1, round(h * f)) for h in kw.get("hidden") or [300, 100]]})
def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 8, hidden: list[int] | None = None) -> nn.Module:
    """A fully connected network on flattened images (LeNet-300-100 shape by default)."""
    dims = [in_channels * image_size * image_size, *(hidden or [300, 100])]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], num_classes))
    return nn.Sequential(*layers)
