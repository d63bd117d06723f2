"""Model registry: `build_model(name, num_classes=..., in_channels=..., **kwargs)`."""

from __future__ import annotations

import inspect
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
# how a model's constructor arguments widen it by a factor (Sparse-IFT's Sparse Wide): kwargs, factor -> kwargs
WIDEN: dict[str, Callable[[dict, float], dict]] = {}


def register_model(name: str, widen: Callable[[dict, float], dict] | None = None):
    def wrap(fn):
        MODELS[name] = fn
        if widen is not None:
            WIDEN[name] = widen
        return fn

    return wrap


def scaled(key: str, default: int, multiple: int = 1) -> Callable[[dict, float], dict]:
    """A widening rule for an integer channel argument: `key` (default `default`) times the factor, rounded to a
    multiple of `multiple`."""
    return lambda kw, f: {**kw, key: max(multiple, multiple * round(kw.get(key, default) * f / multiple))}


def multiplied(key: str, default: float) -> Callable[[dict, float], dict]:
    """A widening rule for a width-multiplier argument."""
    return lambda kw, f: {**kw, key: kw.get(key, default) * f}


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """A registry model. `num_classes` and `in_channels` go to constructors that take them (every built-in one does;
    a user's registered class may not)."""
    if name not in MODELS:
        raise SparsearchError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    try:
        params = inspect.signature(MODELS[name]).parameters
    except (TypeError, ValueError):  # a builtin or C callable: pass everything
        params = {}
    takes_any = not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if takes_any or k in params}
    try:
        return MODELS[name](**given, **kwargs)
    except (TypeError, ValueError, RuntimeError, KeyError, ZeroDivisionError) as exc:  # kwargs the model cannot take
        raise SparsearchError(f"bad arguments for model '{name}': {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_kwargs(cfg: Config, ds: Dataset, **overrides: Any) -> dict[str, Any]:
    """The configured model's constructor arguments (besides classes and channels), widened for Sparse Wide."""
    kwargs: dict[str, Any] = {**cfg.model.kwargs, **overrides}
    if taken := sorted({"num_classes", "in_channels"} & set(kwargs)):
        raise SparsearchError(f"model.kwargs sets {', '.join(taken)}, which the dataset decides ({ds.name}: "
                              f"{ds.in_channels} channels, {ds.num_classes} classes)")
    if cfg.model.name in ("mlp", "vit"):  # sized to the dataset's images unless set
        kwargs.setdefault("image_size", ds.image_size[0])
    if cfg.ift.family == "wide":  # Sparse-IFT: the widened constructor arguments
        from .ift import transform_sparsity, wide_factor

        if cfg.model.name not in WIDEN:
            raise SparsearchError(f"model '{cfg.model.name}' has no width rule (register_model(..., widen=...)), so "
                                  "ift.family wide cannot widen it")
        kwargs = WIDEN[cfg.model.name](kwargs, wide_factor(transform_sparsity(cfg)))
    return kwargs


def model_builder(cfg: Config, ds: Dataset, **overrides: Any) -> Callable[[], nn.Module]:
    """A function that builds the configured model (kwargs updated by `overrides`), seeded: the same init every call
    (`build(seed=k)` draws another initialisation, e.g. for IMP's random re-initialisation branch)."""
    kwargs = model_kwargs(cfg, ds, **overrides)
    ift = cfg.ift

    def build(seed: int | None = None) -> nn.Module:
        seed_everything(cfg.seed if seed is None else seed)
        model = build_model(cfg.model.name, num_classes=ds.num_classes, in_channels=ds.in_channels, **kwargs)
        if ift.family == "parallel":
            from .ift import sparse_parallel, transform_sparsity

            s = cfg.sparsity
            example = torch.zeros(2, ds.in_channels, *ds.image_size)
            sparse_parallel(model, transform_sparsity(cfg), example, s.include, s.exclude, s.dense_first_last)
        return model

    return build


def split_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Models may return logits or (logits, auxiliary logits) (genotype networks with an auxiliary head)."""
    if isinstance(output, (tuple, list)):
        return output[0], (output[1] if len(output) > 1 else None)
    return output, None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import darts, efficientnet, imagenet, mobilenet, resnet, small, vgg, vit, wideresnet  # noqa: E402,F401  (registration side effects)

__all__ = [
    "MODELS", "WIDEN", "build_model", "count_parameters", "model_builder", "model_kwargs",
    "register_model", "seed_everything", "split_logits",
]
