"""Masks from scores: static (at initialisation), one-shot and gradual magnitude pruning, as method objects (the
recipes `sparsearch train` runs with them are in `recipes.pruning`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..config import Config
from .base import SparseMethod
from .schedules import Cubic


class OneShot(SparseMethod):
    """Masks computed once, when prepared, from `criterion` scores of the weights as they are (magnitude, lamp,
    random, or snip over `batches`), at the overall `sparsity` split by `allocation` (uniform, er, erk, or one
    global threshold) in units of `kind` (unstructured, nm:N:M, block:BH:BW, channel); fixed afterwards. `overrides`
    may give named layers another sparsity and kind."""

    overridable = ("sparsity", "kind")

    def __init__(self, sparsity: float, *, criterion: str = "magnitude", allocation: str = "erk",
                 kind: str = "unstructured", batches: list | None = None, **common):
        super().__init__(sparsity, **common)
        self.criterion, self.allocation, self.kind, self.batches = criterion, allocation, kind, batches

    @classmethod
    def from_config(cls, cfg: Config, batches: list | None = None) -> OneShot:
        s = cfg.sparsity
        return cls(s.sparsity, criterion=s.criterion, allocation=s.allocation, kind=s.kind, batches=batches,
                   **cls.common(cfg))

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        masks, densities = sp.compute_masks(model, self.layers, self.sparsity, self.criterion, self.allocation,
                                            self.kind, self.overrides, seed=self.seed, batches=self.batches)
        sp.attach(model, masks, sp.layer_kinds(self.layers, self.kind, self.overrides), densities)


class Static(OneShot):
    """Sparse from initialisation with a fixed mask: OneShot on the initial weights, random by default
    (ER / ERK / uniform allocation), or SNIP with `criterion="snip"` and a few `batches`."""

    def __init__(self, sparsity: float, *, criterion: str = "random", **kwargs):
        super().__init__(sparsity, criterion=criterion, **kwargs)


def prune_to(method: SparseMethod, target: float, criterion: str, allocation: str) -> None:
    """Tighten `method`'s fixed masks to `target` by `criterion` scores of the masked weights (a pruned weight
    scores zero, so it never returns); the optimizer's state at newly pruned entries is zeroed too."""
    masks, densities = sp.compute_masks(method.model, method.layers, target, criterion, allocation)
    sp.update(method.model, masks, method.optimizer, densities)
    method.log({"kind": "prune", "step": method.step_count, "target_sparsity": round(target, 6)})


def _attach_dense(method: SparseMethod) -> None:
    sp.attach(method.model, {n: torch.ones_like(sp.layer_weight(m), dtype=torch.bool) for n, m in method.layers.items()},
              densities={n: 1.0 for n in method.layers})


class GMP(SparseMethod):
    """Gradual magnitude pruning (Zhu & Gupta 2017): a dense start, masks tightened along the `schedule`
    (cubic) at the start of its update steps, by magnitude or lamp scores split by `allocation`."""

    def __init__(self, sparsity: float, *, schedule: Cubic = Cubic(), criterion: str = "magnitude",
                 allocation: str = "erk", **common):
        super().__init__(sparsity, **common)
        self.schedule, self.criterion, self.allocation = schedule, criterion, allocation

    @classmethod
    def from_config(cls, cfg: Config) -> GMP:
        s, g = cfg.sparsity, cfg.gmp
        return cls(s.sparsity, schedule=Cubic(g.initial_sparsity, g.start, g.end, g.frequency),
                   criterion=s.criterion, allocation=s.allocation, **cls.common(cfg))

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        _attach_dense(self)

    def on_step_start(self) -> None:
        if self.step_count in self.schedule.update_steps(self.steps):
            prune_to(self, self.schedule.at(self.step_count, self.steps, self.sparsity), self.criterion,
                     self.allocation)
