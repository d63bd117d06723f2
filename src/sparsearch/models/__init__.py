"""Model registry: `build_model(name, num_classes=..., in_channels=..., **kwargs)`."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..errors import SparsearchError

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset

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
    except (TypeError, ValueError, RuntimeError, KeyError, ZeroDivisionError) as exc:  # kwargs the model cannot take
        raise SparsearchError(f"bad arguments for model '{name}': {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_builder(cfg: Config, ds: Dataset, **overrides: Any) -> Callable[[], nn.Module]:
    """A function that builds the configured model (kwargs updated by `overrides`), seeded: the same init every call
    (`build(seed=k)` draws another initialisation, e.g. for IMP's random re-initialisation branch)."""
    kwargs: dict[str, Any] = {**cfg.model.kwargs, **overrides}
    if taken := sorted({"num_classes", "in_channels"} & set(kwargs)):
        raise SparsearchError(f"model.kwargs sets {', '.join(taken)}, which the dataset decides ({ds.name}: "
                          f"{ds.in_channels} channels, {ds.num_classes} classes)")
    if cfg.model.name == "mlp":
        kwargs.setdefault("image_size", ds.image_size[0])

    def build(seed: int | None = None) -> nn.Module:
        seed_everything(cfg.seed if seed is None else seed)
        return build_model(cfg.model.name, num_classes=ds.num_classes, in_channels=ds.in_channels, **kwargs)

    return build


def split_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Models may return logits or (logits, auxiliary logits) (genotype networks with an auxiliary head)."""
    if isinstance(output, (tuple, list)):
        return output[0], (output[1] if len(output) > 1 else None)
    return output, None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import darts, mobilenet, resnet, small, vgg, wideresnet  # noqa: E402,F401  (registration side effects)

__all__ = ["MODELS", "build_model", "count_parameters", "model_builder", "register_model", "seed_everything", "split_logits"]
