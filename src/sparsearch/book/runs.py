"""`sparsearch book`: rerun, at CPU scale on CIFAR-10, the comparisons the seed papers make, and write one document
(`docs/RESULTS.md` plus plots) that gives for each claim the paper's claim, our numbers and whether they reproduce it.

The runs below are ordinary `sparsearch run` / `compare` runs and one `bench runtime`, under `--out-dir`. They resume
and skip finished work, so a second invocation (or one after a crash) only redoes what is missing, and runs
finished earlier with the same configs are reused: delete their directories to measure from scratch. Independent
trials (comparison runs, random-search samples, soup ingredients) go to `--executor` (Ray: both cores).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..config import Config, load_config
from ..errors import SparsearchError
from ..executors import stop_ray
from ..files import read_json, write_atomic
from ..host import machine
from ..train import exclusive
from .architecture import dass_vs_mobilenet
from .chapters import (
    compare_seconds,
    dass_vs_darts,
    erk_vs_uniform,
    imp_vs_oneshot,
    random_search_vs_random_configuration,
    rigl_set_static,
    run_seconds,
    soup_vs_best_ingredient,
    sparse_ift,
    speedup,
)
from .verdicts import Chapter, hours, rules_citation

# the searched cell (claims 1, 2): configs/cifar10-dass-cpu.yaml (beside this module) cut to a 4,000-image subset and 1 epoch per phase
SEARCH_SIZE = ["data.train_subset=4000", "train.epochs=3", "search.pretrain_epochs=1", "search.finetune_epochs=1",
               "search.random_samples=6", "search.random_epochs=3", "hydra.prune_epochs=1", "hydra.finetune_epochs=1"]
# name: (command, config file, one list of overrides per invocation)
SEEDS = "run.search_seeds=[0, 1, 2]"  # every claim on three seeds (claims 1, 2: search seeds, a search per sparsity)
RUNS: dict[str, tuple[str, str, list[list[str]]]] = {
    "book-search": ("run", "cifar10-dass-cpu.yaml", [["name=book-search", *SEARCH_SIZE, SEEDS]]),
    # one random sample of the same space, trained the same way: a random sparse configuration (claim 2)
    "book-random-configuration": ("run", "cifar10-dass-cpu.yaml",
                                  [["name=book-random-configuration", *SEARCH_SIZE, SEEDS, "run.methods=[random]",
                                    "search.random_samples=1"]]),
    "compare-cifar10": ("compare", "compare-cifar10.yaml", [[]]),
    # the cheap variants (one training each) first, then IMP and soups (several trainings each), all on three seeds
    "sparse-training-cifar10": ("compare", "sparse-training-cifar10.yaml",
                                [["compare.seeds=[0, 1, 2]", "compare.variants=[dense, static-erk, set, rigl, granet]"],
                                 ["compare.seeds=[0, 1, 2]"]]),
    # Sparse Wide at the dense network's MACs, 3 seeds (claim 8)
    "sparse-ift-cifar10": ("compare", "sparse-ift-cifar10.yaml", [[]]),
}
INFERENCE_BATCHES = (1, 32)
# `--scale gpu`: the same chapters at paper-like budgets on CUDA (full CIFAR-10 training set, full-width ResNet-20,
# 160 epochs; the searches on the reference's DASS schedule), bf16 autocast and channels-last
GPU = ["train.device=cuda", "train.amp=true", "train.channels_last=true", "train.threads=null", "data.train_subset=null"]
FULL = [*GPU, "model.kwargs={width: 16}", "train.epochs=160", "oneshot.finetune_epochs=40", "hydra.prune_epochs=20",
        "hydra.finetune_epochs=40", "gmp.frequency=100", "dst.update_every=100", "soup.retrain_epochs=40"]
GPU_RUNS: dict[str, tuple[str, str, list[list[str]]]] = {
    "book-search": ("run", "cifar10-dass-paper.yaml", [["name=book-search", SEEDS, *GPU]]),
    "book-random-configuration": ("run", "cifar10-dass-paper.yaml",
                                  [["name=book-random-configuration", SEEDS, *GPU, "run.methods=[random]",
                                    "search.random_samples=1"]]),
    **{name: (command, config, [[*o, *FULL] for o in invocations])
       for name, (command, config, invocations) in RUNS.items() if command == "compare"},
}
SCALES = {"cpu": RUNS, "gpu": GPU_RUNS}
RUNTIME_ARGS = ["--threads", "1", "2", "--trials", "5", "--repeats", "3"]
BENCH_JSON = Path("book-runtime") / "runtime.json"  # under --out-dir
ARCHITECTURE_JSON = Path("book-runtime") / "architecture.json"  # claim 7 in the paper's quantity
INFERENCE_JSON = Path("sparse-ift-cifar10") / "inference.json"  # under --out-dir


CONFIGS = Path(__file__).with_name("configs")  # the book's configs travel with the package, not the working folder


def _load(name: str, out_dir: Path, executor: list[str], data_path: str | None, scale: str = "cpu") -> list[Config]:
    _, config, invocations = SCALES[scale][name]
    extra = [f"out_dir={out_dir}", *executor] + ([f"data.path={data_path}"] if data_path else [])
    return [load_config(CONFIGS / config, [*overrides, *extra]) for overrides in invocations]


def _run_chapters(cfgs: dict[str, list[Config]], out_dir: Path, show_progress: bool) -> None:
    from ..bench import architecture as architecture_bench
    from ..bench import runtime as runtime_bench
    from ..pipeline.compare import run_compare
    from ..pipeline.run import run_all

    for name, invocations in cfgs.items():
        for cfg in invocations:
            print(f"book: {name} ({RUNS[name][0]}, {cfg.train.epochs} epochs on {cfg.train.device})", flush=True)
            (run_all if RUNS[name][0] == "run" else run_compare)(cfg, show_progress=show_progress)  # same at any scale
    if not _bench(out_dir):
        stop_ray()  # a quiet machine for the timings
        print("book: bench runtime", flush=True)
        runtime_bench.main([*RUNTIME_ARGS, "--out", str(out_dir / BENCH_JSON)])
    if not _bench(out_dir, ARCHITECTURE_JSON):
        stop_ray()
        print("book: bench architecture", flush=True)
        architecture_bench.main(["--out", str(out_dir / ARCHITECTURE_JSON)])
    ift_inference(out_dir)


def ift_inference(out_dir: Path) -> dict:
    """Seed 0's Sparse-IFT networks and their dense one, compiled at each of INFERENCE_BATCHES on 2 threads:
    network -> {"batch-<b>": {engine, ms}} in INFERENCE_JSON (kept: a second book reuses it)."""
    from ..pipeline.compile import run_compile

    out = out_dir / INFERENCE_JSON
    if out.exists():
        return read_json(out)
    stop_ray()
    result: dict = {}
    for where in sorted((out.parent / "compare" / "seed-0").iterdir()):
        if where.name == "dense" or where.name.startswith("wide-"):
            for batch in INFERENCE_BATCHES:
                print(f"book: compile {where.name} at batch {batch}", flush=True)
                plan = run_compile(where, batch=batch, threads=2)
                result.setdefault(where.name, {})[f"batch-{batch}"] = {
                    "engine": plan["engine"], "ms": plan["times_ms"][plan["engine"]]["median"]}
    write_atomic(out, json.dumps(result, indent=2))
    return result


def run_book(out_dir: str | Path = "runs", output: str | Path = "docs/RESULTS.md", executor: str = "local",
             workers: int = 2, data_path: str | None = None, show_progress: bool = True, scale: str = "cpu",
             write_only: bool = False) -> Path:
    """Run what is missing under `out_dir` (nothing with `write_only`), then write the document from every chapter
    whose runs have finished; the others are listed as pending."""
    out_dir, output = Path(out_dir), Path(output)
    trials = [f"run.executor={executor}", f"run.workers={workers}"]
    cfgs = {name: _load(name, out_dir, trials, data_path, scale) for name in RUNS}  # all checked before any work
    started = time.time()
    command = f"sparsearch book --out-dir {out_dir} --executor {executor} --workers {workers} --scale {scale}"
    if not write_only and data_path is None:
        raise SparsearchError("the book trains on CIFAR-10: give its path with --data-path (an image-folder archive "
                              "such as ../shared/data/cifar10-images.tar.xz, or the python batches)")
    if write_only:  # reads finished results only (each written whole), writes nothing under out_dir: no lock
        if not any((out_dir / name).is_dir() for name in RUNS):
            raise SparsearchError(f"{out_dir} holds none of the book's runs ({', '.join(RUNS)}): nothing to write from")
        return _write_book(cfgs, out_dir, output, command, None)
    with exclusive(out_dir):  # one book at a time per out_dir; each run inside claims its own directory too
        _run_chapters(cfgs, out_dir, show_progress)
        return _write_book(cfgs, out_dir, output, command, time.time() - started)


def _finished(name: str, cfgs: dict[str, list[Config]], out_dir: Path) -> dict | None:
    """A run's results once every invocation of it has finished (each method or variant on each of its seeds)."""
    command = RUNS[name][0]
    path = out_dir / name / ("results.json" if command == "run" else "compare/results.json")
    if not path.exists():
        return None
    results = read_json(path)
    try:
        keys = ("method", "search_seed") if command == "run" else ("variant", "seed")
        done = {(r[keys[0]], r[keys[1]]) for r in results["rows"]}
    except (KeyError, TypeError) as exc:
        raise SparsearchError(f"{path} is not a sparsearch results file (no {exc} in its rows); delete it to "
                              "recompute it") from None
    if command == "run":
        wanted = {(m, s) for c in cfgs[name] for m in c.run.methods for s in (c.run.search_seeds or [c.seed])}
    else:
        wanted = {(v, s) for c in cfgs[name] for v in c.compare.variants for s in c.compare.seeds}
    return results if wanted <= done else None


def _bench(out_dir: Path, name: Path = BENCH_JSON) -> dict | None:
    """A bench's results once it has finished (it writes its file as it goes, `complete` at the end)."""
    path = out_dir / name
    bench = read_json(path) if path.exists() else None
    return bench if bench and bench.get("complete") else None


def _chapters(cfgs: dict[str, list[Config]], out_dir: Path) -> tuple[list[Chapter | list[str]], float]:
    """Each chapter whose runs have finished, or the runs it waits for; and the CPU time every finished run recorded."""
    done = {name: _finished(name, cfgs, out_dir) for name in RUNS}
    done["book-runtime"] = _bench(out_dir)
    done["book-architecture"] = _bench(out_dir, ARCHITECTURE_JSON)
    ift_json = out_dir / INFERENCE_JSON
    done["sparse-ift-inference"] = read_json(ift_json) if ift_json.exists() else None
    st_dir = out_dir / "sparse-training-cifar10"
    if done["book-search"]:
        done["book-search"]["random_samples"] = cfgs["book-search"][0].search.random_samples
    specs = [(["book-search"], lambda: dass_vs_darts(done["book-search"])),
             (["book-search", "book-random-configuration"],
              lambda: random_search_vs_random_configuration(done["book-search"], done["book-random-configuration"])),
             (["compare-cifar10"], lambda: erk_vs_uniform(done["compare-cifar10"])),
             (["sparse-training-cifar10"], lambda: rigl_set_static(done["sparse-training-cifar10"])),
             (["sparse-training-cifar10"], lambda: imp_vs_oneshot(done["sparse-training-cifar10"], st_dir)),
             (["sparse-training-cifar10"], lambda: soup_vs_best_ingredient(done["sparse-training-cifar10"], st_dir)),
             (["book-runtime"], lambda: speedup(done["book-runtime"])),
             (["book-architecture"], lambda: dass_vs_mobilenet(done["book-architecture"])),
             (["sparse-ift-cifar10", "sparse-ift-inference"],
              lambda: sparse_ift(done["sparse-ift-cifar10"], done["sparse-ift-inference"]))]
    chapters = [build() if all(done[n] for n in needs) else [n for n in needs if not done[n]] for needs, build in specs]
    seconds = sum(run_seconds(done[n]["rows"]) if RUNS[n][0] == "run" else compare_seconds(done[n], out_dir / n)
                  for n in RUNS if done[n]) + sum((done[n] or {}).get("seconds", 0.0) for n in ("book-runtime", "book-architecture"))
    return chapters, seconds


def _write_book(cfgs: dict[str, list[Config]], out_dir: Path, output: Path, command: str, seconds: float | None) -> Path:
    chapters, cpu_seconds = _chapters(cfgs, out_dir)
    plots = {"search-accuracy.png": out_dir / "book-search" / "report" / "accuracy_vs_sparsity.png",
             "pruning-accuracy.png": out_dir / "compare-cifar10" / "compare" / "accuracy.png",
             "sparse-training-accuracy.png": out_dir / "sparse-training-cifar10" / "compare" / "accuracy.png",
             "runtime-speedup.png": (out_dir / BENCH_JSON).with_suffix(".png"),
             "sparse-ift-accuracy.png": out_dir / "sparse-ift-cifar10" / "compare" / "accuracy.png"}
    figures = output.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    shown = {c.plot for c in chapters if isinstance(c, Chapter)}
    for name, source in plots.items():
        if name in shown and source.exists():
            shutil.copyfile(source, figures / name)
    write_atomic(output, _document(chapters, figures.relative_to(output.parent), seconds, command, cpu_seconds))
    return output


def _document(chapters: list[Chapter | list[str]], figures: Path, seconds: float | None, command: str = "sparsearch book",
              cpu_seconds: float | None = None) -> str:
    info = machine()
    spent = (f" The book's runs recorded {hours(cpu_seconds)} in all (each trial's training on one of the cores, "
             "and the runtime bench's wall time where its file records it)." if cpu_seconds is not None else "")
    lines = ["# Results book", "", f"Command: `{command}`" + (" --write-only" if seconds is None else ""), "",
             "It reruns every comparison below at CPU scale on CIFAR-10 (`../shared/data/cifar10-images.tar.xz`) and "
             "reuses runs that already finished under `--out-dir` (delete them to measure from scratch).", "",
             f"Machine: {info['cpu']} ({', '.join(info['isa']) or 'no vector extensions listed'}), {info['threads']} "
             "threads" + (f", {info['gpu']}" if info.get("gpu") else "")
             + f", torch {info['torch']}. "
             + ("This invocation ran nothing: it wrote the document from the finished runs." if seconds is None else
                f"This invocation took {seconds / 60:.0f} min.") + spent, "",
             "Every network here is far from converged (minutes of CPU training, not GPU days): read the rankings and "
             "their spreads, not the absolute accuracies, and expect some published findings to need the full budget. "
             "Each chapter states its verdict rule, fixed before the numbers were run. Claims 3-5 follow the book v3 "
             f"rules ({rules_citation()}): paired effects with 95% intervals, a smallest effect of interest, "
             "reproduced / not reproduced / inconclusive, and no verdict where the dense network is below 85%; claims 6 "
             "and 8 take that dense anchor and keep book v2's rules otherwise, as claims 1, 2 and 7 do, until their v3 "
             "runs: \"disjoint seed ranges\" (every seed of one above every seed of the other) is v2's significance "
             "check, p = 0.05 with three seeds each.", "",
             "| # | claim | verdict |", "|---|---|---|"]
    for i, c in enumerate(chapters, 1):
        if isinstance(c, Chapter):
            lines.append(f"| {i} | {c.title} | {c.verdict.split(':')[0].strip('*')} |")
        else:
            lines.append(f"| {i} | (waits for {', '.join(c)}) | pending |")
    lines.append("")
    for i, c in enumerate(chapters, 1):
        lines += render_chapter(i, c, figures) if isinstance(c, Chapter) else [
            f"## {i}. Pending", "", f"Waits for the runs {', '.join(c)}: `{command}` runs them (it resumes).", ""]
    return "\n".join(lines)


def render_chapter(number: int, c: Chapter, figures: Path) -> list[str]:
    lines = [f"## {number}. {c.title}", "", f"**Paper:** {c.source}. **Claim:** {c.claim}", "",
             f"**Rule** (fixed before the numbers): {c.rule}", "", c.body.rstrip(), "",
             f"**Verdict:** {c.verdict}.", "", f"**Budget:** {c.budget}.", ""]
    return lines + ([f"![{c.title}]({(figures / c.plot).as_posix()})", ""] if c.plot else [])
