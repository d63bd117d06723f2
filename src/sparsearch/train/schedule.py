"""Optimisers and learning-rate schedules. A schedule is a pure function of the global step, so
resuming needs only the step count."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..config import TrainConfig


def build_optimizer(params: Iterable, cfg: TrainConfig) -> torch.optim.Optimizer:
    """`params` may be parameters or param-group dicts; a group's `lr_scale` multiplies the schedule's lr."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate for `step` (0-based): linear warm-up, then cosine / constant / step decay."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    passed = sum(progress >= m for m in cfg.step_milestones)
    return cfg.lr * cfg.step_gamma**passed


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
