"""Stages over a run directory: config -> stages -> `runs/<name>/`. Each stage reads only what earlier
stages wrote there, so any stage can be re-run or resumed."""

from __future__ import annotations

import json
import statistics
from typing import Any

from .. import distributed
from ..config import Config, dump_yaml
from ..data import Dataset, TensorLoader, build_loaders, dataset_from_config
from ..files import write_atomic, write_json
from ..host import machine
from ..models import model_builder
from ..models.flops import count_flops
from ..models.ift import iso_config
from ..recipes import METHODS, MethodContext, preflight, sections_used
from ..report.plots import churn_plot, soup_plot
from ..train import StageResult, claim_run_dir, resolve_device


def loaders_for(cfg: Config, ds: Dataset) -> tuple[TensorLoader, TensorLoader]:
    """The training and test loaders of `ds` as `cfg` describes them: batches, augmentation, seed, device."""
    return build_loaders(ds, cfg.data, cfg.seed, device=resolve_device(cfg.train.device))


def build_for(cfg: Config):
    """Dataset, model and loaders as the config describes them (no side effects on disk)."""
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    return (ds, model_builder(cfg, ds)(), *loaders_for(cfg, ds))


def variant_name(variant: str, sparsity: float, ift: str = "none") -> str:
    """A training's directory name (under `train/`, or a compare seed's): `dense`, or `<variant>-<sparsity>`, with
    the Sparse-IFT family in front (`wide-rigl-0.5`)."""
    if variant == "dense" or sparsity == 0:
        return "dense"
    return f"{variant}-{sparsity:g}" if ift == "none" or variant.startswith(ift) else f"{ift}-{variant}-{sparsity:g}"


def accuracy_spread(accs: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and range of test accuracies over seeds."""
    return {"acc_mean": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "acc_min": min(accs), "acc_max": max(accs)}


def ift_sections(cfg: Config) -> tuple[str, ...]:
    return ("ift",) if cfg.ift.family != "none" else ()


def run_train(cfg: Config, show_progress: bool = True) -> dict[str, Any]:
    """`sparsearch train`: the configured method (`sparsity.method`; dense when `sparsity.sparsity` is 0)."""
    ds = preflight(cfg)  # before anything is written
    train_loader, test_loader = loaders_for(cfg, ds)
    variant = variant_name(cfg.sparsity.method, cfg.sparsity.sparsity, cfg.ift.family)
    sections = sections_used(["dense" if variant == "dense" else cfg.sparsity.method], *ift_sections(cfg))
    cfg = iso_config(cfg, ds)  # Sparse-IFT: the mask sparsity at the dense network's MACs
    with claim_run_dir(cfg, sections=sections) as run_dir:
        out_dir = run_dir / "train" / variant
        ctx = MethodContext(cfg, model_builder(cfg, ds), train_loader, test_loader, out_dir, run_dir,
                            pretrain_dir=out_dir if variant == "dense" else None, show_progress=show_progress)
        final = METHODS["dense" if variant == "dense" else cfg.sparsity.method](ctx)
        return write_summary(ctx, final, ds, variant)


def write_summary(ctx: MethodContext, final: StageResult, ds: Dataset, variant: str) -> dict[str, Any]:
    """The method's summary.json: the final stage's numbers (train_seconds: every stage the trial trained) plus sizes
    and costs of the final model; and the config this variant trained with (config.yaml beside it: a compare
    variant's method, a Sparse-IFT network's widths)."""
    # where the final stage trained, not where this summary is written again (a rerun finds it finished)
    sittings = final.summary.get("sittings") or [{}]
    summary = {**final.summary, "variant": variant, "dataset": ds.name, "model": ctx.cfg.model.name,
               **count_flops(final.model, (ds.in_channels, *ds.image_size)), "run_dir": str(ctx.run_dir),
               "out_dir": str(ctx.out_dir), "final_stage": str(final.out_dir),
               "machine": sittings[-1].get("machine") or machine()}
    if not distributed.is_main():  # under torchrun rank 0 writes
        return summary
    write_json(ctx.out_dir / "summary.json", summary)
    write_atomic(ctx.out_dir / "config.yaml", dump_yaml(ctx.cfg))
    if (churn := final.out_dir / "churn.json").exists():  # dynamic sparse training: plot the topology churn
        churn_plot(json.loads(churn.read_text()), final.out_dir / "churn.png", f"{variant}: topology churn")
    if (soups := ctx.out_dir / "soup.json").exists():  # sparse model soups: ingredients vs soups per phase
        soup_plot(json.loads(soups.read_text()), ctx.out_dir / "soup.png", f"{variant}: sparse model soups")
    return summary
