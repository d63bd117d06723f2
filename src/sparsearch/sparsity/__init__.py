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

from ..config import LayerOverride, SparsityConfig
from ..errors import SparsearchError
from .criteria import CRITERIA, lamp_scores
from .layers import (
    attention_call,
    current_mask,
    current_masks,
    find_layers,
    layer_weight,
    mask_parametrization,
    masked_layers,
    masked_tensors,
    owns_parameters,
    weight_name,
    weight_param,
)
from .masks import (
    attach,
    attach_channels,
    attach_learned,
    attach_nm,
    bind_optimizer,
    check,
    freeze,
    load_masked_state_dict,
    remove,
    squash,
    state_masks,
    track_dense_grads,
    update,
)
from .overrides import group_layers, layer_kinds, parse_overrides
from .parametrizations import DynamicNM, LearnedMask, Mask, SparsityError
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
    "allocate", "attach", "attach_channels", "attach_learned", "attach_nm", "attention_call", "bind_optimizer", "check",
    "compute_masks", "configured_layers", "current_mask", "current_masks", "find_layers", "freeze", "global_select",
    "group_layers", "keep_count", "lamp_scores", "layer_kinds", "layer_weight", "load_masked_state_dict",
    "mask_parametrization", "masked_layers", "masked_tensors", "owns_parameters", "parse_kind", "parse_overrides",
    "print_report", "remove", "report", "select", "sparsify", "squash", "state_masks", "topk_mask",
    "track_dense_grads", "update", "weight_name", "weight_param",
]


def compute_masks(model: nn.Module, layers: dict[str, nn.Module], sparsity: float, criterion: str = "magnitude",
                  allocation: str = "erk", kind: str = "unstructured", overrides: tuple[LayerOverride, ...] = (),
                  **criterion_args: Any) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
    """Masks for `layers` at the overall `sparsity`, and the per-layer densities they were selected at
    (None for global allocation, where each layer's density follows from the single threshold). `overrides`
    (`parse_overrides`) give named layers another sparsity or kind; each group is allocated on its own."""
    if criterion not in CRITERIA:
        raise SparsearchError(f"unknown criterion '{criterion}' (use {', '.join(CRITERIA)})")
    groups = group_layers(layers, sparsity, kind, overrides)
    for target, mask_kind, _ in groups:
        if isinstance(mask_kind, NM) and abs(target - (1 - mask_kind.density)) > 1e-9:
            raise SparsearchError(f"{mask_kind} fixes sparsity at {1 - mask_kind.density:g}; got sparsity {target:g}")
        if criterion == "wanda" and isinstance(mask_kind, (Block, Channel)):
            raise SparsearchError(f"the wanda criterion compares weights within each output row; it does not score "
                                  f"{mask_kind} units (use unstructured or nm:N:M)")
    scores = CRITERIA[criterion](layers, model=model, **criterion_args)
    masks: dict[str, torch.Tensor] = {}
    densities: dict[str, float] = {}
    for target, mask_kind, names in groups:
        if allocation == "global":
            masks.update(global_select({n: scores[n] for n in names}, target, mask_kind))
            continue
        group_densities = allocate({n: layer_weight(layers[n]).shape for n in names}, target, allocation)
        masks.update({n: select(scores[n], group_densities[n], mask_kind) for n in names})
        densities.update(group_densities)
    return {n: masks[n] for n in layers}, None if allocation == "global" else densities


def configured_layers(model: nn.Module, cfg: SparsityConfig) -> dict[str, nn.Module]:
    """The layers `cfg` (include / exclude globs, dense_first_last) selects in `model`."""
    return find_layers(model, cfg.include, cfg.exclude, cfg.dense_first_last)


def sparsify(model: nn.Module, cfg: SparsityConfig, seed: int = 0, batches=None) -> dict[str, torch.Tensor]:
    """Select layers, compute masks as `cfg` says, and attach them. Returns the masks."""
    layers = configured_layers(model, cfg)
    overrides = parse_overrides(cfg.overrides, "sparsity.overrides")
    masks, densities = compute_masks(model, layers, cfg.sparsity, cfg.criterion, cfg.allocation, cfg.kind, overrides,
                                     seed=seed, batches=batches)
    attach(model, masks, layer_kinds(layers, cfg.kind, overrides), densities)
    return masks
