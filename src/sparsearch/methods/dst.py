"""Dynamic sparse training: SET (Mocanu et al. 2018), RigL (Evci et al. 2020) and GraNet (Liu et al. 2021).

At every update of the `updates` schedule, each masked layer drops the fraction `drop`(t) of its active
weights with the smallest magnitude and regrows as many at inactive positions: at random (SET) or where the
dense gradient is largest (RigL, GraNet). Regrown weights start at zero, and the layer's count of active
weights never changes, so the sparsity is exact after every update. GraNet adds gradual magnitude pruning
(a `Cubic` schedule) from a denser start underneath the regrowth.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..config import Config
from .base import SparseMethod
from .pruning import prune_to
from .schedules import Constant, CosineDecay, Cubic, Periodic


class SET(SparseMethod):
    """A random sparse start (`allocation`: erk, er or uniform), magnitude drop, random regrowth at a constant
    fraction. Records every update's churn (`churn.json` under the Trainer). A per-layer override sets a layer's
    sparsity, which its updates then keep."""

    default_drop: type = Constant
    overridable = ("sparsity",)

    def __init__(self, sparsity: float, *, allocation: str = "erk", updates: Periodic = Periodic(),
                 drop: Constant | CosineDecay | None = None, **common):
        super().__init__(sparsity, **common)
        self.allocation, self.updates = allocation, updates
        self.drop = drop if drop is not None else self.default_drop()
        self.churn: list[dict[str, Any]] = []
        self._grads: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: Config, **extra) -> SET:
        d = cfg.dst
        return cls(cfg.sparsity.sparsity, allocation=cfg.sparsity.allocation, updates=Periodic(d.update_every, d.end),
                   drop=cls.default_drop(d.drop_fraction), **extra, **cls.common(cfg))

    def start_sparsity(self) -> float:
        return self.sparsity

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        masks, densities = sp.compute_masks(model, self.layers, self.start_sparsity(), "random", self.allocation,
                                            overrides=self.overrides, seed=self.seed)
        sp.attach(model, masks, densities=densities)
        if self.total_steps is not None and self.updates.end * self.total_steps <= self.updates.every:
            warnings.warn(f"{type(self).__name__}: {self.total_steps} steps with an update every {self.updates.every} "
                          f"before {self.updates.end:.0%} of training make no topology update at all: this is static "
                          "sparse training", stacklevel=3)

    def is_update(self) -> bool:
        return self.updates.is_update(self.step_count, self.steps)

    def grow_scores(self, index: int, name: str, mask: torch.Tensor) -> torch.Tensor:
        # a generator per (seed, step, layer): the same draw after a resume
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step_count * 1009 + index)
        return torch.rand(mask.shape, generator=gen).to(mask.device)

    def before_optimizer_step(self) -> None:
        if not self.is_update():
            return
        fraction = self.drop.at(self.step_count, self.updates.end * self.steps)
        masks, churn = {}, {}
        current = sp.current_masks(self.model)
        for i, (name, module) in enumerate(sp.masked_layers(self.model).items()):
            mask = current[name]
            active = int(mask.sum())
            k = round(fraction * active)
            if k == 0:
                continue
            magnitude = sp.weight_param(module).detach().abs()
            keep = sp.topk_mask(torch.where(mask, magnitude, -math.inf), active - k)
            new = keep | sp.topk_mask(torch.where(keep, -math.inf, self.grow_scores(i, name, mask)), k)
            masks[name] = new
            churn[name] = {"dropped": int((mask & ~new).sum()), "regrown": int((new & ~mask).sum()), "active": active}
        self._grads = {}
        sp.update(self.model, masks, self.optimizer)  # counts unchanged: the densities stay exact
        self.churn.append({"step": self.step_count, "drop_fraction": fraction, "layers": churn})
        self.log({"kind": "dst", "step": self.step_count, "drop_fraction": round(fraction, 6),
                  "regrown": sum(c["regrown"] for c in churn.values())})

    def extra_state(self) -> dict[str, Any]:
        return {"churn": self.churn}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.churn = list(state["churn"])

    def artifacts(self) -> dict[str, Any]:
        return {"churn.json": self.churn}

    def summary(self) -> dict[str, Any]:
        return {"topology_updates": len(self.churn),
                "regrown_total": sum(c["regrown"] for u in self.churn for c in u["layers"].values())}


class RigL(SET):
    """SET with regrowth where the dense gradient is largest and a cosine-decaying drop fraction. The dense
    gradient is collected only in the backward pass of an update step."""

    default_drop = CosineDecay

    def on_step_start(self) -> None:
        if self.is_update():
            self._grads = {}
            sp.track_dense_grads(self.model, self._grads)

    def before_optimizer_step(self) -> None:
        if self.is_update():
            sp.track_dense_grads(self.model, None)
            distributed.average_(list(self._grads.values()))  # under torchrun: every rank grows the same weights
        super().before_optimizer_step()

    def grow_scores(self, index: int, name: str, mask: torch.Tensor) -> torch.Tensor:
        return self._grads[name].abs()


class GraNet(RigL):
    """RigL regrowth on top of gradual magnitude pruning: a random start at `pruning.initial` sparsity, masks
    tightened along the cubic `pruning` schedule by `criterion` scores with `prune_allocation`."""

    overridable = ()  # its pruning schedule tightens every layer toward the one target

    def __init__(self, sparsity: float, *, pruning: Cubic = Cubic(initial=0.5), criterion: str = "magnitude",
                 prune_allocation: str = "erk", **kwargs):
        super().__init__(sparsity, **kwargs)
        self.pruning, self.criterion, self.prune_allocation = pruning, criterion, prune_allocation

    @classmethod
    def from_config(cls, cfg: Config) -> GraNet:
        s, g = cfg.sparsity, cfg.gmp
        return super().from_config(cfg, pruning=Cubic(g.initial_sparsity, g.start, g.end, g.frequency),
                                   criterion=s.criterion, prune_allocation=s.allocation)

    def start_sparsity(self) -> float:
        return self.pruning.initial

    def on_step_start(self) -> None:
        if self.step_count in self.pruning.update_steps(self.steps):
            prune_to(self, self.pruning.at(self.step_count, self.steps, self.sparsity), self.criterion,
                     self.prune_allocation)
        super().on_step_start()
