"""HYDRA (Sehwag et al., NeurIPS 2020) as three stages of the one training loop:

    pretrain  dense weights
    prune     learned-score masks at the target densities (scaled score init from the pretrained weights);
              the scores train, the masked weights are frozen (BN and biases still train)
    finetune  the masks are fixed at the scores' top-k; the surviving weights train

DASS runs the same three stages inside its supernet, so `search` builds on `train_stage` too. Each stage
is a resumable Trainer run in its own directory; a stage starts from the checkpoint of the stage before.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Literal

import torch.nn as nn

from .. import sparsity as sp
from ..config import HydraConfig, TrainConfig
from ..data import TensorLoader
from ..train import Callback, MetricsLog, load_checkpoint
from .base import SparseMethod
from .checks import per_layer_allocation, unstructured
from .registry import MethodSpec, register
from .stage import MethodContext, StageResult, fit

StageKind = Literal["pretrain", "prune", "finetune"]
STAGES: tuple[StageKind, ...] = ("pretrain", "prune", "finetune")


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


class Hydra(SparseMethod):
    """HYDRA on a (pretrained) model in two phases. `prepare(model)` attaches importance scores at the per-layer
    densities of `allocation` (initialised from the scaled weights) and freezes the masked weights, so an
    optimizer over `trainable()` trains the scores (and BatchNorm, biases); `finetune(optimizer)` fixes each
    mask at its scores' top-k, lets the surviving weights train again and binds `optimizer` to the masks."""

    def __init__(self, sparsity: float, *, allocation: str = "erk", **common):
        super().__init__(sparsity, **common)
        self.allocation = allocation

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        sp.attach_learned(model, density_map(self.layers, self.sparsity, self.allocation))
        self.params = stage_parameters(model, "prune", list(model.parameters()))

    def trainable(self) -> list[nn.Parameter]:
        return self.params

    def finetune(self, optimizer=None) -> None:
        sp.freeze(self.model)
        for module in sp.masked_layers(self.model).values():
            sp.weight_param(module).requires_grad_(True)
        if optimizer is not None:
            self.optimizer = optimizer
            sp.bind_optimizer(self.model, optimizer)


@dataclasses.dataclass
class HydraResult:
    pretrain: StageResult
    prune: dict[float, StageResult]  # by sparsity
    finetune: dict[float, StageResult]


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


def density_map(layers: dict[str, nn.Module], sparsity: float, allocation: str) -> dict[str, float]:
    """Per-layer densities for learned masks at overall `sparsity` (global allocation is not defined for HYDRA)."""
    if allocation == "global":
        raise sp.SparsityError("HYDRA needs a per-layer allocation (uniform, er or erk), not global")
    return sp.allocate({n: m.weight.shape for n, m in layers.items()}, sparsity, allocation)


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
    return result.finetune[s.sparsity]


__all__ = ["STAGES", "Hydra", "HydraResult", "density_map", "hydra", "run_hydra", "stage_model", "stage_parameters", "train_stage"]


register(MethodSpec("hydra", hydra, "HYDRA: train dense, learn importance scores with the weights frozen, finetune",
                    sections=("hydra",), checks=(unstructured, per_layer_allocation), starts_from_dense=True))
