"""Random-search baseline over the same cell space: sample genotypes uniformly, train each briefly at the
target sparsity on the weight half, keep the one with the best accuracy on the alpha half.

A candidate's short training uses the search network size (`search.channels` / `search.layers`), random
masks at the target sparsity on every parametric layer (uniform, like the DASS supernet), and the
`train.*` optimiser for `search.random_epochs` epochs. Each candidate is one trial: a module-level
function of a picklable value, so any executor (local, processes, Ray) can run them; a finished trial is
skipped on re-run.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from .. import sparsity as sp
from ..config import Config
from ..data import dataset_from_config
from ..executors import Failed, raise_failures
from ..models.darts import GenotypeNetwork
from ..models.genotypes import Genotype
from ..models.operations import PRIMITIVES
from ..train import MetricsLog, fit
from .phases import search_loaders


def sample_genotype(rng: random.Random, steps: int = 4) -> Genotype:
    """Uniform over the space DARTS derives from: per node two distinct earlier inputs, each with one of
    the seven non-`none` operations; normal and reduction cells independent."""
    ops = [op for op in PRIMITIVES if op != "none"]

    def cell() -> tuple[tuple[str, int], ...]:
        return tuple((rng.choice(ops), src) for node in range(steps) for src in sorted(rng.sample(range(2 + node), 2)))

    concat = tuple(range(2, 2 + steps))
    return Genotype(cell(), cell(), concat, concat)


@dataclasses.dataclass(frozen=True)
class Trial:
    cfg: Config
    genotype: Genotype
    out_dir: str
    show_progress: bool = False


def evaluate_candidate(trial: Trial) -> dict:
    """Train one candidate briefly at the target sparsity; its accuracy on the alpha half ranks it."""
    cfg, s = trial.cfg, trial.cfg.search
    out = Path(trial.out_dir)
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    train_loader, _, eval_loader = search_loaders(cfg, ds)
    net = GenotypeNetwork(trial.genotype, s.channels, s.layers, ds.num_classes, ds.in_channels)
    layers = sp.find_layers(net, dense_first_last=False)
    masks, densities = sp.compute_masks(net, layers, s.sparsity, "random", "uniform", seed=cfg.seed)
    sp.attach(net, masks, densities=densities)
    train_cfg = cfg.train.stage(s.random_epochs, drop_path=0.0)
    summary = fit(net, out, train_cfg, train_loader, eval_loader, MetricsLog(out / "metrics.jsonl", stage=out.name),
                  show_progress=trial.show_progress).summary
    return {"trial": out.name, "val_acc": summary["final_test_acc"], "train_seconds": summary["train_seconds"],
            "genotype": trial.genotype.to_dict()}


def random_search(cfg: Config, search_dir: Path, executor, show_progress: bool = True) -> Genotype:
    """Sample `search.random_samples` genotypes, evaluate them with `executor`, write `trials.jsonl` and the
    best one's `genotype.json` into `search_dir`."""
    rng = random.Random(cfg.seed)
    candidates = [sample_genotype(rng) for _ in range(cfg.search.random_samples)]
    trials = [Trial(cfg, g, str(search_dir / f"trial-{i:03d}"), executor.trial_bars(show_progress))
              for i, g in enumerate(candidates)]
    results = executor.map(evaluate_candidate, trials, label="random search", progress=show_progress)
    search_dir.mkdir(parents=True, exist_ok=True)
    (search_dir / "trials.jsonl").write_text("".join(
        json.dumps(dataclasses.asdict(r) if isinstance(r, Failed) else r) + "\n" for r in results))
    raise_failures(results, "random-search trials")  # finished trials are kept: a re-run only redoes these
    best = max(range(len(results)), key=lambda i: (results[i]["val_acc"], -i))  # ties: the earlier sample
    candidates[best].save(search_dir / "genotype.json")
    return candidates[best]
