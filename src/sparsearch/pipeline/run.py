"""`sparsearch run`: search with every method, derive, train each cell with HYDRA at every target
sparsity, evaluate, report.

    runs/<name>/search/<key>/         dass: pretrain/ prune/ finetune/; darts: search/; random: trial-NNN/
                                      each with genotype.json (+ alphas.jsonl, trials.jsonl, verdict.json;
                                      DASS and DARTS: their metrics.jsonl, as they may run side by side)
    runs/<name>/train/<key>/          pretrain/ (dense, shared) and sparsity-<s>/{prune,finetune}/, metrics.jsonl
    runs/<name>/results.json          one row per (search, sparsity), and mean +- std over search seeds

A search's key is its method, then `sparsity-<s>` where it searched at one target (DASS and random search with
`run.search_per_sparsity`, the default; DARTS is dense and searches once), then `seed-<k>` where
`run.search_seeds` holds more than one seed.
    runs/<name>/report/               report.md, index.html, PNGs

Every method's cell goes through the same final pipeline (network: `model.kwargs`, dense pretrain:
`train.*`, prune and finetune: `hydra.*`), so the cells are compared, not the recipes. Everything
resumes: finished stages are skipped on a re-run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from ..config import Config, ConfigError
from ..data import dataset_from_config
from ..executors import make_executor, raise_failures
from ..files import write_json
from ..methods import density_map
from ..models.flops import count_flops
from ..models.genotypes import GENOTYPES, Genotype
from ..recipes import run_hydra
from ..report import write_report
from ..search import check_search, differentiable_search, random_search
from ..sparsity import configured_layers
from ..train import claim_run_dir
from . import accuracy_spread, loaders_for, model_builder


def _validate(cfg: Config) -> None:
    if cfg.model.name != "genotype":
        raise ConfigError(f"sparsearch run trains searched cells: model.name must be 'genotype', got '{cfg.model.name}'")
    if not cfg.run.methods:
        raise ConfigError("run.methods is empty")
    for s in cfg.run.sparsities:
        if not 0 < s < 1:
            raise ConfigError(f"run.sparsities must lie in (0, 1), got {s}")
    if len(set(cfg.run.search_seeds)) != len(cfg.run.search_seeds) or any(k < 0 for k in cfg.run.search_seeds):
        raise ConfigError(f"run.search_seeds must be distinct non-negative integers, got {cfg.run.search_seeds}")
    if cfg.sparsity.allocation == "global":
        raise ConfigError("sparsity.allocation global is not defined for HYDRA; use uniform, er or erk")


def _search_seconds(search_dir: Path) -> float:
    return sum(json.loads(p.read_text())["train_seconds"] for p in search_dir.glob("*/summary.json"))


@dataclasses.dataclass
class Search:
    method: str
    target: float | None  # the sparsity it searched at; None: search.sparsity (shared) or dense (DARTS)
    seed: int
    key: str  # its folder under search/ and train/
    sparsities: list[float]  # where its cell is trained

    def config(self, cfg: Config) -> Config:
        search = dataclasses.replace(cfg.search, mode=self.method, sparsity=self.target or cfg.search.sparsity)
        return dataclasses.replace(cfg, seed=self.seed, search=search)


def plan_searches(cfg: Config) -> list[Search]:
    seeds = cfg.run.search_seeds or [cfg.seed]
    searches = []
    for method in cfg.run.methods:
        per_sparsity = cfg.run.search_per_sparsity and method != "darts"
        targets = [(s, [s]) for s in cfg.run.sparsities] if per_sparsity else [(None, list(cfg.run.sparsities))]
        for target, trained in targets:
            for seed in seeds:
                parts = [method] + ([f"sparsity-{target:g}"] if target is not None else []) + (
                    [f"seed-{seed}"] if len(seeds) > 1 else [])
                searches.append(Search(method, target, seed, "/".join(parts), trained))
    return searches


@dataclasses.dataclass
class SearchJob:
    """A DASS or DARTS search as a trial: `run.executor` runs them side by side (each logs into its folder)."""

    cfg: Config
    search_dir: str
    progress: bool


def run_search_job(job: SearchJob) -> Genotype:
    search_dir = Path(job.search_dir)
    return differentiable_search(job.cfg, search_dir, job.progress, metrics_file=search_dir / "metrics.jsonl")


def search_all(cfg: Config, show_progress: bool = True) -> list[tuple[Search, Genotype]]:
    executor = make_executor(cfg.run)
    planned = [(search, cfg.run_dir / "search" / search.key) for search in plan_searches(cfg)]
    jobs = {str(d): SearchJob(search.config(cfg), str(d), executor.trial_bars(show_progress))
            for search, d in planned if search.method != "random"}
    found = executor.map(run_search_job, list(jobs.values()), label="searches", progress=show_progress)
    raise_failures(found, "searches")
    genotypes = dict(zip(jobs, found))
    # random search runs its candidates as trials itself
    return [(search, random_search(search.config(cfg), d, executor, show_progress) if search.method == "random"
             else genotypes[str(d)]) for search, d in planned]


def seed_summary(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation and range of the test accuracy per (method, sparsity) over search seeds."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["sparsity"]), []).append(r)
    out = []
    for (method, sparsity), mine in groups.items():
        out.append({"method": method, "sparsity": sparsity, "n": len(mine),
                    **accuracy_spread([r["test_acc"] for r in mine]),
                    "dense_acc_mean": statistics.fmean(r["dense_test_acc"] for r in mine),
                    "seeds": [r["search_seed"] for r in mine]})
    return out


def run_all(cfg: Config, show_progress: bool = True) -> Path:
    """Returns the report directory."""
    _validate(cfg)
    ds = check_search(cfg)  # everything checked before anything is written: search, data, the final network
    loaders_for(cfg, ds)  # the cells build their own; these show the loaders build before anything is written
    model_builder(cfg, ds, genotype=GENOTYPES["DASS_95"].to_dict())()
    with claim_run_dir(cfg) as run_dir:
        return _search_and_train(cfg, run_dir, ds, show_progress)


@dataclasses.dataclass
class CellJob:
    """The HYDRA training of one searched cell at each of its sparsities, as a trial (`run.executor` trains cells
    side by side; each logs into its folder)."""

    cfg: Config
    key: str  # the search's
    genotype: dict
    sparsities: list[float]
    progress: bool


def train_cell(job: CellJob) -> list[dict]:
    """One row per sparsity: accuracy, FLOPs and times."""
    cfg = job.cfg
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    train_loader, test_loader = loaders_for(cfg, ds)
    build = model_builder(cfg, ds, genotype=job.genotype)
    layers = configured_layers(build(), cfg.sparsity)
    densities = {s: density_map(layers, s, cfg.sparsity.allocation) for s in job.sparsities}
    out = cfg.run_dir / "train" / job.key
    hydra = run_hydra(build, densities, cfg.hydra, cfg.train, train_loader, test_loader, out, out / "metrics.jsonl",
                      cfg.run_dir, job.progress)
    dense = hydra.pretrain.summary
    return [{"sparsity": sparsity, "test_acc": final.summary["final_test_acc"], "dense_test_acc": dense["final_test_acc"],
             **count_flops(final.model, (ds.in_channels, *ds.image_size)),
             "train_seconds": final.costing_too(hydra.prune[sparsity]).summary["train_seconds"],
             "pretrain_seconds": dense["train_seconds"]} for sparsity, final in hydra.finetune.items()]


def _search_and_train(cfg: Config, run_dir: Path, ds, show_progress: bool) -> Path:
    found, searches = search_all(cfg, show_progress), {}
    for search, genotype in found:
        search_dir = run_dir / "search" / search.key
        verdict = search_dir / "verdict.json"  # differentiable searches: did alpha move? (random search: none)
        searches[search.key] = {"method": search.method, "target": search.target, "seed": search.seed,
                                "seconds": _search_seconds(search_dir), "genotype": genotype.to_dict(),
                                "param_free_normal": genotype.parameter_free_count("normal"),
                                "verdict": json.loads(verdict.read_text()) if verdict.exists() else None}
    executor = make_executor(cfg.run)
    jobs = [CellJob(cfg, search.key, genotype.to_dict(), search.sparsities, executor.trial_bars(show_progress))
            for search, genotype in found]
    cells = executor.map(train_cell, jobs, label="cell trainings", progress=show_progress)
    raise_failures(cells, "cell trainings")
    rows = [{"method": search.method, "search": search.key, "search_seed": search.seed,
             "search_seconds": searches[search.key]["seconds"], **row}
            for (search, _), cell in zip(found, cells) for row in cell]
    where = "at each target sparsity" if cfg.run.search_per_sparsity else f"at {100 * cfg.search.sparsity:g}% sparsity"
    summary = (f"Each cell was trained with the same HYDRA pipeline: dense pretrain {cfg.train.epochs} epochs, "
               f"score pruning {cfg.hydra.prune_epochs}, finetune {cfg.hydra.finetune_epochs} "
               f"({cfg.model.kwargs.get('channels', 36)} channels, {cfg.model.kwargs.get('layers', 20)} cells). "
               f"Searches: DASS/DARTS {cfg.search.pretrain_epochs}+{cfg.search.prune_epochs}+{cfg.search.finetune_epochs} "
               f"supernet epochs (DASS {where}), random search "
               f"{cfg.search.random_samples} samples x {cfg.search.random_epochs} epochs. Test accuracy is on the held-out "
               f"test set, never seen during search or selection.")
    results = {"name": cfg.name, "dataset": ds.name, "summary": summary, "rows": rows, "searches": searches,
               "by_seed": seed_summary(rows), "search_seeds": cfg.run.search_seeds or [cfg.seed]}
    write_json(run_dir / "results.json", results)
    return write_report(run_dir)
