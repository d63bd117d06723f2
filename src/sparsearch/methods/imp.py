"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020) as a driver around a
user's training function; the CLI's recipe, with each level a resumable stage, is `recipes.imp`."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch.nn as nn

from .. import sparsity as sp


def level_densities(target_sparsity: float, prune_fraction: float) -> list[float]:
    """Densities of levels 1..L: each removes `prune_fraction` of the remaining weights; the last hits the target."""
    levels = math.ceil(math.log(1 - target_sparsity) / math.log(1 - prune_fraction) - 1e-9)
    return [max(1 - target_sparsity, (1 - prune_fraction) ** level) for level in range(1, levels + 1)]


class IMP:
    """Iterative magnitude pruning with rewinding around any training function:

        ticket = IMP(0.9, prune_fraction=0.5).run(model, train)    # train(model, level) -> the trained model

    Level 0 trains `model` dense; each next level prunes the previous level's final weights globally by
    magnitude to the level's density (`densities()`), rewinds the survivors to `rewind` and trains again.
    `rewind` is a dense state_dict, or a callable read after level 0 (rewinding to a step of the first
    training); by default the weights `model` has when `run` starts, its initialisation. `train` should bind
    its optimizer to the masks (`sparsearch.sparsity.bind_optimizer`) so pruned weights stay exactly zero."""

    def __init__(self, sparsity: float, *, prune_fraction: float = 0.2, include=("*",), exclude=(),
                 dense_first_last: bool = True):
        if not 0 < sparsity < 1 or not 0 < prune_fraction < 1:
            raise sp.SparsityError(f"IMP needs 0 < sparsity < 1 and 0 < prune_fraction < 1; got {sparsity}, "
                                   f"{prune_fraction}")
        self.sparsity, self.prune_fraction = sparsity, prune_fraction
        self.include, self.exclude, self.dense_first_last = include, exclude, dense_first_last

    def densities(self) -> list[float]:
        return level_densities(self.sparsity, self.prune_fraction)

    def run(self, model: nn.Module, train: Callable[[nn.Module, int], nn.Module],
            rewind: dict | Callable[[], dict] | None = None) -> nn.Module:
        start = copy.deepcopy(model.state_dict()) if rewind is None else None
        model = train(model, 0)
        state = start if rewind is None else rewind() if callable(rewind) else rewind
        for level, density in enumerate(self.densities(), 1):
            layers = sp.find_layers(model, self.include, self.exclude, self.dense_first_last)
            masks, _ = sp.compute_masks(model, layers, 1 - density, "magnitude", "global")
            model = train(rewound(model, state, masks), level)
        return model


def rewound(model: nn.Module, state: dict, masks: dict, densities: dict | None = None) -> nn.Module:
    """`model` in place with the dense weights `state` under `masks`."""
    sp.remove(model)
    model.load_state_dict(state)
    sp.attach(model, masks, densities=densities)
    return model
