"""Stages over a run directory: config -> stages -> `runs/<name>/`. Each stage reads only what earlier
stages wrote there, so any stage can be re-run or resumed."""

from __future__ import annotations

import json
import random
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..config import Config, ConfigError
from ..data import Dataset, build_loaders, dataset_from_config
from ..methods import density_map, run_hydra
from ..models import build_model
from ..sparsity import find_layers, sparsify
from ..train import DropPathSchedule, MetricsLog, SparsityCallback, Trainer, prepare_run_dir, resolve_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_builder(cfg: Config, ds: Dataset, **overrides: Any) -> Callable[[], nn.Module]:
    """A function that builds the configured model (kwargs updated by `overrides`), seeded: same init every call."""
    kwargs: dict[str, Any] = {**cfg.model.kwargs, **overrides}
    if cfg.model.name == "mlp":
        kwargs.setdefault("image_size", ds.image_size[0])

    def build() -> nn.Module:
        seed_everything(cfg.seed)
        return build_model(cfg.model.name, num_classes=ds.num_classes, in_channels=ds.in_channels, **kwargs)

    return build


def build_for(cfg: Config):
    """Dataset, model and loaders as the config describes them (no side effects on disk)."""
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    model = model_builder(cfg, ds)()
    train_loader, test_loader = build_loaders(ds, cfg.data, cfg.seed, device=resolve_device(cfg.train.device))
    return ds, model, train_loader, test_loader


def run_train(cfg: Config, show_progress: bool = True) -> dict[str, Any]:
    """`sparsearch train`: dense training, static sparse training (`sparsity.sparsity > 0`), or the HYDRA
    pipeline (`sparsity.method: hydra`)."""
    ds, model, train_loader, test_loader = build_for(cfg)
    run_dir = prepare_run_dir(cfg)
    s = cfg.sparsity
    if s.method == "hydra" and s.sparsity > 0:
        if s.kind != "unstructured":
            raise ConfigError("sparsity.method hydra supports sparsity.kind unstructured only")
        densities = density_map(find_layers(model, s.include, s.exclude, s.dense_first_last), s.sparsity, s.allocation)
        result = run_hydra(model_builder(cfg, ds), {s.sparsity: densities}, cfg.hydra, cfg.train, train_loader,
                           test_loader, run_dir / "train" / "hydra", run_dir / "metrics.jsonl", run_dir, show_progress)
        summary, out_dir = dict(result.finetune[s.sparsity].summary), result.finetune[s.sparsity].out_dir
    else:
        callbacks = [DropPathSchedule(cfg.train.drop_path)] if cfg.train.drop_path else []
        if s.sparsity > 0:
            sparsify(model, s)
            callbacks.append(SparsityCallback(check=cfg.train.check_sparsity))
        variant = "dense" if s.sparsity == 0 else f"static-{s.sparsity:g}"
        out_dir = run_dir / "train" / variant
        metrics = MetricsLog(run_dir / "metrics.jsonl", stage=f"train/{variant}")
        trainer = Trainer(model, train_loader, test_loader, cfg.train, out_dir, callbacks=callbacks,
                          metrics=metrics, show_progress=show_progress)
        summary = trainer.fit()
    summary.update(dataset=ds.name, model=cfg.model.name, run_dir=str(run_dir), out_dir=str(out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
