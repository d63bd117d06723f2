"""DASS and DARTS searches as phases of the one training loop.

DASS (Mousavi et al.): (1) pretrain: dense weights, alpha updated; (2) prune: learned-score masks at the
target sparsity on every parametric layer (scaled score init), scores trained with weights frozen, alpha
updated on the masked supernet; (3) finetune: masks fixed, surviving weights trained, alpha updated.
DARTS: the same supernet dense, one phase with the same total number of epochs.

Each phase is a resumable Trainer run under `runs/<name>/search/<phase>/`; a finished phase is skipped,
and the next one starts from the previous phase's final state. Outputs: `search/genotype.json`,
`search/alphas.jsonl` (one line per epoch), and per-epoch genotype diagnostics in `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import sparsity as sp
from ..config import Config, SearchConfig
from ..data import TensorLoader, build_loaders, dataset_from_config, search_split
from ..errors import SparsearchError
from ..models.genotypes import Genotype
from ..train import Callback, MetricsLog, SparsityCallback, Trainer, load_checkpoint, prepare_run_dir, resolve_device
from .architect import Architect
from .supernet import SuperNet

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
        val_batch = next(self.val_loader.batches(start=trainer.batch % len(self.val_loader)))
        xi = trainer.optimizer.param_groups[0]["lr"]
        self.architect.step(trainer.current_batch, val_batch, self.trained, xi, self.weight_decay)

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        model: SuperNet = trainer.model
        genotype = model.genotype()
        free = genotype.parameter_free_count("normal")
        metrics.update(genotype=genotype.to_dict(), param_free_normal=free,
                       alphas_normal=F.softmax(model.arch.normal, -1).tolist(),
                       alphas_reduce=F.softmax(model.arch.reduce, -1).tolist())
        if free >= len(genotype.normal) - 1:
            log.warning("normal cell has %d of %d parameter-free operations: the search is collapsing to skip "
                        "connections and pooling", free, len(genotype.normal))

    def state_dict(self) -> dict[str, Any]:
        return self.architect.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.architect.load_state_dict(state)


def _phase_train_cfg(cfg: Config, epochs: int, lr: float):
    s = cfg.search
    return dataclasses.replace(cfg.train, epochs=epochs, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay,
                               schedule="cosine", min_lr=s.min_lr, warmup_epochs=0.0, grad_clip=s.grad_clip,
                               optimizer="sgd")


def prune_phase_parameters(net: SuperNet) -> list[torch.nn.Parameter]:
    """DASS prune phase: freeze the masked weights; scores (and BN, biases) are what trains."""
    masked = {id(sp.weight_param(m)) for m in sp.masked_layers(net).values()}
    for p in net.weight_parameters():
        p.requires_grad_(id(p) not in masked)
    return [p for p in net.weight_parameters() if p.requires_grad]


def phases(s: SearchConfig) -> list[str]:
    return ["pretrain", "prune", "finetune"] if s.mode == "dass" else ["search"]


def build_supernet(cfg: Config, ds, upto: str) -> SuperNet:
    """A supernet in the structure `upto` needs (masks attached for prune/finetune), on the previous phase's state."""
    s = cfg.search
    torch.manual_seed(cfg.seed)
    net = SuperNet(s.channels, s.layers, ds.num_classes, ds.in_channels)
    order = phases(s)
    index = order.index(upto)
    if index == 0:
        return net
    layers = sp.find_layers(net, dense_first_last=False)
    previous = cfg.run_dir / "search" / order[index - 1] / "checkpoints" / "last.ckpt"
    state = load_checkpoint(previous)["model"]
    if upto == "prune":
        net.load_state_dict(state)  # dense pretrained weights, then scaled score init from them
        sp.attach_learned(net, {n: 1 - s.sparsity for n in layers})
    else:  # finetune: the scores trained in prune decide the fixed masks
        sp.attach_learned(net, {n: 1 - s.sparsity for n in layers})
        net.load_state_dict(state)
        sp.freeze(net)
    return net


def run_search(cfg: Config, show_progress: bool = True) -> Genotype:
    s = cfg.search
    if s.mode == "dass" and not 0 < s.sparsity < 1:
        raise SparsearchError(f"search.sparsity must be in (0, 1) for DASS, got {s.sparsity}")
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    weight_half, arch_half = search_split(ds, s.portion, cfg.seed)
    device, stats = resolve_device(cfg.train.device), ds.channel_stats()
    train_loader, _ = build_loaders(weight_half, cfg.data, cfg.seed, device, stats)
    # alpha batches are augmented like weight batches; accuracy is reported on the alpha half, unaugmented
    arch_as_test = dataclasses.replace(arch_half, test_x=arch_half.train_x, test_y=arch_half.train_y)
    val_loader, eval_loader = build_loaders(arch_as_test, cfg.data, cfg.seed + 1, device, stats)
    run_dir = prepare_run_dir(cfg)
    epochs = {"pretrain": s.pretrain_epochs, "prune": s.prune_epochs, "finetune": s.finetune_epochs,
              "search": s.pretrain_epochs + s.prune_epochs + s.finetune_epochs}
    net = None
    for phase in phases(s):
        net = build_supernet(cfg, ds, phase)
        if phase == "prune":
            params, lr = prune_phase_parameters(net), s.score_lr
        else:
            params, lr = net.weight_parameters(), s.weight_lr
        architect = Architect(net, net.arch_parameters(), s.arch_lr, (0.5, 0.999), s.arch_weight_decay, s.second_order)
        callbacks: list[Callback] = [ArchitectCallback(architect, val_loader, params, s.weight_decay,
                                                       enabled=phase != "prune" or s.alpha_in_prune)]
        if phase in ("prune", "finetune"):
            callbacks.append(SparsityCallback(check=cfg.train.check_sparsity))
        trainer = Trainer(net, train_loader, eval_loader, _phase_train_cfg(cfg, epochs[phase], lr),
                          run_dir / "search" / phase, callbacks=callbacks, param_groups=[{"params": params}],
                          metrics=MetricsLog(run_dir / "metrics.jsonl", stage=f"search/{phase}"),
                          show_progress=show_progress)
        trainer.fit()
    net.load_state_dict(load_checkpoint(trainer.checkpoint_path)["model"])  # also when every phase was done before
    genotype = net.genotype()
    _write_outputs(run_dir, genotype)
    return genotype


def _write_outputs(run_dir: Path, genotype: Genotype) -> None:
    out = run_dir / "search"
    genotype.save(out / "genotype.json")
    lines = [json.dumps({"stage": r["stage"], "epoch": r["epoch"], "normal": r["alphas_normal"],
                         "reduce": r["alphas_reduce"], "genotype": r["genotype"]})
             for r in MetricsLog(run_dir / "metrics.jsonl").read() if r.get("kind") == "epoch" and "alphas_normal" in r]
    (out / "alphas.jsonl").write_text("\n".join(lines) + "\n")
