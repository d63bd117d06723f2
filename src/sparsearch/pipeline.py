"""Stages over a run directory: config -> stages -> `runs/<name>/`. Each stage reads only what earlier
stages wrote there, so any stage can be re-run or resumed."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import torch

from .config import Config
from .data import build_loaders, dataset_from_config
from .models import build_model
from .sparsity import sparsify
from .train import MetricsLog, SparsityCallback, Trainer, prepare_run_dir, resolve_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_for(cfg: Config):
    """Dataset, model and loaders as the config describes them (no side effects on disk)."""
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    seed_everything(cfg.seed)
    kwargs: dict[str, Any] = dict(cfg.model.kwargs)
    if cfg.model.name == "mlp":
        kwargs.setdefault("image_size", ds.image_size[0])
    model = build_model(cfg.model.name, num_classes=ds.num_classes, in_channels=ds.in_channels, **kwargs)
    train_loader, test_loader = build_loaders(ds, cfg.data, cfg.seed, device=resolve_device(cfg.train.device))
    return ds, model, train_loader, test_loader


def run_train(cfg: Config, show_progress: bool = True) -> dict[str, Any]:
    """`sparsearch train`: dense training, or static sparse training when `sparsity.sparsity > 0`."""
    ds, model, train_loader, test_loader = build_for(cfg)
    callbacks = []
    if cfg.sparsity.sparsity > 0:
        sparsify(model, cfg.sparsity)
        callbacks.append(SparsityCallback(check=cfg.train.check_sparsity))
    run_dir = prepare_run_dir(cfg)
    variant = "dense" if cfg.sparsity.sparsity == 0 else f"static-{cfg.sparsity.sparsity:g}"
    out_dir = run_dir / "train" / variant
    metrics = MetricsLog(run_dir / "metrics.jsonl", stage=f"train/{variant}")
    trainer = Trainer(model, train_loader, test_loader, cfg.train, out_dir, callbacks=callbacks,
                      metrics=metrics, show_progress=show_progress)
    summary = trainer.fit()
    summary.update(dataset=ds.name, model=cfg.model.name, run_dir=str(run_dir), out_dir=str(out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
