"""Masks-from-weights recipes: dense, static (masks at initialisation), one-shot and gradual magnitude pruning."""

from __future__ import annotations

import itertools

from .. import sparsity as sp
from ..config import GMPConfig, SparsityConfig
from ..train import Callback
from .stage import MethodContext, StageResult


def dense(ctx: MethodContext) -> StageResult:
    """The baseline: the dense training itself (shared with the train-then-prune methods in comparisons)."""
    return ctx.pretrain()


def static(ctx: MethodContext) -> StageResult:
    """Sparse from initialisation with a fixed mask: random (uniform / ER / ERK allocation), SNIP, magnitude or LAMP
    scores of the initial weights."""
    s = ctx.cfg.sparsity
    model = ctx.build()
    batches = list(itertools.islice(ctx.train_loader.batches(), s.snip_batches)) if s.criterion == "snip" else None
    sp.sparsify(model, s, seed=ctx.cfg.seed, batches=batches)
    return ctx.fit(model, ctx.out_dir, ctx.cfg.train)


def oneshot(ctx: MethodContext) -> StageResult:
    """Train dense, prune once to the target (magnitude or LAMP scores; layer-wise or global allocation), finetune."""
    s, o = ctx.cfg.sparsity, ctx.cfg.oneshot
    model = ctx.from_pretrained()
    sp.sparsify(model, s, seed=ctx.cfg.seed)
    return ctx.fit(model, ctx.out_dir / "finetune", ctx.stage_cfg(o.finetune_epochs, o.finetune_lr))


def cubic_sparsity(step: int, total_steps: int, target: float, g: GMPConfig) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3, held at s_i before t0 and s_f after."""
    t0, t_end = round(g.start * total_steps), round(g.end * total_steps)
    if step < t0:
        return g.initial_sparsity
    if step >= t_end or t_end <= t0:
        return target
    return target + (g.initial_sparsity - target) * (1 - (step - t0) / (t_end - t0)) ** 3


class GradualMagnitudePruning(Callback):
    """Tightens the masks along the cubic schedule every `frequency` steps (the last update lands on `end`).
    Scores are taken on the masked weights, so a pruned weight never returns. The masks live in the model's
    state and the update steps are a function of the step count, so resuming needs no state of its own."""

    def __init__(self, layers: list[str], s: SparsityConfig, g: GMPConfig):
        self.layers, self.s, self.g = layers, s, g
        self.steps: set[int] = set()

    def update_steps(self, total_steps: int) -> list[int]:
        t0, t_end = round(self.g.start * total_steps), round(self.g.end * total_steps)
        n = max(1, round((t_end - t0) / self.g.frequency))
        return sorted({t0 + round(k * (t_end - t0) / n) for k in range(n + 1)})

    def on_train_start(self, trainer) -> None:
        self.steps = set(self.update_steps(trainer.total_steps))

    def on_batch_start(self, trainer) -> None:
        if trainer.step not in self.steps:
            return
        target = cubic_sparsity(trainer.step, trainer.total_steps, self.s.sparsity, self.g)
        modules = dict(trainer.model.named_modules())
        layers = {name: modules[name] for name in self.layers}
        masks, densities = sp.compute_masks(trainer.model, layers, target, self.s.criterion, self.s.allocation, self.s.kind)
        sp.update(trainer.model, masks, trainer.optimizer, densities)
        trainer.metrics.log({"kind": "prune", "step": trainer.step, "target_sparsity": round(target, 6)})


def gmp(ctx: MethodContext) -> StageResult:
    """Gradual magnitude pruning during one training run (Zhu & Gupta 2017)."""
    s, g = ctx.cfg.sparsity, ctx.cfg.gmp
    model = ctx.build()
    layers = sp.find_layers(model, s.include, s.exclude, s.dense_first_last)
    sp.attach(model, {n: m.weight.new_ones(m.weight.shape, dtype=bool) for n, m in layers.items()},
              densities={n: 1.0 for n in layers})
    return ctx.fit(model, ctx.out_dir, ctx.cfg.train, callbacks=[GradualMagnitudePruning(list(layers), s, g)])
