"""Model registry: `build_model(name, num_classes=..., in_channels=..., **kwargs)`."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import SparsearchError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(fn):
        MODELS[name] = fn
        return fn

    return wrap


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise SparsearchError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    try:
        return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as exc:
        raise SparsearchError(f"bad arguments for model '{name}': {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import darts, mobilenet, resnet, small, vgg, wideresnet  # noqa: E402,F401  (registration side effects)

__all__ = ["MODELS", "build_model", "count_parameters", "register_model"]
