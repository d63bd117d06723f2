"""Scores that say which weights matter: higher is kept. Each criterion maps {layer name: module} to
{layer name: score tensor shaped like the weight}. Scores are taken on the effective (masked) weights,
so already-pruned weights score zero and iterative pruning only tightens a mask."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import SparsearchError
from .masks import weight_param


def magnitude(layers: dict[str, nn.Module], **_) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().abs() for name, m in layers.items()}


def random(layers: dict[str, nn.Module], seed: int = 0, **_) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.weight.shape, generator=gen).to(m.weight.device) for name, m in layers.items()}


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): w_u^2 / sum_{v >= u} w_v^2 over the layer's weights sorted by magnitude."""
    sq = weight.detach().reshape(-1).double() ** 2
    ordered, idx = torch.sort(sq, stable=True)
    suffix = ordered.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(sq)
    out[idx] = ordered / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    return out.view_as(weight).float()


def lamp(layers: dict[str, nn.Module], **_) -> dict[str, torch.Tensor]:
    return {name: lamp_scores(m.weight) for name, m in layers.items()}


def snip(layers: dict[str, nn.Module], model: nn.Module | None = None,
         batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, **_) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2019): connection sensitivity |w * dL/dw|, summed over the given batches."""
    if model is None or batches is None:
        raise SparsearchError("the snip criterion needs the model and at least one batch of training data")
    params = {name: weight_param(m) for name, m in layers.items()}
    scores = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.train()
    n = 0
    for xb, yb in batches:
        model.zero_grad(set_to_none=True)
        out = model(xb)
        F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, yb).backward()
        for name, m in layers.items():
            scores[name] += (m.weight.detach() * params[name].grad).abs()
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise SparsearchError("the snip criterion got no batches")
    return scores


CRITERIA: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "magnitude": magnitude, "random": random, "lamp": lamp, "snip": snip,
}
