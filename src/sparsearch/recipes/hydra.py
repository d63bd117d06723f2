"""The HYDRA recipe (Sehwag et al., NeurIPS 2020): the three stages of `train.stage` (pretrain, prune with learned
scores, finetune with the masks fixed), each a resumable Trainer run that starts from the checkpoint of the stage
before; the dense pretraining is shared between sparsities (and with the other train-then-prune recipes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch.nn as nn

from .. import sparsity as sp
from ..config import HydraConfig, TrainConfig
from ..data import TensorLoader
from ..methods import density_map
from ..train import MetricsLog, StageKind, StageResult, train_stage
from .checks import per_layer_allocation, unstructured
from .context import MethodContext
from .registry import MethodSpec, register


@dataclasses.dataclass
class HydraResult:
    pretrain: StageResult
    prune: dict[float, StageResult]  # by sparsity
    finetune: dict[float, StageResult]


def run_hydra(build: Callable[[], nn.Module], densities: dict[float, dict[str, float]], hydra: HydraConfig,
              cfg: TrainConfig, train_loader: TensorLoader, eval_loader: TensorLoader | None, out_dir: Path,
              metrics_path: Path, run_dir: Path, show_progress: bool = True, pretrain_dir: Path | None = None) -> HydraResult:
    """The HYDRA pipeline at each sparsity in `densities` (sparsity -> per-layer densities). The dense
    pretrain is shared: `pretrain_dir` (default `out_dir/pretrain/`), then `out_dir/sparsity-<s>/{prune,finetune}/`.
    """

    def stage(kind: StageKind, d: dict[str, float], source: Path | None, where: Path, epochs: int, lr: float):
        metrics = MetricsLog(metrics_path, stage=where.relative_to(run_dir).as_posix())
        return train_stage(build, kind, d, source, where, cfg.stage(epochs, lr),
                           train_loader, eval_loader, metrics, show_progress=show_progress)

    result = HydraResult(stage("pretrain", {}, None, pretrain_dir or out_dir / "pretrain", cfg.epochs, cfg.lr), {}, {})
    for sparsity, d in densities.items():
        where = out_dir / f"sparsity-{sparsity:g}"
        result.prune[sparsity] = stage("prune", d, result.pretrain.checkpoint, where / "prune", hydra.prune_epochs,
                                       hydra.score_lr)
        result.finetune[sparsity] = stage("finetune", d, result.prune[sparsity].checkpoint, where / "finetune",
                                          hydra.finetune_epochs, hydra.finetune_lr)
    return result


def hydra(ctx: MethodContext) -> StageResult:
    """`sparsity.method: hydra` on any model: the configured allocation at `sparsity.sparsity`."""
    s = ctx.cfg.sparsity
    densities = density_map(sp.configured_layers(ctx.build(), s), s.sparsity, s.allocation)
    result = run_hydra(ctx.build, {s.sparsity: densities}, ctx.cfg.hydra, ctx.cfg.train, ctx.train_loader, ctx.eval_loader,
                       ctx.out_dir, ctx.metrics_path, ctx.run_dir, ctx.show_progress, ctx.pretrain_dir)
    return result.finetune[s.sparsity].costing_too(result.prune[s.sparsity])  # the dense one is a trial of its own


register(MethodSpec("hydra", hydra, "HYDRA: train dense, learn importance scores with the weights frozen, finetune",
                    sections=("hydra",), checks=(unstructured, per_layer_allocation), starts_from_dense=True))
