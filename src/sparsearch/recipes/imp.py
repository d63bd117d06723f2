"""The IMP recipe: the `IMP` driver with each level a resumable stage, rewinding to a step of the dense training.

    level-0/            dense training; the weights at step `imp.rewind_step` are kept in rewind.ckpt
    level-<L>/          global magnitude pruning of level L-1's final weights to density max(1 - s, (1 - f)^L),
                        survivors rewound to rewind.ckpt, the whole schedule trained again
    branch-reinit/      controls at the last level's masks: a fresh random initialisation instead of the
    branch-random_mask/ rewound weights; or random masks at the same per-layer densities, rewound weights

Each level and branch is its own resumable stage, so a re-run skips finished levels.
"""

from __future__ import annotations

import json

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..methods import IMP
from ..methods.imp import rewound
from ..train import Callback, StageResult, load_checkpoint, save_checkpoint
from .checks import unstructured
from .context import MethodContext
from .registry import LAYERS, MethodSpec, register


class KeepRewindPoint(Callback):
    """Saves the model's weights once, at the start of step `step` (0: the initialisation)."""

    def __init__(self, step: int, path):
        self.step, self.path = step, path

    def on_batch_start(self, trainer) -> None:
        if trainer.step == self.step and not self.path.exists() and distributed.is_main():
            save_checkpoint(self.path, {"model": trainer.model.state_dict()})


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
    return current.costing_too(*stages[:-1])  # every level, the dense level 0 too; the branches are controls


register(MethodSpec("imp", imp, "iterative magnitude pruning with rewinding (lottery tickets), optional control branches",
                    sections=("imp",), checks=(unstructured,), reads=LAYERS))
