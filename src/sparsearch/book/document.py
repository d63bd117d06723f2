"""The results book's document: each chapter built from its finished runs (or marked pending, or deferred to the
GPU scale with its command), the header that names the machine and the rules, and the markdown."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..config import Config
from ..files import write_atomic
from ..host import machine
from .architecture import ACCURACY_RUNS, dass_vs_mobilenet, speedup
from .chapters import compare_seconds, deferred, erk_vs_uniform, imp_vs_oneshot, rigl_set_static, setting, soup_vs_best_ingredient, sparse_ift
from .nm import nm_decay_vs_srste
from .runs import (
    ARCHITECTURE_JSON,
    BENCH_JSON,
    CELLS,
    CIFAR10,
    COMMANDS,
    INFERENCE_JSON,
    V3,
    V3_PART,
    V3_PARTS,
    bench_result,
    cell_run,
    progress,
    so_far,
)
from .searches import cells_results, dass_vs_darts, published_cells, random_search_vs_random_configuration, run_seconds
from .verdicts import Chapter, Figure, hours, rules_citation

Labelled = list[tuple[str, "Chapter | list[str]"]]  # (the claim a chapter judges, the chapter or the runs it waits for)


Committed = dict  # what the book's ledger holds (`ledger.py`): run -> its rows; a timing's path -> its JSON


def chapters_of(cfgs: dict[str, list[Config]], out_dir: Path, scale: str = "cpu", committed: Committed | None = None
                ) -> tuple[Labelled, float]:
    """Each claim's chapter where its runs have finished, else the runs it waits for; and the CPU time the finished
    trainings recorded."""
    tally = {name: progress(name, cfgs, out_dir, None, committed) for name in cfgs}  # what a pending one has so far
    for i, part in enumerate(V3_PARTS):  # each claim with the anchor's invocation, which trains the dense network
        tally[f"{V3} ({part})"] = progress(V3, cfgs, out_dir, sorted({0, i}), committed)
    done = {key: results if have == wanted else None for key, (wanted, have, results) in tally.items()}
    done["book-runtime"] = bench_result(out_dir, BENCH_JSON, committed)
    done["book-architecture"] = bench_result(out_dir, ARCHITECTURE_JSON, committed)
    done["sparse-ift-inference"] = bench_result(out_dir, INFERENCE_JSON, committed)
    v3, at = (lambda part: done[f"{V3} ({part})"]), setting(cfgs[V3][0])
    ablation = done[f"{V3} (ablation)"]
    cells = [cell_run(g) for g in CELLS]
    gpu = scale == "gpu"
    specs = [("1", cells, lambda: published_cells({g: done[cell_run(g)] for g in CELLS}, setting(cfgs[cells[0]][0])))]
    if gpu:
        if done["book-search"]:
            done["book-search"]["random_samples"] = cfgs["book-search"][0].search.random_samples
        specs += [("1 (searched)", ["book-search"], lambda: dass_vs_darts(done["book-search"])),
                  ("2", ["book-search", "book-random-configuration"],
                   lambda: random_search_vs_random_configuration(done["book-search"], done["book-random-configuration"]))]
    else:
        specs.append(("2", [], lambda: deferred("search")))
    specs += [("3", [f"{V3} (claim 3)"], lambda: erk_vs_uniform(v3("claim 3"), at)),
              ("4", [f"{V3} (claim 4)"], lambda: rigl_set_static(v3("claim 4"), at, ablation,
                                                                         cfgs[V3][V3_PART["claim 4"]].dst.update_every)),
              ("5", ["imp-cifar10"] if gpu else [], lambda: imp_vs_oneshot(done["imp-cifar10"], done.get("dense-cifar10-480"))
               if gpu else deferred("imp")),
              ("6", ["soup-cifar10"] if gpu else [],
               lambda: soup_vs_best_ingredient(done["soup-cifar10"], out_dir / "soup-cifar10") if gpu else deferred("soup")),
              ("7", ["book-architecture"], lambda: dass_vs_mobilenet(
                  done["book-architecture"], {k: done[n] for k, n in ACCURACY_RUNS.items()} if gpu else None)),
              ("7 (kernels)", ["book-runtime"], lambda: speedup(done["book-runtime"])),
              ("8", [f"{V3} (claim 8)", "sparse-ift-inference"],
               lambda: sparse_ift(v3("claim 8"), done["sparse-ift-inference"], at)),
              ("9", ["vit-nm-cifar10"], lambda: nm_decay_vs_srste(done["vit-nm-cifar10"], setting(cfgs["vit-nm-cifar10"][0])))]
    chapters = [(label, build() if all(done[n] for n in needs) else
                 [_pending(n, *tally[n]) if n in tally else n for n in needs if not done[n]])
                for label, needs, build in specs]
    recorded = {n: tally[n][2] for n in cfgs}  # finished trials count, in unfinished runs too
    seconds = sum(run_seconds(r["rows"]) if COMMANDS[n] == "run" else compare_seconds(r)
                  for n, r in recorded.items() if r)
    return chapters, seconds + sum((done[n] or {}).get("seconds", 0.0) for n in ("book-runtime", "book-architecture"))


def _pending(name: str, wanted: set, have: set, results: dict | None) -> str:
    """A pending run's progress: its finished trainings, and the dense networks it trains to prune from where its
    variants leave them out (a cell's HYDRA rows wait on hours of dense training the count would not show)."""
    anchors = {r["seed"] for r in (results or {}).get("rows", []) if r.get("variant") == "dense"}
    extra = len(anchors - {k[-1] for k in wanted if k[0] == "dense"})
    return f"{name}: {len(have)} of {len(wanted)} finished" + (
        f" (and {extra} dense network{'s' * (extra > 1)} to prune from)" if extra else "")


def write_book(cfgs: dict[str, list[Config]], out_dir: Path, output: Path, command: str, seconds: float | None,
               scale: str = "cpu", committed: Committed | None = None) -> Path:
    """Write the document from every chapter whose runs have finished (under `out_dir` or in the ledger's
    `committed` rows); the others are pending."""
    chapters, cpu_seconds = chapters_of(cfgs, out_dir, scale, committed)
    drawn = {"cifar10-erk-uniform.png": V3, "cifar10-rigl-set-static.png": V3, "cifar10-sparse-ift.png": V3,
             "cells-accuracy.png": lambda: cells_results({g: so_far(cell_run(g), out_dir, committed) for g in CELLS}),
             "vit-nm-accuracy.png": "vit-nm-cifar10"}  # comparisons: drawn from their rows, committed ones too
    copied = {"search-accuracy.png": out_dir / "book-search" / "report" / "accuracy_vs_sparsity.png",
              "runtime-speedup.png": (out_dir / BENCH_JSON).with_suffix(".png")}
    figures = output.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    shown = {c.plot: c.figure for _, c in chapters if isinstance(c, Chapter)}
    for name, run in drawn.items():
        if name in shown and (results := run() if callable(run) else so_far(run, out_dir, committed)):
            _draw(shown[name], results, figures / name)
    for name, source in copied.items():
        if name in shown and source.exists():
            shutil.copyfile(source, figures / name)
    if effects := _effects(chapters):
        from ..report.plots import effects_plot

        effects_plot(effects, figures / EFFECTS, "the book's tests: each effect with the interval its rule read")
    rows = [r for name in cfgs if COMMANDS[name] == "compare" for r in (so_far(name, out_dir, committed) or {}).get("rows", [])]
    write_atomic(output, _document(chapters, figures.relative_to(output.parent), seconds, command, cpu_seconds,
                                   trained_on(rows)))
    return output


EFFECTS = "effects.png"


def _effects(chapters: Labelled) -> list[dict]:
    """Every test a verdict rests on, in points, labelled by its claim (the effects figure's rows)."""
    rows = []
    for label, c in chapters:
        tests = c.tested if isinstance(c, Chapter) else []
        for i, j in enumerate(tests):
            part = f" ({'abcdefgh'[i]})" if len(tests) > 1 else ""
            e = j.effect
            interval = f"{e.confidence:.0%} CI" if math.isfinite(e.high - e.low) else "one seed: no interval"
            rows.append({"label": f"claim {label}{part}: {j.label} ({interval})", "word": j.word, "kind": j.kind,
                         "estimate": 100 * e.estimate, "low": 100 * e.low, "high": 100 * e.high,
                         "smallest": 100 * j.smallest})
    return rows


def _draw(figure: Figure, results: dict, path: Path) -> None:
    from ..report.plots import comparison_plot, paired_seeds_plot

    where = f"{results.get('model', '?')} on {results.get('dataset', '?')}"
    if figure.kind == "paired":
        paired_seeds_plot(results["rows"], list(figure.variants), path, f"{where}: each seed under each method")
    else:
        comparison_plot([t for t in results["table"] if figure.variants is None or t["variant"] in figure.variants],
                        path, f"{where}: accuracy by method and sparsity")


def trained_on(rows: list[dict]) -> list[str]:
    """The machines the book's finished trainings recorded (the CPU changes between sittings), each once."""
    seen: dict[str, list[int]] = {}  # machine -> [trainings, of them transcribed]
    for row in rows:
        # a training resumed in several sittings is counted under all of its machines, in their order
        where = [s["machine"] for s in row.get("sittings", [])] or [row.get("machine") or {}]
        texts = [_machine_text(info) for info in where]
        text = " then ".join(t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1])
        counts = seen.setdefault(text, [0, 0])
        counts[0] += 1
        counts[1] += "provenance" in row
    return [f"{text}: {n} training{'s' * (n != 1)}" + (f" ({old} of them transcribed from an earlier sitting's documents, "
                                                        "their run folders lost: the ledger's rows say from where)" if old else "")
            for text, (n, old) in seen.items()]


def _machine_text(info: dict | None) -> str:
    if info is None:
        return "an unrecorded machine (checkpoints before 2026-12-06 did not name theirs)"
    return f"{info.get('cpu', '?')} ({', '.join(info.get('isa', [])) or 'no vector extensions listed'})"


def _without_bf16_units(trained_on: str) -> bool:
    return any("avx2" in where and "bf16" not in where for where in trained_on.split(" then "))


def _document(chapters: Labelled, figures: Path, seconds: float | None, command: str = "sparsearch book",
              cpu_seconds: float | None = None, machines: list[str] | None = None) -> str:
    info = machine()
    spent = (f" The book's runs recorded {hours(cpu_seconds)} in all (each trial's training on one of the cores, "
             "and the benches' wall time)." if cpu_seconds is not None else "")
    lines = ["# Results book", "", f"Command: `{command}{' --write-only' if seconds is None else ''}`", "",
             f"It reruns the seed papers' comparisons on CIFAR-10 (`{CIFAR10}`, the official "
             "images re-encoded as JPEG) and reuses what already finished: runs under `--out-dir`, and the rows and "
             "timings its ledger keeps beside this document (`results/rows/`, committed: a sitting's `--out-dir` does "
             "not outlive it; delete a row or a file there to measure it again); `docs/results/pilots.md` gives its "
             "schedule and cost.", "",
             f"Written on: {info['cpu']} ({', '.join(info['isa']) or 'no vector extensions listed'}), {info['threads']} "
             "threads" + (f", {info['gpu']}" if info.get("gpu") else "")
             + f", torch {info['torch']}. "
             + ("This invocation ran nothing: it wrote the document from the finished runs." if seconds is None else
                f"This invocation took {seconds / 60:.0f} min.") + spent
             + (f" The trainings ran on: {'; '.join(machines)}." if machines else "")
             + (" Where a CPU has no bf16 units (neither avx512_bf16 nor amx_bf16 listed), bf16 products ran on torch's "
                "kernels or, since 2026-12-07, in float32 on their bf16 operands (`train/precision.py`, 6-10x faster "
                "there): the same function up to summation order." if any(_without_bf16_units(m) for m in machines or []) else ""), "",
             f"Every verdict follows the book v3 rules ({rules_citation()}), fixed before the runs: paired effects with "
             "95% intervals, a smallest effect of interest per claim, reproduced / not reproduced / inconclusive, and no "
             "verdict where the dense network is too weak to say anything about the paper. Each chapter states its "
             "rule and sets the paper's setting and numbers beside ours.", "",
             "| claim | chapter | verdict |", "|---|---|---|"]
    for label, c in chapters:
        if isinstance(c, Chapter):
            lines.append(f"| {label} | {c.title} | {c.verdict.split(':')[0].strip('*')} |")
        else:
            lines.append(f"| {label} | (waits for {', '.join(c)}) | pending |")
    lines.append("")
    if _effects(chapters):
        lines += [f"![The book's tests]({(figures / EFFECTS).as_posix()})", "",
                  "Each test of accuracy a verdict rests on: the effect A - B in points with the interval its rule read (95%; 90% "
                  "for a TOST), coloured by its verdict; the bar on its row marks its smallest effect of interest.", ""]
    for label, c in chapters:
        lines += render_chapter(label, c, figures) if isinstance(c, Chapter) else [
            f"## Claim {label}: pending", "", f"Waits for the runs {', '.join(c)}: `{command}` runs them (it resumes).", ""]
    return "\n".join(lines)


def render_chapter(label: str, c: Chapter, figures: Path) -> list[str]:
    lines = [f"## Claim {label}: {c.title}", "", f"**Paper:** {c.source}. **Claim:** {c.claim}", "",
             f"**Rule** (fixed before the numbers): {c.rule}", "", c.body.rstrip(), "",
             f"**Verdict:** {c.verdict}.", "", f"**Budget:** {c.budget}.", ""]
    return lines + ([f"![{c.title}]({(figures / c.plot).as_posix()})", ""] if c.plot else [])
