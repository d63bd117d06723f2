"""THE sparsity layer: every mask in sparsearch is made, applied, updated and checked here.

    from sparsearch import sparsity as sp
    layers = sp.find_layers(model)                       # conv/linear by name globs; first conv + classifier dense
    masks, densities = sp.compute_masks(model, layers, sparsity=0.9, criterion="magnitude", allocation="erk")
    sp.attach(model, masks, densities=densities)         # parametrize: weight = original * mask
    sp.bind_optimizer(model, optimizer)                  # masked entries stay exactly zero every step
    assert not sp.check(model)                           # invariants: counts, zeros, N:M validity
    state = sp.squash(model)                             # vanilla state_dict for an unmodified model

See docs/sparsity.md for the rules (rounding, tie-breaking, N:M layout, ERK).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..config import SparsityConfig
from ..errors import SparsearchError
from .criteria import CRITERIA, lamp_scores
from .masks import (
    DynamicNM,
    LearnedMask,
    Mask,
    SparsityError,
    attach,
    attach_channels,
    attach_learned,
    attach_nm,
    bind_optimizer,
    check,
    current_mask,
    current_masks,
    find_layers,
    freeze,
    load_masked_state_dict,
    mask_parametrization,
    masked_layers,
    masked_tensors,
    owns_parameters,
    remove,
    squash,
    state_masks,
    track_dense_grads,
    update,
    weight_param,
)
from .report import print_report, report
from .select import (
    NM,
    Block,
    Channel,
    Unstructured,
    allocate,
    global_select,
    keep_count,
    parse_kind,
    select,
    topk_mask,
)

__all__ = [
    "NM", "Block", "Channel", "DynamicNM", "LearnedMask", "Mask", "SparsityError", "Unstructured",
    "allocate", "attach", "attach_channels", "attach_learned", "attach_nm", "bind_optimizer", "check", "compute_masks",
    "configured_layers", "current_mask", "current_masks", "find_layers", "freeze", "global_select", "keep_count",
    "lamp_scores", "load_masked_state_dict", "mask_parametrization", "masked_layers", "masked_tensors", "owns_parameters", "parse_kind",
    "print_report", "remove", "report", "select", "sparsify", "squash", "state_masks", "topk_mask",
    "track_dense_grads", "update", "weight_param",
]


def compute_masks(model: nn.Module, layers: dict[str, nn.Module], sparsity: float, criterion: str = "magnitude",
                  allocation: str = "erk", kind: str = "unstructured", **criterion_args: Any
                  ) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
    """Masks for `layers` at the overall `sparsity`, and the per-layer densities they were selected at
    (None for global allocation, where each layer's density follows from the single threshold)."""
    if criterion not in CRITERIA:
        raise SparsearchError(f"unknown criterion '{criterion}' (use {', '.join(CRITERIA)})")
    mask_kind = parse_kind(kind)
    if isinstance(mask_kind, NM) and abs(sparsity - (1 - mask_kind.density)) > 1e-9:
        raise SparsearchError(f"{mask_kind} fixes sparsity at {1 - mask_kind.density:g}; got sparsity {sparsity:g}")
    scores = CRITERIA[criterion](layers, model=model, **criterion_args)
    if allocation == "global":
        return global_select(scores, sparsity, mask_kind), None
    densities = allocate({n: m.weight.shape for n, m in layers.items()}, sparsity, allocation)
    return {n: select(scores[n], densities[n], mask_kind) for n in layers}, densities


def configured_layers(model: nn.Module, cfg: SparsityConfig) -> dict[str, nn.Module]:
    """The layers `cfg` (include / exclude globs, dense_first_last) selects in `model`."""
    return find_layers(model, cfg.include, cfg.exclude, cfg.dense_first_last)


def sparsify(model: nn.Module, cfg: SparsityConfig, seed: int = 0, batches=None) -> dict[str, torch.Tensor]:
    """Select layers, compute masks as `cfg` says, and attach them. Returns the masks."""
    layers = configured_layers(model, cfg)
    masks, densities = compute_masks(model, layers, cfg.sparsity, cfg.criterion, cfg.allocation, cfg.kind,
                                     seed=seed, batches=batches)
    attach(model, masks, parse_kind(cfg.kind), densities)
    return masks
