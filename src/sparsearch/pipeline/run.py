"""`sparsearch run`: search with every method, derive, train each cell with HYDRA at every target
sparsity, evaluate, report.

    runs/<name>/search/<method>/      dass: pretrain/ prune/ finetune/; darts: search/; random: trial-NNN/
                                      each with genotype.json (+ alphas.jsonl, trials.jsonl)
    runs/<name>/train/<method>/       pretrain/ (dense, shared) and sparsity-<s>/{prune,finetune}/
    runs/<name>/results.json          one row per (method, sparsity)
    runs/<name>/report/               report.md, index.html, PNGs

Every method's cell goes through the same final pipeline (network: `model.kwargs`, dense pretrain:
`train.*`, prune and finetune: `hydra.*`), so the cells are compared, not the recipes. Everything
resumes: finished stages are skipped on a re-run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import Config, ConfigError
from ..data import build_loaders
from ..executors import make_executor
from ..files import write_json
from ..methods import density_map, run_hydra
from ..models.flops import count_flops
from ..models.genotypes import GENOTYPES, Genotype
from ..report import write_report
from ..search import check_search, differentiable_search, random_search
from ..sparsity import find_layers
from ..train import claim_run_dir, resolve_device
from . import model_builder


def _validate(cfg: Config) -> None:
    if cfg.model.name != "genotype":
        raise ConfigError(f"sparsearch run trains searched cells: model.name must be 'genotype', got '{cfg.model.name}'")
    if not cfg.run.methods:
        raise ConfigError("run.methods is empty")
    for s in cfg.run.sparsities:
        if not 0 < s < 1:
            raise ConfigError(f"run.sparsities must lie in (0, 1), got {s}")
    if cfg.sparsity.allocation == "global":
        raise ConfigError("sparsity.allocation global is not defined for HYDRA; use uniform, er or erk")


def _search_seconds(search_dir: Path) -> float:
    return sum(json.loads(p.read_text())["train_seconds"] for p in search_dir.glob("*/summary.json"))


def search_all(cfg: Config, show_progress: bool = True) -> dict[str, Genotype]:
    executor = make_executor(cfg.run)
    genotypes = {}
    for method in cfg.run.methods:
        search_dir = cfg.run_dir / "search" / method
        if method == "random":
            genotypes[method] = random_search(cfg, search_dir, executor, show_progress)
        else:
            mode_cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, mode=method))
            genotypes[method] = differentiable_search(mode_cfg, search_dir, show_progress)
    return genotypes


def run_all(cfg: Config, show_progress: bool = True) -> Path:
    """Returns the report directory."""
    _validate(cfg)
    ds = check_search(cfg)  # everything checked before anything is written: search, data, the final network
    train_loader, test_loader = build_loaders(ds, cfg.data, cfg.seed, device=resolve_device(cfg.train.device))
    model_builder(cfg, ds, genotype=GENOTYPES["DASS_95"].to_dict())()
    with claim_run_dir(cfg) as run_dir:
        return _search_and_train(cfg, run_dir, ds, train_loader, test_loader, show_progress)


def _search_and_train(cfg: Config, run_dir: Path, ds, train_loader, test_loader, show_progress: bool) -> Path:
    genotypes = search_all(cfg, show_progress)
    rows, searches = [], {}
    for method, genotype in genotypes.items():
        search_dir = run_dir / "search" / method
        verdict = search_dir / "verdict.json"  # differentiable searches: did alpha move? (random search: none)
        searches[method] = {"seconds": _search_seconds(search_dir), "genotype": genotype.to_dict(),
                            "param_free_normal": genotype.parameter_free_count("normal"),
                            "verdict": json.loads(verdict.read_text()) if verdict.exists() else None}
        build = model_builder(cfg, ds, genotype=genotype.to_dict())
        model = build()
        layers = find_layers(model, cfg.sparsity.include, cfg.sparsity.exclude, cfg.sparsity.dense_first_last)
        densities = {s: density_map(layers, s, cfg.sparsity.allocation) for s in cfg.run.sparsities}
        hydra = run_hydra(build, densities, cfg.hydra, cfg.train, train_loader, test_loader, run_dir / "train" / method,
                          run_dir / "metrics.jsonl", run_dir, show_progress)
        dense = hydra.pretrain.summary
        for sparsity, final in hydra.finetune.items():
            rows.append({"method": method, "sparsity": sparsity, "test_acc": final.summary["final_test_acc"],
                         "dense_test_acc": dense["final_test_acc"], **count_flops(final.model, (ds.in_channels, *ds.image_size)),
                         "search_seconds": searches[method]["seconds"],
                         "train_seconds": hydra.prune[sparsity].summary["train_seconds"] + final.summary["train_seconds"],
                         "pretrain_seconds": dense["train_seconds"]})
    summary = (f"Each cell was trained with the same HYDRA pipeline: dense pretrain {cfg.train.epochs} epochs, "
               f"score pruning {cfg.hydra.prune_epochs}, finetune {cfg.hydra.finetune_epochs} "
               f"({cfg.model.kwargs.get('channels', 36)} channels, {cfg.model.kwargs.get('layers', 20)} cells). "
               f"Searches: DASS/DARTS {cfg.search.pretrain_epochs}+{cfg.search.prune_epochs}+{cfg.search.finetune_epochs} "
               f"supernet epochs (DASS at {100 * cfg.search.sparsity:g}% sparsity), random search "
               f"{cfg.search.random_samples} samples x {cfg.search.random_epochs} epochs. Test accuracy is on the held-out "
               f"test set, never seen during search or selection.")
    results = {"name": cfg.name, "dataset": ds.name, "summary": summary, "rows": rows, "searches": searches}
    write_json(run_dir / "results.json", results)
    return write_report(run_dir)
