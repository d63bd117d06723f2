"""`sparsearch compare`: every variant (method or named recipe) at every sparsity and seed, on one model and dataset.

    runs/<name>/compare/seed-<k>/dense/                the dense training; oneshot, hydra and maskspar start from it
    runs/<name>/compare/seed-<k>/<variant>-<s>/        one method's stages and summary.json
    runs/<name>/compare/results.json                   one row per finished run, and the aggregated table
    runs/<name>/compare/table.md, accuracy.png         mean and spread over seeds; accuracy vs sparsity

Seeds change the initialisation and the data order; the data (and any `data.train_subset`) stay those of
`seed`. Results are rewritten after every finished run, so an interrupted comparison still has a table,
and a re-run skips what finished. The `compare` section may change between invocations (other sections may
not): adding variants or seeds trains only what is new, and rows of earlier invocations stay in the table (so a
costly variant can run for fewer seeds than the rest; the table's seeds column says how many).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from ..config import Config, ConfigError
from ..data import build_loaders, dataset_from_config
from ..methods import METHODS, MethodContext, check_config
from ..report.plots import comparison_plot
from ..train import prepare_run_dir, resolve_device
from . import model_builder, write_summary

# named recipes: method plus the sparsity settings that define them
VARIANTS: dict[str, dict] = {
    "static-uniform": {"method": "static", "criterion": "random", "allocation": "uniform"},
    "static-erk": {"method": "static", "criterion": "random", "allocation": "erk"},
    "snip": {"method": "static", "criterion": "snip", "allocation": "global"},
    "oneshot-lamp": {"method": "oneshot", "criterion": "lamp", "allocation": "global"},
    "maskspar": {"method": "maskspar", "allocation": "uniform"},  # the reference's shipped uniform channel ratio
}


def variant_config(cfg: Config, variant: str, sparsity: float, seed: int) -> Config:
    if variant in VARIANTS:
        settings = VARIANTS[variant]
    elif variant in METHODS:
        settings = {"method": variant}
    else:
        raise ConfigError(f"unknown compare variant '{variant}' (use a method: {', '.join(METHODS)}; "
                          f"or a recipe: {', '.join(VARIANTS)})")
    if settings["method"] == "dense":
        sparsity = 0.0
    return dataclasses.replace(cfg, seed=seed, sparsity=dataclasses.replace(cfg.sparsity, sparsity=sparsity, **settings))


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation of the test accuracy per (variant, sparsity), in first-seen order."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["sparsity"]), []).append(r)
    table = []
    for (variant, sparsity), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        table.append({"variant": variant, "sparsity": sparsity, "seeds": len(rs), "acc_mean": statistics.fmean(accs),
                      "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "acc_min": min(accs), "acc_max": max(accs),
                      "density": statistics.fmean(r["weight_density"] for r in rs),
                      "train_seconds": statistics.fmean(r["train_seconds"] for r in rs)})
    return table


def markdown_table(table: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "| variant | sparsity | test acc % (mean ± std) | min–max | seeds | weight density | train s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in sorted(table, key=lambda t: (t["sparsity"], -t["acc_mean"])):
        lines.append(f"| {t['variant']} | {100 * t['sparsity']:g}% | {100 * t['acc_mean']:.2f} ± {100 * t['acc_std']:.2f} | "
                     f"{100 * t['acc_min']:.2f}–{100 * t['acc_max']:.2f} | {t['seeds']} | {t['density']:.4f} | "
                     f"{t['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _write_results(out: Path, cfg: Config, rows: list[dict], dataset: str) -> None:
    table = aggregate(rows)
    title = f"{cfg.model.name} on {dataset}: accuracy by method and sparsity"
    tmp = out / "results.json.part"
    tmp.write_text(json.dumps({"name": cfg.name, "dataset": dataset, "model": cfg.model.name, "rows": rows, "table": table},
                              indent=2))
    tmp.replace(out / "results.json")
    (out / "table.md").write_text(markdown_table(table, title))
    comparison_plot(table, out / "accuracy.png", title)


def _validate(c) -> None:
    if not c.variants or not c.seeds:
        raise ConfigError("compare.variants and compare.seeds must not be empty")
    for s in c.sparsities:
        if not 0 < s < 1:
            raise ConfigError(f"compare.sparsities must lie in (0, 1), got {s}")


def run_compare(cfg: Config, show_progress: bool = True) -> Path:
    """Train everything the `compare` section lists; returns the directory holding table.md and accuracy.png."""
    c = cfg.compare
    _validate(c)
    jobs = [(seed, v, s) for seed in c.seeds for v in c.variants for s in ([0.0] if v == "dense" else c.sparsities)]
    for _, v, s in jobs:
        check_config(variant_config(cfg, v, s, cfg.seed))  # unknown names and bad settings fail before any training
    run_dir = prepare_run_dir(cfg, extendable=("compare",))
    out = run_dir / "compare"
    out.mkdir(exist_ok=True)
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    device = resolve_device(cfg.train.device)
    # rows of earlier invocations stay (a variant run for fewer seeds, say); rows of this one replace them
    results = out / "results.json"
    earlier = json.loads(results.read_text())["rows"] if results.exists() else []
    rows = {(r["seed"], r["variant"], r["sparsity"]): r for r in earlier}
    for i, (seed, variant, sparsity) in enumerate(jobs, 1):
        vcfg = variant_config(cfg, variant, sparsity, seed)
        train_loader, test_loader = build_loaders(ds, vcfg.data, seed, device=device)
        seed_dir = out / f"seed-{seed}"
        name = "dense" if sparsity == 0 else f"{variant}-{sparsity:g}"
        ctx = MethodContext(vcfg, model_builder(vcfg, ds), train_loader, test_loader, seed_dir / name, run_dir,
                            pretrain_dir=seed_dir / "dense", show_progress=show_progress, data_seed=cfg.seed)
        summary = write_summary(ctx, METHODS[vcfg.sparsity.method](ctx), ds, name)
        rows[seed, variant, sparsity] = {
            "variant": variant, "sparsity": sparsity, "seed": seed, "test_acc": summary["final_test_acc"],
            "weight_density": summary.get("weight_density", 1.0), "params_nonzero": summary["params_nonzero"],
            "macs_effective": summary["macs_effective"], "train_seconds": summary["train_seconds"]}
        _write_results(out, cfg, list(rows.values()), ds.name)
        if show_progress:
            print(f"compare [{i}/{len(jobs)}] seed {seed} {name}: test acc {100 * summary['final_test_acc']:.2f}%", flush=True)
    return out
