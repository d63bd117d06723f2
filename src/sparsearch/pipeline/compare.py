"""`sparsearch compare`: every variant (method or named recipe) at every sparsity and seed, on one model and dataset.

    runs/<name>/compare/seed-<k>/dense/                the dense training; oneshot, hydra and maskspar start from it
    runs/<name>/compare/seed-<k>/<variant>-<s>/        one method's stages and summary.json
    runs/<name>/compare/results.json                   one row per finished run, and the aggregated table
    runs/<name>/compare/table.md, accuracy.png         mean and spread over seeds; accuracy vs sparsity

Seeds change the initialisation and the data order; the data (and any `data.train_subset`) stay those of
`seed`. Every run is a trial of `run.executor` (local, process or Ray). The dense runs go first: the methods
that prune a trained network (oneshot, hydra, maskspar) start from them, so each waits for its own seed's (the
others take a free worker at once), and they are trained (and reported) when those methods are compared even if
`dense` is not listed. Results are rewritten after every finished
run, so an interrupted comparison still has a table, and a re-run skips what finished; a run that fails
after its retries is listed in results.json and table.md, and the command then exits with an error. The
`compare` section may change between invocations (other sections may not): adding variants or seeds trains
only what is new, and rows of earlier invocations stay in the table (so a costly variant can run for fewer
seeds than the rest; the table's seeds column says how many).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from contextlib import ExitStack
from pathlib import Path

from ..config import Config, ConfigError
from ..data import dataset_from_config
from ..executors import Failed, make_executor, raise_failures
from ..files import write_json
from ..models.ift import iso_config
from ..recipes import METHODS, REGISTRY, MethodContext, preflight, sections_used
from ..report.plots import comparison_plot
from ..train import claim_run_dir
from . import accuracy_spread, loaders_for, model_builder, variant_name, write_summary

# named recipes: method plus the sparsity settings that define them
VARIANTS: dict[str, dict] = {
    "static-uniform": {"method": "static", "criterion": "random", "allocation": "uniform"},
    "static-erk": {"method": "static", "criterion": "random", "allocation": "erk"},
    "snip": {"method": "static", "criterion": "snip", "allocation": "global"},
    "oneshot-lamp": {"method": "oneshot", "criterion": "lamp", "allocation": "global"},
    "maskspar": {"method": "maskspar", "allocation": "uniform"},  # the reference's shipped uniform channel ratio
    # Sparse-IFT at the dense network's MACs (the compare sparsity is the transformation's s)
    **{f"{family}-{name}": {**recipe, "ift": family} for family in ("wide", "parallel") for name, recipe in (
        ("static", {"method": "static", "criterion": "random", "allocation": "erk"}),
        ("rigl", {"method": "rigl", "allocation": "erk"}),
        ("rigl-uniform", {"method": "rigl", "allocation": "uniform"}))},  # the Sparse-IFT paper's allocation
    # N:M from scratch at 1:M, M from the compare sparsity (0.875: 1:8): SR-STE against progressive mask decay
    "nm-srste": {"method": "nm", "nm": {"decay": "none"}},
    "nm-decay": {"method": "nm", "nm": {"decay": "exp"}},
    # RigL at other topology-update intervals than dst.update_every (the book ablates its 100 steps)
    **{f"rigl-every-{n}": {"method": "rigl", "dst": {"update_every": n}} for n in (25, 400)},
}


def _one_in(sparsity: float) -> str:
    """The 1:M pattern of an N:M variant's compare sparsity (1 - 1/M)."""
    m = round(1 / (1 - sparsity))
    if abs(1 - 1 / m - sparsity) > 1e-9:
        raise ConfigError(f"an N:M variant's compare sparsity must be 1 - 1/M (0.75, 0.875, 0.9375, ...), got {sparsity:g}")
    return f"nm:1:{m}"


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
    settings = dict(settings)
    ift = dataclasses.replace(cfg.ift, family=settings.pop("ift", "none"), sparsity=None)
    nm = dataclasses.replace(cfg.nm, **settings.pop("nm", {}))
    dst = dataclasses.replace(cfg.dst, **settings.pop("dst", {}))
    if settings["method"] == "nm":
        settings["kind"] = _one_in(sparsity)
    return dataclasses.replace(cfg, seed=seed, ift=ift, nm=nm, dst=dst,
                               sparsity=dataclasses.replace(cfg.sparsity, sparsity=sparsity, **settings))


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation of the test accuracy per (variant, sparsity), in first-seen order."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["sparsity"]), []).append(r)
    table = []
    for (variant, sparsity), rs in groups.items():
        table.append({"variant": variant, "sparsity": sparsity, "seeds": len(rs),
                      **accuracy_spread([r["test_acc"] for r in rs]),
                      "density": statistics.fmean(r["weight_density"] for r in rs),
                      "macs": statistics.fmean(r["macs_effective"] for r in rs),
                      "params": statistics.fmean(r["params_nonzero"] for r in rs),
                      "train_seconds": statistics.fmean(r["train_seconds"] for r in rs)})
    return table


def markdown_table(table: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "| variant | sparsity | test acc % (mean ± std) | min–max | seeds | weight density | "
             "MMACs (non-zero) | params (non-zero) | train s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in sorted(table, key=lambda t: (t["sparsity"], -t["acc_mean"])):
        lines.append(f"| {t['variant']} | {100 * t['sparsity']:g}% | {100 * t['acc_mean']:.2f} ± {100 * t['acc_std']:.2f} | "
                     f"{100 * t['acc_min']:.2f}–{100 * t['acc_max']:.2f} | {t['seeds']} | {t['density']:.4f} | "
                     f"{t.get('macs', 0) / 1e6:.2f} | {t.get('params', 0):,.0f} | {t['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _write_results(out: Path, cfg: Config, rows: list[dict], dataset: str, failed: list[Failed]) -> None:
    table = aggregate(rows)
    title = f"{cfg.model.name} on {dataset}: accuracy by method and sparsity"
    write_json(out / "results.json", {"name": cfg.name, "dataset": dataset, "model": cfg.model.name, "rows": rows,
                                      "table": table, "failed": [dataclasses.asdict(f) for f in failed]})
    text = markdown_table(table, title)
    if failed:
        text += "\n## Failed runs (not in the table)\n\n" + "".join(f"- {f.trial}: {f.error} ({f.attempts} attempts)\n"
                                                                 for f in failed)
    (out / "table.md").write_text(text)
    comparison_plot(table, out / "accuracy.png", title)


def _validate(c) -> None:
    if not c.variants or not c.seeds:
        raise ConfigError("compare.variants and compare.seeds must not be empty")
    for s in c.sparsities:
        if not 0 < s < 1:
            raise ConfigError(f"compare.sparsities must lie in (0, 1), got {s}")


@dataclasses.dataclass(frozen=True)
class CompareJob:
    """One run of the comparison: a trial for `run.executor`."""

    cfg: Config  # the variant's config; its seed orders the data and initialises the model
    variant: str
    data_seed: int  # the comparison's seed: the data (and its subset) are the same for every job
    run_dir: str
    show_progress: bool = False

    @property
    def name(self) -> str:
        return variant_name(self.variant, self.cfg.sparsity.sparsity, self.cfg.ift.family)


def run_job(job: CompareJob) -> dict:
    """Train one variant at one sparsity and seed (resumable); its row of the results."""
    run_dir = Path(job.run_dir)
    ds = dataset_from_config(job.cfg.data, seed=job.data_seed)
    cfg = iso_config(job.cfg, ds)  # Sparse-IFT variants: the mask sparsity at the dense network's MACs
    train_loader, test_loader = loaders_for(cfg, ds)
    seed_dir = run_dir / "compare" / f"seed-{cfg.seed}"
    ctx = MethodContext(cfg, model_builder(cfg, ds), train_loader, test_loader, seed_dir / job.name, run_dir,
                        pretrain_dir=seed_dir / "dense", show_progress=job.show_progress, data_seed=job.data_seed,
                        metrics_file=seed_dir / job.name / "metrics.jsonl")  # jobs may run in parallel
    summary = write_summary(ctx, METHODS[cfg.sparsity.method](ctx), ds, job.name)
    return {"variant": job.variant, "sparsity": job.cfg.sparsity.sparsity, "seed": cfg.seed,
            "mask_sparsity": cfg.sparsity.sparsity,
            "test_acc": summary["final_test_acc"], "weight_density": summary.get("weight_density", 1.0),
            "params_nonzero": summary["params_nonzero"], "macs_effective": summary["macs_effective"],
            "train_seconds": summary["train_seconds"], "machine": summary["machine"],
            **({"sittings": summary["sittings"]} if len(summary.get("sittings", [])) > 1 else {})}  # resumed ones


def _jobs(cfg: Config) -> list[tuple[int, str, float]]:
    """(seed, variant, sparsity) of every run the `compare` section lists, with the dense runs the methods that
    prune a trained network start from (trained once per seed and shared: a trial of its own, reported too)."""
    c = cfg.compare
    _validate(c)
    variants = list(c.variants)
    if "dense" not in variants and any(REGISTRY[variant_config(cfg, v, 0.5, cfg.seed).sparsity.method].starts_from_dense
                                       for v in variants):
        variants.insert(0, "dense")
    return [(seed, v, s) for seed in c.seeds for v in variants for s in ([0.0] if v == "dense" else c.sparsities)]


def _unrecorded(jobs: list[tuple[int, str, float]], recorded: set, cfg: Config) -> list[tuple[int, str, float]]:
    """The jobs not in `recorded`, and the dense runs the methods among them that prune a trained network start
    from (a recorded dense run's checkpoint may be gone with the folder that held it)."""
    todo = [j for j in jobs if j not in recorded]
    needs_dense = {seed for seed, v, s in todo
                   if v != "dense" and REGISTRY[variant_config(cfg, v, s, seed).sparsity.method].starts_from_dense}
    return [j for j in jobs if j not in recorded or (j[1] == "dense" and j[0] in needs_dense)]


@dataclasses.dataclass
class _Queued:
    """One comparison in a queue: its config, what it still trains, and its results as they come in."""

    cfg: Config
    jobs: list[tuple[int, str, float]]
    dataset: str
    out: Path | None = None
    rows: dict = dataclasses.field(default_factory=dict)
    failed: list[Failed] = dataclasses.field(default_factory=list)


def _queued(cfg: Config | list[Config], recorded: set) -> _Queued:
    """A comparison's parts checked (they may differ in their `compare` sections only), its jobs listed and
    preflighted: unknown names, bad settings and a bad data path fail before anything is written."""
    parts = [cfg] if isinstance(cfg, Config) else list(cfg)
    cfg = parts[0]
    if others := [i for i, p in enumerate(parts) if dataclasses.replace(p, compare=cfg.compare) != cfg]:
        raise ConfigError(f"the parts of one comparison may differ in their compare sections only (part {others[0]} "
                          "differs elsewhere)")
    jobs = _unrecorded(list(dict.fromkeys(job for part in parts for job in _jobs(part))), recorded, cfg)
    if not jobs:
        return _Queued(cfg, [], "")  # every trial recorded: nothing to train
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    for v, s in dict.fromkeys((v, s) for _, v, s in jobs):
        preflight(iso_config(variant_config(cfg, v, s, cfg.seed), ds), ds)
    return _Queued(cfg, jobs, ds.name)


def _claim(q: _Queued, stack: ExitStack) -> Path:
    """Hold the comparison's run directory for the queue's lifetime; load the rows earlier invocations left."""
    configs = [variant_config(q.cfg, v, 0.5, q.cfg.seed) for v in dict.fromkeys(v for _, v, _ in q.jobs)]
    methods = list(dict.fromkeys(c.sparsity.method for c in configs))
    ift = ("ift",) if any(c.ift.family != "none" for c in configs) else ()
    run_dir = stack.enter_context(claim_run_dir(q.cfg, extendable=("compare",),
                                                sections=sections_used(methods, "compare", "run", *ift)))
    q.out = run_dir / "compare"
    q.out.mkdir(exist_ok=True)
    # rows of earlier invocations stay (a variant run for fewer seeds, say); rows of this one replace them
    results = q.out / "results.json"
    q.rows = {(r["seed"], r["variant"], r["sparsity"]): r
              for r in (json.loads(results.read_text())["rows"] if results.exists() else [])}
    return run_dir


def run_compare(cfg: Config | list[Config], show_progress: bool = True,
                recorded: set[tuple[int, str, float]] = frozenset()) -> Path:
    """Train everything the `compare` section lists, as trials of `run.executor`; returns the directory holding
    table.md and accuracy.png. Failed trials are listed in results.json and table.md, then raised. A list of
    configs that differ in their `compare` sections only (one run, several invocations' worth of work) is one
    queue: no worker idles at the end of one part while the next waits. Trials (seed, variant, sparsity) in
    `recorded` finished elsewhere (the book's committed rows) and are not trained, but a dense network that a
    trial still to train starts from."""
    return run_comparisons([(cfg, recorded)], show_progress)[0]


def run_comparisons(comparisons: list[tuple[Config | list[Config], set]], show_progress: bool = True) -> list[Path]:
    """Several comparisons (other runs: other models, say), each given as `run_compare`'s `cfg` and `recorded`,
    as one queue on one executor (their `run` sections must agree): a later comparison's trainings take the workers
    an earlier one leaves idle at its end. Each keeps its run directory and results; returns their directories."""
    queue = [_queued(cfg, recorded) for cfg, recorded in comparisons]
    busy = [q for q in queue if q.jobs]
    if not busy:
        return [q.cfg.run_dir / "compare" for q in queue]
    if len({repr(q.cfg.run) for q in busy}) > 1:
        raise ConfigError("comparisons queued together run on one executor: their run sections must agree")
    if len({q.cfg.run_dir for q in busy}) < len(busy):
        raise ConfigError("two comparisons of one run directory: give them as the parts of one comparison")
    executor = make_executor(busy[0].cfg.run)
    with ExitStack() as stack:
        order: list[tuple[_Queued, CompareJob]] = []
        for q in busy:
            run_dir = _claim(q, stack)
            trials = [CompareJob(variant_config(q.cfg, v, s, seed), v, q.cfg.seed, str(run_dir.resolve()),
                                 executor.trial_bars(show_progress)) for seed, v, s in q.jobs]
            # the dense runs first; a method that prunes a trained network waits for its own seed's dense run only
            order += [(q, t) for t in trials if t.variant == "dense"] + [(q, t) for t in trials if t.variant != "dense"]
        dense_of = {(id(q), t.cfg.seed): i for i, (q, t) in enumerate(order) if t.variant == "dense"}
        after = [dense_of.get((id(q), t.cfg.seed)) if t.variant != "dense"
                 and REGISTRY[t.cfg.sparsity.method].starts_from_dense else None for q, t in order]

        def finished(i: int, row) -> None:
            q, job = order[i]
            name = f"seed {job.cfg.seed} {job.name}"
            if isinstance(row, Failed):
                q.failed.append(dataclasses.replace(row, trial=name))
            else:
                q.rows[row["seed"], row["variant"], row["sparsity"]] = row
                if show_progress:
                    print(f"compare: {name}{f' ({q.cfg.name})' if len(busy) > 1 else ''}: test acc "
                          f"{100 * row['test_acc']:.2f}%", flush=True)
            _write_results(q.out, q.cfg, list(q.rows.values()), q.dataset, q.failed)

        executor.map(run_job, [t for _, t in order], label="compare", progress=show_progress, on_finish=finished,
                     after=after)
        raise_failures([f for q in busy for f in q.failed], "comparison runs")
    return [q.out or q.cfg.run_dir / "compare" for q in queue]
