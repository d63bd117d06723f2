"""What a recipe receives: the config, a seeded model builder, the loaders and where to write; and the stages it
runs with them (`train`: one stage with a method object; `pretrain`: the dense training that train-then-prune
recipes share)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch.nn as nn

from ..config import Config, TrainConfig
from ..data import TensorLoader
from ..methods import MethodCallback, SparseMethod
from ..train import MetricsLog, StageResult, fit
from .checks import check_config


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
