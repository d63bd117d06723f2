"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    level-0/            dense training; the weights at step `imp.rewind_step` are kept in rewind.ckpt
    level-<L>/          global magnitude pruning of level L-1's final weights to density max(1 - s, (1 - f)^L),
                        survivors rewound to rewind.ckpt, the whole schedule trained again
    branch-reinit/      controls at the last level's masks: a fresh random initialisation instead of the
    branch-random_mask/ rewound weights; or random masks at the same per-layer densities, rewound weights

Each level and branch is its own resumable stage, so a re-run skips finished levels.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Callable

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..train import Callback, load_checkpoint, save_checkpoint
from .checks import unstructured
from .registry import LAYERS, MethodSpec, register
from .stage import MethodContext, StageResult


def level_densities(target_sparsity: float, prune_fraction: float) -> list[float]:
    """Densities of levels 1..L: each removes `prune_fraction` of the remaining weights; the last hits the target."""
    levels = math.ceil(math.log(1 - target_sparsity) / math.log(1 - prune_fraction) - 1e-9)
    return [max(1 - target_sparsity, (1 - prune_fraction) ** level) for level in range(1, levels + 1)]


class KeepRewindPoint(Callback):
    """Saves the model's weights once, at the start of step `step` (0: the initialisation)."""

    def __init__(self, step: int, path):
        self.step, self.path = step, path

    def on_batch_start(self, trainer) -> None:
        if trainer.step == self.step and not self.path.exists() and distributed.is_main():
            save_checkpoint(self.path, {"model": trainer.model.state_dict()})


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


def imp(ctx: MethodContext) -> StageResult:
    cfg, s, p = ctx.cfg, ctx.cfg.sparsity, ctx.cfg.imp
    rewind_path = ctx.out_dir / "level-0" / "rewind.ckpt"
    method = IMP(s.sparsity, prune_fraction=p.prune_fraction, include=s.include, exclude=s.exclude,
                 dense_first_last=s.dense_first_last)
    stages: list[StageResult] = []
    history = []

    def train(model: nn.Module, level: int) -> nn.Module:
        keep = [KeepRewindPoint(p.rewind_step, rewind_path)] if level == 0 else None
        stages.append(ctx.fit(model, ctx.out_dir / f"level-{level}", cfg.train, callbacks=keep))
        if not rewind_path.exists():
            raise sp.SparsityError(f"imp.rewind_step {p.rewind_step} lies beyond the {stages[0].summary['steps']} "
                                   "training steps")
        density = ([1.0] + method.densities())[level]
        history.append({"level": level, "density": density, "test_acc": stages[-1].summary["final_test_acc"]})
        return stages[-1].model

    method.run(ctx.build(), train, rewind=lambda: load_checkpoint(rewind_path)["model"])
    current = stages[-1]
    final_masks = sp.current_masks(current.model)
    densities = {n: float(m.float().mean()) for n, m in final_masks.items()}
    for branch in p.branches:
        if branch == "reinit":  # same masks, a different initialisation
            model = ctx.build(seed=cfg.seed + 7919)
            sp.attach(model, final_masks)
        else:  # same per-layer densities, random positions, the rewound weights
            gen = torch.Generator().manual_seed(cfg.seed + 104729)
            masks = {n: sp.select(torch.rand(m.shape, generator=gen), densities[n], sp.Unstructured())
                     for n, m in final_masks.items()}
            model = rewound(ctx.build(), load_checkpoint(rewind_path)["model"], masks, densities)
        result = ctx.fit(model, ctx.out_dir / f"branch-{branch}", cfg.train)
        history.append({"branch": branch, "density": history[-1]["density"], "test_acc": result.summary["final_test_acc"]})
    if distributed.is_main():
        (ctx.out_dir / "levels.json").write_text(json.dumps(history, indent=2))
    return current


def _check(cfg) -> None:
    if not 0 < cfg.imp.prune_fraction < 1 or cfg.imp.rewind_step < 0:
        raise sp.SparsityError("imp needs 0 < imp.prune_fraction < 1 and imp.rewind_step >= 0")


register(MethodSpec("imp", imp, "iterative magnitude pruning with rewinding (lottery tickets), optional control branches",
                    sections=("imp",), checks=(unstructured, _check), reads=LAYERS))
