"""Sparse model soups (Zimmer, Spiegel & Pokutta, ICLR 2024) on any model and training function:

    soup = SparseSoup(0.9, phases=3, ingredients=3).run(model, train)   # train(model, phase, i) -> trained model

Each phase prunes the model globally by magnitude to the phase's density, trains `ingredients` copies of
that one start (the training function decides how they differ: seed, data order, weight decay) and averages
them; masks are not averaged but required equal, so the soup keeps the start's mask exactly. `greedy`
adds ingredients best-first while a held-out `evaluate` does not drop. `recalibrate(model)` re-estimates
BatchNorm statistics after averaging (`recalibrate_batchnorm`). The pipeline's `soup` recipe (trials any
executor runs, resumable files) is built from the same pieces.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Callable, Literal

import torch
import torch.nn as nn

from .. import sparsity as sp


def phase_densities(target_sparsity: float, phases: int) -> list[float]:
    """Each phase removes the same fraction q = 1 - (1 - s)^(1/P) of the remaining weights."""
    return [(1 - target_sparsity) ** (p / phases) for p in range(1, phases + 1)]


def average(states: list[dict]) -> dict:
    """The uniform average of floating-point entries; masks (and integer buffers) must agree and are kept."""
    out, masks = {}, sp.state_masks(states[0])
    for key, first in states[0].items():
        if key in masks:
            if any(not torch.equal(s[key], first) for s in states[1:]):
                raise sp.SparsityError(f"ingredients disagree on the mask '{key}': they cannot form one sparse soup")
            out[key] = first
        elif torch.is_tensor(first) and first.is_floating_point():
            out[key] = torch.stack([s[key] for s in states]).mean(0)
        else:
            out[key] = first
    return out


def greedy_soup(individual: list[float], measure: Callable[[list[int]], Any],
                score: Callable[[Any], float] = float) -> tuple[list[int], Any]:
    """Wortsman et al.'s greedy soup: ingredients by their `individual` validation score, best first; one stays if
    the soup's score (`score(measure(members))`) does not drop. Returns the members and the best measurement."""
    order = sorted(range(len(individual)), key=lambda i: -individual[i])
    members, best = [order[0]], measure([order[0]])
    for i in order[1:]:
        trial = measure(members + [i])
        if score(trial) >= score(best):
            members, best = members + [i], trial
    return sorted(members), best


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, batches: int) -> None:
    """Re-estimate BatchNorm running statistics (a cumulative average over the first `batches` batches of
    `loader`, a TensorLoader or any iterable of (x, y)): averaged weights do not match averaged statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for i, (x, _) in enumerate(loader.batches() if hasattr(loader, "batches") else loader):
        if i == batches:
            break
        model(x)
    model.train(was_training)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def prune_globally(model: nn.Module, density: float, include: Iterable[str] = ("*",), exclude: Iterable[str] = (),
                   dense_first_last: bool = True) -> nn.Module:
    """`model` in place, pruned by one global magnitude threshold to `density` (weights pruned earlier are zeros,
    so they stay pruned)."""
    sp.remove(model)
    layers = sp.find_layers(model, include, exclude, dense_first_last)
    masks, _ = sp.compute_masks(model, layers, 1 - density, "magnitude", "global")
    sp.attach(model, masks)
    return model


class SparseSoup:
    """The soup driver over a user's `train(model, phase, ingredient) -> model` (see the module docstring)."""

    def __init__(self, sparsity: float, *, phases: int = 3, ingredients: int = 3,
                 kind: Literal["uniform", "greedy"] = "uniform", include=("*",), exclude=(), dense_first_last=True):
        if not 0 < sparsity < 1 or phases < 1 or ingredients < 1 or kind not in ("uniform", "greedy"):
            raise sp.SparsityError("SparseSoup needs 0 < sparsity < 1, phases and ingredients >= 1, and kind uniform "
                                   f"or greedy; got {sparsity}, {phases}, {ingredients}, {kind}")
        self.sparsity, self.phases, self.ingredients, self.kind = sparsity, phases, ingredients, kind
        self.layers = {"include": include, "exclude": exclude, "dense_first_last": dense_first_last}
        self.history: list[dict] = []

    def run(self, model: nn.Module, train: Callable[[nn.Module, int, int], nn.Module],
            evaluate: Callable[[nn.Module], float] | None = None,
            recalibrate: Callable[[nn.Module], None] | None = None) -> nn.Module:
        if self.kind == "greedy" and evaluate is None:
            raise sp.SparsityError("a greedy soup needs evaluate(model) -> a held-out score")
        for phase, density in enumerate(phase_densities(self.sparsity, self.phases), 1):
            prune_globally(model, density, **self.layers)
            states = [train(copy.deepcopy(model), phase, i).state_dict() for i in range(self.ingredients)]

            def measure(members: list[int]) -> float:
                model.load_state_dict(average([states[i] for i in members]))
                if recalibrate is not None:
                    recalibrate(model)
                return evaluate(model) if evaluate is not None else float("nan")

            if self.kind == "greedy":
                individual = [measure([i]) for i in range(len(states))]
                members, _ = greedy_soup(individual, measure)
            else:
                individual, members = [], list(range(len(states)))
            score = measure(members)  # leaves the model holding the chosen soup
            self.history.append({"phase": phase, "density": density, "members": members, "ingredients": individual,
                                 "soup": score})
        return model
