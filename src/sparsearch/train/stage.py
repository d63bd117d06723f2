"""A stage: one resumable Trainer run in its own directory, what every recipe is built from.

`fit` adds the callbacks every stage needs (the sparsity binding and checks when the model has masks, the
drop-path ramp when configured) and returns the model in its final state, also when the stage had finished
in an earlier run and was skipped. `train_stage` runs a stage in one of the three structures that learned masks
train in (HYDRA's pretrain, prune and finetune, which the DASS search runs on its supernet too):

    pretrain  dense weights
    prune     learned-score masks at the target densities (scaled score init from the pretrained weights);
              the scores train, the masked weights are frozen (BN and biases still train)
    finetune  the masks are fixed at the scores' top-k; the surviving weights train
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Literal

import torch.nn as nn

from .. import sparsity as sp
from ..config import TrainConfig
from ..data import TensorLoader
from .callbacks import DropPathSchedule, SparsityCallback
from .checkpoint import load_checkpoint
from .metrics import MetricsLog
from .trainer import Callback, Trainer

StageKind = Literal["pretrain", "prune", "finetune"]
STAGES: tuple[StageKind, ...] = ("pretrain", "prune", "finetune")


@dataclasses.dataclass
class StageResult:
    model: nn.Module  # in its final state
    summary: dict  # the stage's summary.json
    out_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoints" / "last.ckpt"

    def costing_too(self, *earlier: StageResult) -> StageResult:
        """This stage, its `train_seconds` the cost of the `earlier` stages too: a trial's cost is every stage it
        trained itself (a HYDRA trial's prune stage beside its finetuning), not only its last."""
        seconds = self.summary["train_seconds"] + sum(e.summary["train_seconds"] for e in earlier)
        return dataclasses.replace(self, summary={**self.summary, "train_seconds": round(seconds, 3)})


def fit(model: nn.Module, out_dir: Path, cfg: TrainConfig, train_loader: TensorLoader, eval_loader: TensorLoader | None,
        metrics: MetricsLog, *, callbacks: list[Callback] | None = None, params: list[nn.Parameter] | None = None,
        show_progress: bool = True) -> StageResult:
    """Train `model` (only `params` when given) as one stage; skipped when `out_dir` holds a finished run."""
    extra = list(callbacks or [])
    if sp.masked_layers(model):
        extra.append(SparsityCallback(check=cfg.check_sparsity))
    if cfg.drop_path:
        extra.append(DropPathSchedule(cfg.drop_path))
    groups = [{"params": params}] if params is not None else None
    trainer = Trainer(model, train_loader, eval_loader, cfg, out_dir, callbacks=extra, param_groups=groups,
                      metrics=metrics, show_progress=show_progress)
    summary = trainer.fit()
    # a stage finished in an earlier run returns at once: take its final state from the checkpoint
    model.load_state_dict(load_checkpoint(trainer.checkpoint_path, map_location=trainer.device)["model"])
    return StageResult(model, summary, trainer.out_dir)


def stage_model(build: Callable[[], nn.Module], kind: StageKind, densities: dict[str, float],
                source: Path | None = None) -> nn.Module:
    """A fresh model in the structure stage `kind` trains, holding the state of the checkpoint `source`."""
    model = build()
    if kind == "pretrain":
        if source is not None:
            model.load_state_dict(load_checkpoint(source)["model"])
        return model
    if source is None:
        raise ValueError(f"the {kind} stage starts from a previous stage's checkpoint")
    state = load_checkpoint(source)["model"]
    if kind == "prune":  # dense weights first: the scaled score init reads them
        model.load_state_dict(state)
        sp.attach_learned(model, densities)
    else:  # finetune: the trained scores decide the fixed masks
        sp.attach_learned(model, densities)
        model.load_state_dict(state)
        sp.freeze(model)
    return model


def stage_parameters(model: nn.Module, kind: StageKind, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """What the stage's optimiser steps: in prune, everything but the masked weights (scores, BN, biases)."""
    if kind != "prune":
        return params
    masked = {id(sp.weight_param(m)) for m in sp.masked_layers(model).values()}
    for p in params:
        p.requires_grad_(id(p) not in masked)
    return [p for p in params if p.requires_grad]


def train_stage(build: Callable[[], nn.Module], kind: StageKind, densities: dict[str, float], source: Path | None,
                out_dir: Path, cfg: TrainConfig, train_loader: TensorLoader, eval_loader: TensorLoader | None,
                metrics: MetricsLog, *, parameters: Callable[[nn.Module], list[nn.Parameter]] | None = None,
                callbacks: Callable[[nn.Module, list[nn.Parameter]], list[Callback]] | None = None,
                show_progress: bool = True) -> StageResult:
    """Run one stage (skipped when finished before) and return the model holding its final state.
    `parameters(model)` picks the trainable set (default: all); `callbacks(model, params)` adds callbacks."""
    model = stage_model(build, kind, densities, source)
    params = stage_parameters(model, kind, parameters(model) if parameters else list(model.parameters()))
    extra = callbacks(model, params) if callbacks else []
    return fit(model, out_dir, cfg, train_loader, eval_loader, metrics, callbacks=extra, params=params,
               show_progress=show_progress)
