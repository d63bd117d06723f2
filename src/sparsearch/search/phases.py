"""DASS and DARTS searches as phases of the one training loop.

DASS (Mousavi et al.): (1) pretrain: dense weights, alpha updated; (2) prune: learned-score masks at the
target sparsity on every parametric layer (scaled score init), scores trained with weights frozen, alpha
updated on the masked supernet; (3) finetune: masks fixed, surviving weights trained, alpha updated.
DARTS: the same supernet dense, one phase with the same total number of epochs.

The three DASS phases are the HYDRA stages (`train.stage`) run on the supernet with an architect callback.
Each phase is a resumable Trainer run under `<search dir>/<phase>/`; a finished phase is skipped, and the
next one starts from the previous phase's final state. Outputs: `genotype.json`, `alphas.jsonl`
(softmax(alpha) and the derived genotype per epoch), `alphas.png` (heatmap), `cell_normal.png` and
`cell_reduce.png` (diagrams), and per-epoch genotype diagnostics in `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import distributed
from .. import sparsity as sp
from ..config import Config, SearchConfig
from ..data import Dataset, TensorLoader, build_loaders, dataset_from_config, split_train
from ..errors import SparsearchError
from ..files import write_json
from ..models.genotypes import Genotype
from ..train import STAGES, Callback, MetricsLog, StageKind, Trainer, autocast, claim_run_dir, resolve_device, train_stage
from .architect import Architect
from .supernet import SuperNet
from .verdict import normalised_entropy, search_verdict

log = logging.getLogger(__name__)


class ArchitectCallback(Callback):
    """Before every weight step: one alpha step on the next validation batch. Logs alpha and the derived
    genotype after every epoch and warns when the normal cell collapses to parameter-free operations."""

    def __init__(self, architect: Architect, val_loader: TensorLoader, trained: list[torch.nn.Parameter],
                 weight_decay: float, enabled: bool = True):
        self.architect, self.val_loader, self.trained = architect, val_loader, trained
        self.weight_decay, self.enabled = weight_decay, enabled

    def on_batch_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        self.val_loader.set_epoch(trainer.epoch)
        x, y = next(self.val_loader.batches(start=trainer.batch % len(self.val_loader)))
        cfg = trainer.cfg
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        xi = trainer.optimizer.param_groups[0]["lr"]
        with autocast(trainer.device.type, cfg.amp, cfg.amp_dtype):  # the weight step's precision
            self.architect.step(trainer.current_batch, (x, y), self.trained, xi, self.weight_decay)

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        model: SuperNet = trainer.model
        genotype = model.genotype()
        free = genotype.parameter_free_count("normal")
        normal, reduce = F.softmax(model.arch.normal, -1).tolist(), F.softmax(model.arch.reduce, -1).tolist()
        metrics.update(genotype=genotype.to_dict(), param_free_normal=free, alphas_normal=normal, alphas_reduce=reduce,
                       entropy_normal=normalised_entropy(normal), entropy_reduce=normalised_entropy(reduce))
        if free >= len(genotype.normal) - 1:
            log.warning("normal cell has %d of %d parameter-free operations: the search is collapsing to skip "
                        "connections and pooling", free, len(genotype.normal))

    def state_dict(self) -> dict[str, Any]:
        return self.architect.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.architect.load_state_dict(state)


def _phase_train_cfg(cfg: Config, epochs: int, lr: float):
    s, t = cfg.search, cfg.train
    nhwc = t.channels_last if t.channels_last is not None else resolve_device(t.device).type == "cpu"
    return t.stage(epochs, lr, momentum=s.momentum, weight_decay=s.weight_decay, schedule="cosine", min_lr=s.min_lr,
                   warmup_epochs=0.0, grad_clip=s.grad_clip, optimizer="sgd", drop_path=0.0, channels_last=nhwc)


def phases(s: SearchConfig) -> list[tuple[str, StageKind]]:
    """(directory, HYDRA stage kind) per phase; DARTS is one dense phase."""
    return [(k, k) for k in STAGES] if s.mode == "dass" else [("search", "pretrain")]


def phase_epochs(s: SearchConfig, phase: str) -> int:
    total = s.pretrain_epochs + s.prune_epochs + s.finetune_epochs
    return {"pretrain": s.pretrain_epochs, "prune": s.prune_epochs, "finetune": s.finetune_epochs, "search": total}[phase]


def search_loaders(cfg: Config, ds: Dataset) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """Weight batches (weight half), alpha batches (alpha half, augmented like weight batches), and the
    alpha half unaugmented for reporting accuracy. The test set is never looked at during search."""
    weight_half, arch_half = split_train(ds, cfg.search.portion, cfg.seed)
    device, stats = resolve_device(cfg.train.device), ds.channel_stats()
    data = dataclasses.replace(cfg.data, batch_size=cfg.search.batch_size or cfg.data.batch_size)
    train_loader, _ = build_loaders(weight_half, data, cfg.seed, device, stats)
    arch_as_test = dataclasses.replace(arch_half, test_x=arch_half.train_x, test_y=arch_half.train_y)
    val_loader, eval_loader = build_loaders(arch_as_test, data, cfg.seed + 1, device, stats)
    return train_loader, val_loader, eval_loader


def supernet_builder(cfg: Config, ds: Dataset):
    def build() -> SuperNet:
        torch.manual_seed(cfg.seed)
        return SuperNet(cfg.search.channels, cfg.search.layers, ds.num_classes, ds.in_channels)

    return build


def supernet_densities(net: SuperNet, sparsity: float) -> dict[str, float]:
    """DASS masks every parametric layer of the supernet, stem and classifier included, at one density."""
    return {n: 1 - sparsity for n in sp.find_layers(net, dense_first_last=False)}


def differentiable_search(cfg: Config, search_dir: Path, show_progress: bool = True,
                          metrics_file: Path | None = None) -> Genotype:
    """Run the configured search (DASS or DARTS) into `search_dir` (inside the prepared run directory), logging
    to `metrics_file` (default: the run's `metrics.jsonl`; a search running beside others needs its own)."""
    s = cfg.search
    metrics_file = metrics_file or cfg.run_dir / "metrics.jsonl"
    _check_target(s)
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    train_loader, val_loader, eval_loader = search_loaders(cfg, ds)
    build = supernet_builder(cfg, ds)
    densities = supernet_densities(build(), s.sparsity)
    run_dir, source, result, arch_steps = cfg.run_dir, None, None, 0
    for phase, kind in phases(s):
        def callbacks(net: SuperNet, params: list[torch.nn.Parameter], kind=kind) -> list[Callback]:
            architect = Architect(net, net.arch_parameters(), s.arch_lr, (0.5, 0.999), s.arch_weight_decay, s.second_order)
            return [ArchitectCallback(architect, val_loader, params, s.weight_decay,
                                      enabled=kind != "prune" or s.alpha_in_prune)]

        out = search_dir / phase
        lr = s.score_lr if kind == "prune" else s.weight_lr
        result = train_stage(build, kind, densities, source, out, _phase_train_cfg(cfg, phase_epochs(s, phase), lr),
                             train_loader, eval_loader, MetricsLog(metrics_file, out.relative_to(run_dir).as_posix()),
                             parameters=SuperNet.weight_parameters, callbacks=callbacks, show_progress=show_progress)
        source = result.checkpoint
        arch_steps += result.summary["steps"] if kind != "prune" or s.alpha_in_prune else 0
    genotype = result.model.genotype()
    if distributed.is_main():
        _write_outputs(run_dir, search_dir, genotype, arch_steps, metrics_file)
    distributed.barrier()
    return genotype


def _check_target(s: SearchConfig) -> None:
    if s.mode == "dass" and not 0 < s.sparsity < 1:
        raise SparsearchError(f"search.sparsity must be in (0, 1) for DASS, got {s.sparsity}")


def check_search(cfg: Config, ds: Dataset | None = None) -> Dataset:
    """What a search checks before it writes: the DASS target, the data (both halves hold a batch), the supernet
    (built once). Returns the dataset."""
    _check_target(cfg.search)
    ds = ds or dataset_from_config(cfg.data, seed=cfg.seed)
    search_loaders(cfg, ds)
    supernet_builder(cfg, ds)()
    return ds


def run_search(cfg: Config, show_progress: bool = True) -> Genotype:
    """`sparsearch search`: the configured search into `runs/<name>/search/`."""
    check_search(cfg)
    with claim_run_dir(cfg):
        return differentiable_search(cfg, cfg.run_dir / "search", show_progress)


def _write_outputs(run_dir: Path, search_dir: Path, genotype: Genotype, arch_steps: int, metrics_file: Path) -> None:
    genotype.save(search_dir / "genotype.json")
    prefix = search_dir.relative_to(run_dir).as_posix() + "/"
    epochs = [{"stage": r["stage"], "epoch": r["epoch"], "normal": r["alphas_normal"], "reduce": r["alphas_reduce"],
               "genotype": r["genotype"], "entropy_normal": normalised_entropy(r["alphas_normal"]),
               "entropy_reduce": normalised_entropy(r["alphas_reduce"])}
              for r in MetricsLog(metrics_file).read()
              if r.get("kind") == "epoch" and "alphas_normal" in r and r["stage"].startswith(prefix)]
    lines = [json.dumps(e) for e in epochs]
    (search_dir / "alphas.jsonl").write_text("\n".join(lines) + "\n")
    write_json(search_dir / "verdict.json", search_verdict(epochs, arch_steps))
    from ..report.search_plots import alpha_heatmap, cell_diagram  # matplotlib loads only when a search finishes

    last = json.loads(lines[-1])
    alpha_heatmap(last["normal"], last["reduce"], search_dir / "alphas.png", f"softmax(alpha) after {last['stage']}")
    for cell in ("normal", "reduce"):
        cell_diagram(genotype, cell, search_dir / f"cell_{cell}.png")
