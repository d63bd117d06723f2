"""`sparsearch book`: run what the book is missing (`runs.py` lists it), at CPU scale on CIFAR-10 or at `--scale gpu`,
then write one document (`docs/RESULTS.md` plus plots, `document.py`) that gives for each claim the paper's claim,
our numbers and a verdict by the rules fixed before the runs, and beside it the ledger (`ledger.py`) of what finished,
which a later sitting without the `--out-dir` folder reads instead of training it again. Independent trials (comparison runs, random-search
samples, soup ingredients) go to `--executor`: two at once, a core each, on this machine's two cores.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..config import Config
from ..errors import SparsearchError
from ..executors import stop_ray
from ..files import read_json, write_atomic
from ..train import exclusive
from .document import Committed, chapters_of, write_book
from .ledger import kept_path, ledger_path, record, recorded, trial
from .runs import (
    ARCHITECTURE_JSON,
    BENCH_JSON,
    CIFAR10,
    COMMANDS,
    FIVE_SEEDS,
    INFERENCE_BATCHES,
    INFERENCE_JSON,
    MEASURED,
    MORE_SEEDS,
    ONE_QUEUE,
    RUNTIME_ARGS,
    SCALES,
    V3,
    V3_PART,
    bench_result,
    finished,
    load,
    so_far,
)
from .verdicts import Chapter


def committed_rows(cfgs: dict[str, list[Config]], output: Path, scale: str) -> Committed:
    """What the ledger holds (`ledger.py`): each comparison run's rows (refused if of another config), and the
    timings it keeps, by their path under `--out-dir`."""
    committed: Committed = {name: recorded(ledger_path(output, scale, name), invocations[0])
                            for name, invocations in cfgs.items() if COMMANDS[name] == "compare"}
    for name in MEASURED:
        if (path := kept_path(output, scale, name)).exists():
            committed[name.as_posix()] = read_json(path)
    return committed


def record_rows(cfgs: dict[str, list[Config]], out_dir: Path, output: Path, scale: str, committed: Committed) -> None:
    """Copy what finished under `out_dir` into the ledger (and `committed`), to be committed with the document:
    the comparisons' rows and the finished timings."""
    for name in cfgs:
        if COMMANDS[name] == "compare":
            results = so_far(name, out_dir, committed)
            if new := record(ledger_path(output, scale, name), cfgs[name][0], results):
                committed[name] = results["rows"]
                print(f"book: {new} new row(s) of {name} recorded in {ledger_path(output, scale, name)}", flush=True)
    for name in MEASURED:
        measured = bench_result(out_dir, name) if (out_dir / name).exists() else None
        if measured and measured != committed.get(name.as_posix()):
            write_atomic(kept_path(output, scale, name), json.dumps(measured) + "\n")  # whole: per-op tables too
            committed[name.as_posix()] = measured


def _run_chapters(cfgs: dict[str, list[Config]], out_dir: Path, show_progress: bool, scale: str,
                  output: Path, committed: Committed) -> None:
    from ..bench import main as bench
    from ..bench.common import wait_for_quiet
    from ..pipeline.compare import run_comparisons
    from ..pipeline.run import run_all

    # the timings first: an hour of a quiet machine, kept by the ledger, where the trainings take many sittings
    if not bench_result(out_dir, BENCH_JSON, committed):
        stop_ray()  # a quiet machine for the timings
        wait_for_quiet()
        print("book: bench runtime", flush=True)
        bench("runtime", [*RUNTIME_ARGS, "--out", str(out_dir / BENCH_JSON)])
    if not bench_result(out_dir, ARCHITECTURE_JSON, committed):
        stop_ray()
        wait_for_quiet()
        print("book: bench architecture", flush=True)
        bench("architecture", ["--out", str(out_dir / ARCHITECTURE_JSON)])
    record_rows(cfgs, out_dir, output, scale, committed)
    # a claim whose three seeds an earlier sitting finished takes its seeds 3 and 4 before the queues go on: its
    # chapter completes sooner, and a sitting's end interrupts those hour-long trainings, not the longer ones after
    more_seeds(cfgs, out_dir, scale, show_progress, output, committed)
    queued = [name for name in cfgs if name in ONE_QUEUE]
    for name, invocations in cfgs.items():
        if name in queued[1:]:
            continue  # trained in the first one's queue
        together = queued if name in queued else [name]
        for each in together:
            cfg = cfgs[each][0]
            print(f"book: {each} ({COMMANDS[each]}, {len(cfgs[each])} part(s), {cfg.train.epochs} epochs on "
                  f"{cfg.train.device})", flush=True)
        if COMMANDS[name] == "compare":  # one queue: no core idles between the parts, nor between `together`
            run_comparisons([(cfgs[each], {trial(r) for r in committed[each]}) for each in together],
                            show_progress=show_progress)
            if name == V3 and not bench_result(out_dir, INFERENCE_JSON, committed):
                claim_8 = invocations[V3_PART["claim 8"]].compare
                # now, while seed 0's networks are here: a later sitting's checkout may not have them
                ift_inference(out_dir, len(claim_8.variants) * len(claim_8.sparsities), invocations[0])
            record_rows(cfgs, out_dir, output, scale, committed)
        else:
            for cfg in invocations:
                run_all(cfg, show_progress=show_progress)
        more_seeds(cfgs, out_dir, scale, show_progress, output, committed)  # as soon as a claim's seeds are in


def wants_more_seeds(verdict: str) -> bool:
    """RULES.md: an inconclusive verdict whose power note says its seeds were too few."""
    return "**inconclusive**" in verdict and "too few seeds" in verdict


def more_seeds(cfgs: dict[str, list[Config]], out_dir: Path, scale: str, show_progress: bool, output: Path,
               committed: Committed) -> list[str]:
    """The second stage: each claim of MORE_SEEDS whose chapter wants more seeds trains seeds 3 and 4 (finished ones
    are skipped, so a resumed book goes on where it stopped); returns the claims extended."""
    from ..pipeline.compare import run_compare

    wanted: dict[str, list[Config]] = {}  # run -> the parts to extend, trained as one queue
    extended = []
    for label, chapter in chapters_of(cfgs, out_dir, scale, committed)[0]:
        if label in MORE_SEEDS and isinstance(chapter, Chapter) and wants_more_seeds(chapter.verdict):
            name, part, variants = MORE_SEEDS[label]
            cfg = cfgs[name][part]
            cfg = dataclasses.replace(cfg, compare=dataclasses.replace(cfg.compare, seeds=FIVE_SEEDS,
                                                                       variants=variants or cfg.compare.variants))
            if finished(name, {name: [cfg]}, out_dir, None, committed):
                continue  # five seeds in already: the verdict stands as it is
            print(f"book: claim {label} is inconclusive on three seeds, too few: seeds 3 and 4 ({name})", flush=True)
            wanted.setdefault(name, []).append(cfg)
            extended.append(label)
    for name, parts in wanted.items():
        run_compare(parts, show_progress=show_progress, recorded={trial(r) for r in committed[name]})
        record_rows(cfgs, out_dir, output, scale, committed)
    return extended


def ift_inference(out_dir: Path, wide: int, cfg: Config) -> dict | None:
    """Seed 0's `wide` Sparse-IFT networks and the dense one (`cfg`'s model), compiled at each of INFERENCE_BATCHES
    on 2 threads: network -> {"batch-<b>": {engine, ms}} in INFERENCE_JSON (kept: a second book reuses it). The
    dense network is timed at its initialisation when its folder is gone (an earlier sitting's, its row kept by the
    ledger): its time does not depend on its weights. None, with a line saying why, while a Sparse-IFT network is
    not here, trained: a partial table would compare other things."""
    from ..bench.common import wait_for_quiet
    from ..host import OtherLoad
    from ..pipeline.compile import compile_untrained, run_compile

    out = out_dir / INFERENCE_JSON
    if out.exists():
        return read_json(out)
    seed_0 = out.parent / "compare" / "seed-0"
    networks = sorted(p for p in seed_0.glob("wide-*") if (p / "summary.json").exists())
    if len(networks) != wide:
        print(f"book: claim 8's inference timings wait for seed 0's {wide} Sparse-IFT networks, trained, under "
              f"{seed_0} ({len(networks)} there; one whose folder is gone trains again once its row leaves the "
              "ledger)", flush=True)
        return None
    dense = seed_0 / "dense"
    trained = (dense / "summary.json").exists()
    stop_ray()
    wait_for_quiet()  # compile times its engines
    result: dict = {}
    for where in [dense, *networks]:
        for batch in INFERENCE_BATCHES:
            print(f"book: compile {where.name} at batch {batch}", flush=True)
            load = OtherLoad()
            plan = (run_compile(where, batch=batch, threads=2) if where != dense or trained
                    else compile_untrained(cfg, batch=batch, threads=2))
            other = load.cores()
            result.setdefault(where.name, {})[f"batch-{batch}"] = {
                "engine": plan["engine"], "ms": plan["times_ms"][plan["engine"]]["median"],
                "other_cores": None if other is None else round(other, 2),
                **({} if where != dense or trained else {"weights": "initial"})}
    write_atomic(out, json.dumps(result, indent=2))
    return result


def run_book(out_dir: str | Path = "runs", output: str | Path = "docs/RESULTS.md", executor: str = "local",
             workers: int = 2, data_path: str | None = None, show_progress: bool = True, scale: str = "cpu",
             write_only: bool = False) -> Path:
    """Run what is missing under `out_dir` (nothing with `write_only`), then write the document from every chapter
    whose runs have finished; the others are listed as pending."""
    out_dir, output = Path(out_dir), Path(output)
    trials = [f"run.executor={executor}", f"run.workers={workers}"]
    cfgs = {name: load(name, out_dir, trials, data_path, scale) for name in SCALES[scale]}  # checked before any work
    started = time.time()
    command = (f"sparsearch book --out-dir {out_dir} --data-path {data_path or CIFAR10} --executor {executor} "
               f"--workers {workers} --scale {scale}")  # what reruns it, so with the data even after --write-only
    if not write_only and data_path is None:
        raise SparsearchError("the book trains on CIFAR-10: give its path with --data-path (an image-folder archive "
                              f"such as {CIFAR10}, or the python batches)")
    if not write_only and scale == "gpu" and not _has_cuda():  # before the benches' half hour of waiting and timing
        raise SparsearchError("--scale gpu trains on CUDA and this machine has none: run it where a GPU is (its rows "
                              "come back through the ledger), or write the document from its runs with --write-only")
    committed = committed_rows(cfgs, output, scale)
    if write_only:  # reads finished results only (each written whole), writes nothing under out_dir: no lock
        if not any((out_dir / name).is_dir() for name in cfgs) and not any(committed.values()):
            raise SparsearchError(f"{out_dir} holds none of the book's runs ({', '.join(cfgs)}) and its ledger "
                                  f"({ledger_path(output, scale, '*')}) none of their rows: nothing to write from")
        record_rows(cfgs, out_dir, output, scale, committed)
        return write_book(cfgs, out_dir, output, command, None, scale, committed)
    with exclusive(out_dir):  # one book at a time per out_dir; each run inside claims its own directory too
        _run_chapters(cfgs, out_dir, show_progress, scale, output, committed)
        return write_book(cfgs, out_dir, output, command, time.time() - started, scale, committed)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
