"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    level-0/            dense training; the weights at step `imp.rewind_step` are kept in rewind.ckpt
    level-<L>/          global magnitude pruning of level L-1's final weights to density max(1 - s, (1 - f)^L),
                        survivors rewound to rewind.ckpt, the whole schedule trained again
    branch-reinit/      controls at the last level's masks: a fresh random initialisation instead of the
    branch-random_mask/ rewound weights; or random masks at the same per-layer densities, rewound weights

Each level and branch is its own resumable stage, so a re-run skips finished levels.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..train import Callback, load_checkpoint, save_checkpoint
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


def _rewound(ctx: MethodContext, rewind_path, masks: dict, densities: dict | None, seed: int | None = None) -> nn.Module:
    model = ctx.build(seed=seed) if seed is not None else ctx.build()
    if seed is None:
        model.load_state_dict(load_checkpoint(rewind_path)["model"])
    sp.attach(model, masks, densities=densities)
    return model


def imp(ctx: MethodContext) -> StageResult:
    cfg, s, p = ctx.cfg, ctx.cfg.sparsity, ctx.cfg.imp
    rewind_path = ctx.out_dir / "level-0" / "rewind.ckpt"
    model = ctx.build()
    current = ctx.fit(model, ctx.out_dir / "level-0", cfg.train, callbacks=[KeepRewindPoint(p.rewind_step, rewind_path)])
    if not rewind_path.exists():
        raise sp.SparsityError(f"imp.rewind_step {p.rewind_step} lies beyond the {current.summary['steps']} training steps")
    history = [{"level": 0, "density": 1.0, "test_acc": current.summary["final_test_acc"]}]
    for level, density in enumerate(level_densities(s.sparsity, p.prune_fraction), 1):
        layers = sp.find_layers(current.model, s.include, s.exclude, s.dense_first_last)
        masks, _ = sp.compute_masks(current.model, layers, 1 - density, "magnitude", "global")
        current = ctx.fit(_rewound(ctx, rewind_path, masks, None), ctx.out_dir / f"level-{level}", cfg.train)
        history.append({"level": level, "density": density, "test_acc": current.summary["final_test_acc"]})
    final_masks = sp.current_masks(current.model)
    densities = {n: float(m.float().mean()) for n, m in final_masks.items()}
    for branch in p.branches:
        if branch == "reinit":  # same masks, a different initialisation
            model = _rewound(ctx, rewind_path, final_masks, None, seed=cfg.seed + 7919)
        else:  # same per-layer densities, random positions, the rewound weights
            gen = torch.Generator().manual_seed(cfg.seed + 104729)
            masks = {n: sp.select(torch.rand(m.shape, generator=gen), densities[n], sp.Unstructured())
                     for n, m in final_masks.items()}
            model = _rewound(ctx, rewind_path, masks, densities)
        result = ctx.fit(model, ctx.out_dir / f"branch-{branch}", cfg.train)
        history.append({"branch": branch, "density": history[-1]["density"], "test_acc": result.summary["final_test_acc"]})
    if distributed.is_main():
        (ctx.out_dir / "levels.json").write_text(json.dumps(history, indent=2))
    return current
