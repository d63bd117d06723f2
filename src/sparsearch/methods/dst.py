"""Dynamic sparse training: SET (Mocanu et al. 2018), RigL (Evci et al. 2020) and GraNet (Liu et al. 2021).

Every `dst.update_every` steps until `dst.end` of training, each masked layer drops the fraction f(t) of its
active weights with the smallest magnitude and regrows as many at inactive positions: at random (SET) or
where the dense gradient is largest (RigL, GraNet). Regrown weights start at zero, and the layer's count of
active weights never changes, so the sparsity is exact after every update. GraNet adds gradual magnitude
pruning (the `gmp` schedule, global allocation) from a denser start underneath the regrowth.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import torch

from .. import distributed
from .. import sparsity as sp
from ..config import DSTConfig
from ..train import Callback
from .pruning import GradualMagnitudePruning
from .stage import MethodContext, StageResult


class DynamicSparsity(Callback):
    """Drop-and-regrow topology updates. Writes `churn.json` (dropped and regrown weights per layer and update)."""

    def __init__(self, grow: Literal["random", "gradient"], decay: Literal["constant", "cosine"], d: DSTConfig, seed: int = 0):
        self.grow, self.decay, self.d, self.seed = grow, decay, d, seed
        self.churn: list[dict[str, Any]] = []
        self._grads: dict[str, torch.Tensor] = {}

    def drop_fraction(self, step: int, total_steps: int) -> float:
        t_end = self.d.end * total_steps
        if step >= t_end:
            return 0.0
        if self.decay == "constant":
            return self.d.drop_fraction
        return self.d.drop_fraction / 2 * (1 + math.cos(math.pi * step / t_end))

    def is_update(self, trainer) -> bool:
        step = trainer.step
        return step > 0 and step % self.d.update_every == 0 and step < self.d.end * trainer.total_steps

    def on_batch_start(self, trainer) -> None:
        if self.grow == "gradient" and self.is_update(trainer):  # the dense gradient only on update steps
            self._grads = {}
            sp.track_dense_grads(trainer.model, self._grads)

    def on_before_optimizer_step(self, trainer) -> None:
        if not self.is_update(trainer):
            return
        sp.track_dense_grads(trainer.model, None)
        distributed.average_(list(self._grads.values()))  # under torchrun: every rank grows the same weights
        step, fraction = trainer.step, self.drop_fraction(trainer.step, trainer.total_steps)
        masks, churn = {}, {}
        current = sp.current_masks(trainer.model)
        for i, (name, module) in enumerate(sp.masked_layers(trainer.model).items()):
            mask = current[name]
            active = int(mask.sum())
            k = round(fraction * active)
            if k == 0:
                continue
            magnitude = sp.weight_param(module).detach().abs()
            keep = sp.topk_mask(torch.where(mask, magnitude, -math.inf), active - k)
            if self.grow == "gradient":
                score = self._grads[name].abs()
            else:  # a generator per (seed, step, layer): the same draw after a resume
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + i)
                score = torch.rand(mask.shape, generator=gen).to(mask.device)
            new = keep | sp.topk_mask(torch.where(keep, -math.inf, score), k)
            masks[name] = new
            churn[name] = {"dropped": int((mask & ~new).sum()), "regrown": int((new & ~mask).sum()), "active": active}
        self._grads = {}
        sp.update(trainer.model, masks, trainer.optimizer)  # counts unchanged: the densities stay exact
        self.churn.append({"step": step, "drop_fraction": fraction, "layers": churn})
        trainer.metrics.log({"kind": "dst", "step": step, "drop_fraction": round(fraction, 6),
                             "regrown": sum(c["regrown"] for c in churn.values())})

    def on_train_end(self, trainer) -> None:
        if distributed.is_main():
            (trainer.out_dir / "churn.json").write_text(json.dumps(self.churn))

    def state_dict(self) -> dict[str, Any]:
        return {"churn": self.churn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.churn = list(state["churn"])

    def summary(self) -> dict[str, Any]:
        return {"topology_updates": len(self.churn),
                "regrown_total": sum(c["regrown"] for u in self.churn for c in u["layers"].values())}


def _sparse_start(ctx: MethodContext, sparsity: float):
    """The configured model with random masks at `sparsity` (the configured allocation) on the selected layers."""
    s = ctx.cfg.sparsity
    model = ctx.build()
    layers = sp.find_layers(model, s.include, s.exclude, s.dense_first_last)
    masks, densities = sp.compute_masks(model, layers, sparsity, "random", s.allocation, seed=ctx.cfg.seed)
    sp.attach(model, masks, densities=densities)
    return model, layers


def set_(ctx: MethodContext) -> StageResult:
    """SET: random sparse start, magnitude drop, random regrowth at a constant fraction."""
    model, _ = _sparse_start(ctx, ctx.cfg.sparsity.sparsity)
    return ctx.fit(model, ctx.out_dir, ctx.cfg.train,
                   callbacks=[DynamicSparsity("random", "constant", ctx.cfg.dst, ctx.cfg.seed)])


def rigl(ctx: MethodContext) -> StageResult:
    """RigL: random sparse start (ERK by default), magnitude drop, dense-gradient regrowth, cosine-decaying fraction."""
    model, _ = _sparse_start(ctx, ctx.cfg.sparsity.sparsity)
    return ctx.fit(model, ctx.out_dir, ctx.cfg.train,
                   callbacks=[DynamicSparsity("gradient", "cosine", ctx.cfg.dst, ctx.cfg.seed)])


def granet(ctx: MethodContext) -> StageResult:
    """GraNet: gradual magnitude pruning (the `gmp` schedule) from `gmp.initial_sparsity` towards the target, with
    RigL regrowth at every topology update (zero-cost neuroregeneration)."""
    s, g = ctx.cfg.sparsity, ctx.cfg.gmp
    model, layers = _sparse_start(ctx, g.initial_sparsity)
    return ctx.fit(model, ctx.out_dir, ctx.cfg.train, callbacks=[
        GradualMagnitudePruning(list(layers), s, g), DynamicSparsity("gradient", "cosine", ctx.cfg.dst, ctx.cfg.seed)])
