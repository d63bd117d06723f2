"""A stage: one resumable Trainer run in its own directory, and what every method is built from.

`fit` adds the callbacks every stage needs (the sparsity binding and checks when the model has masks, the
drop-path ramp when configured) and returns the model in its final state, also when the stage had finished
in an earlier run and was skipped. `MethodContext` is what a method receives: config, a seeded model
builder, loaders and where to write.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch.nn as nn

from .. import sparsity as sp
from ..config import Config, TrainConfig
from ..data import TensorLoader
from ..train import Callback, DropPathSchedule, MetricsLog, SparsityCallback, Trainer, load_checkpoint
from .base import MethodCallback, SparseMethod
from .checks import check_config


@dataclasses.dataclass
class StageResult:
    model: nn.Module  # in its final state
    summary: dict  # the stage's summary.json
    out_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoints" / "last.ckpt"


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


@dataclasses.dataclass
class MethodContext:
    cfg: Config
    build: Callable[..., nn.Module]  # the configured model, seeded: the same initial weights on every call
    train_loader: TensorLoader
    eval_loader: TensorLoader | None
    out_dir: Path  # this method's directory
    run_dir: Path  # holds metrics.jsonl; stage names are paths relative to it
    pretrain_dir: Path | None = None  # the dense training train-then-prune methods start from (default out_dir/pretrain)
    show_progress: bool = True
    data_seed: int | None = None  # the seed the data (subset) was drawn with, for trials that reload it (default cfg.seed)
    # where metric lines go (default run_dir/metrics.jsonl). Trials that may run in parallel need a file of their own:
    # a resumed stage truncates its file to the checkpoint's offset, which assumes one writer
    metrics_file: Path | None = None

    def __post_init__(self):
        check_config(self.cfg)

    def fit(self, model: nn.Module, out_dir: Path, cfg: TrainConfig, **kwargs) -> StageResult:
        metrics = MetricsLog(self.metrics_path, stage=out_dir.relative_to(self.run_dir).as_posix())
        return fit(model, out_dir, cfg, self.train_loader, self.eval_loader, metrics, show_progress=self.show_progress,
                   **kwargs)

    @property
    def metrics_path(self) -> Path:
        return self.metrics_file or self.run_dir / "metrics.jsonl"

    def train(self, method: SparseMethod, model: nn.Module, out_dir: Path | None = None,
              cfg: TrainConfig | None = None) -> StageResult:
        """One stage of `model` trained with `method`, which attaches its masks first (the Trainer resumes
        into them)."""
        method.attach(model)
        return self.fit(model, out_dir or self.out_dir, cfg or self.cfg.train, callbacks=[MethodCallback(method)])

    def pretrain(self) -> StageResult:
        """The dense training (`train.*`). Methods that share `pretrain_dir` share one run of it."""
        return self.fit(self.build(), self.pretrain_dir or self.out_dir / "pretrain", self.cfg.train)

    def from_pretrained(self) -> nn.Module:
        """A fresh model holding the dense training's final weights."""
        model = self.build()
        model.load_state_dict(self.pretrain().model.state_dict())
        return model

    def stage_cfg(self, epochs: int, lr: float) -> TrainConfig:
        return self.cfg.train.stage(epochs, lr)
