"""The results book: each claim's verdict follows the numbers (reproduced, not, mixed), and the document lists them all.
The runs themselves are the ordinary `run` / `compare` / `bench runtime` commands, tested elsewhere."""

import json
from pathlib import Path

import pytest

from sparsearch.book import architecture, chapters, document, runs, searches, verdicts
from sparsearch.book.verdicts import Figure
from sparsearch.pipeline.run import seed_summary


def _search(dass: list[float], darts: list[float], random: list[float], seeds=(0, 1, 2), moved=True,
            jitter: float = 0.001) -> dict:
    """A `sparsearch run` results.json: each method's accuracy per sparsity, +-0.5 points over the search seeds (the
    same for every method: pairing removes it), and DASS's and random search's own per-seed `jitter`."""
    rows, searches = [], {}
    for method, accs in (("dass", dass), ("darts", darts), ("random", random)):
        for k, seed in enumerate(seeds):
            key = f"{method}/seed-{seed}"
            searches[key] = {"method": method, "verdict": None if method == "random" else
                             {"moved": moved, "deviation": 0.04 if moved else 0.01, "settled": False, "steps": 186}}
            for s, acc in zip((0.9, 0.95), accs):
                own = jitter * (1.0, -1.0, 0.5)[k] if method != "darts" else 0.0
                rows.append({"method": method, "sparsity": s, "test_acc": acc + 0.005 * (k - 1) + own, "search_seed": seed,
                             "search": key, "search_seconds": 100.0, "pretrain_seconds": 50.0, "train_seconds": 10.0,
                             "dense_test_acc": 0.6})
    return {"summary": "Tiny.", "rows": rows, "random_samples": 4, "searches": searches, "by_seed": seed_summary(rows),
            "search_seeds": list(seeds)}


@pytest.mark.parametrize("dass, jitter, verdict", [([0.5, 0.4], 0.001, "**reproduced**"),
                                                   ([0.3, 0.2], 0.001, "**not reproduced**"),
                                                   ([0.403, 0.303], 0.01, "**inconclusive**")])
def test_dass_verdict_follows_the_v3_rules(dass, jitter, verdict):
    chapter = searches.dass_vs_darts(_search(dass, [0.4, 0.3], [0.4, 0.3], jitter=jitter))
    assert chapter.verdict.startswith(verdict), chapter.verdict
    assert "over 90%, 95%" in chapter.verdict and "(95%, paired, n=3)" in chapter.body
    assert "reach 60.00% before pruning" in chapter.body


def test_a_search_that_did_not_move_is_no_evidence():
    chapter = searches.dass_vs_darts(_search([0.5, 0.4], [0.4, 0.3], [0.4, 0.3], moved=False))
    assert chapter.verdict.startswith("**no evidence**") and "dass/seed-0" in chapter.verdict
    assert "| dass/seed-0 | 0.010 | **no** | no | 186 |" in chapter.body


def test_one_search_seed_cannot_reproduce_the_claim():
    chapter = searches.dass_vs_darts(_search([0.5, 0.4], [0.4, 0.3], [0.4, 0.3], seeds=(0,)))
    assert chapter.verdict.startswith("**inconclusive**")  # ahead, but one seed has no interval


@pytest.mark.parametrize("searched, jitter, verdict", [([0.40, 0.40], 0.001, "**reproduced**"),  # equal, tight
                                                       ([0.45, 0.45], 0.001, "**not reproduced**"),  # 5 points ahead
                                                       ([0.40, 0.40], 0.02, "**inconclusive**")])  # too noisy to say
def test_random_search_no_better_is_an_equivalence_bound_not_a_default(searched, jitter, verdict):
    one = _search([0.4] * 2, [0.4] * 2, [0.40, 0.40], jitter=0.0)
    chapter = searches.random_search_vs_random_configuration(_search([0.4] * 2, [0.4] * 2, searched, jitter=jitter), one)
    assert chapter.verdict.startswith(verdict) and "best of 4" in chapter.body, chapter.verdict


def _table(variant: str, s: float, mean: float, lo: float, hi: float, seeds: int = 3) -> dict:
    return {"variant": variant, "sparsity": s, "acc_mean": mean, "acc_std": 0.01, "acc_min": lo, "acc_max": hi,
            "seeds": seeds}


def _results(accs: dict[tuple[str, float], list[float]], dense: float | None = 0.90) -> dict:
    """A comparison's results.json: each (variant, sparsity)'s accuracy per seed, and a dense anchor (None: none)."""
    if dense is not None:
        accs = {("dense", 0.0): [dense - 0.002, dense, dense + 0.002], **accs}
    rows = [{"variant": v, "sparsity": s, "seed": seed, "test_acc": acc, "train_seconds": 60.0}
            for (v, s), values in accs.items() for seed, acc in enumerate(values)]
    table = [_table(v, s, sum(vals) / len(vals), min(vals), max(vals), len(vals)) for (v, s), vals in accs.items()]
    return {"model": "resnet20", "rows": rows, "table": table}


def _shift(base: list[float], by: float, noise: float = 0.0) -> list[float]:
    return [b + by + noise * w for b, w in zip(base, (1.0, -1.0, 0.5))]


SEEDS = [0.60, 0.62, 0.64]  # three seeds' accuracies: seed-to-seed spread that pairing removes


@pytest.mark.parametrize("erk_at_98, dense, verdict", [
    (_shift(SEEDS, 0.02, 0.001), 0.90, "**reproduced**"),       # 2 points ahead on every seed
    (_shift(SEEDS, -0.01, 0.001), 0.90, "**not reproduced**"),  # 1 point behind: 0.5 points ruled out
    (_shift(SEEDS, 0.003, 0.01), 0.90, "**inconclusive**"),     # the interval holds 0 and 0.5 points
    (_shift(SEEDS, 0.02, 0.001), 0.45, "**no verdict**: proxy budget"),  # the dense anchor is below 85%
    (_shift(SEEDS, 0.02, 0.001), None, "**no verdict**: no dense network"),
])
def test_erk_vs_uniform_follows_the_v3_rules(erk_at_98, dense, verdict):
    results = _results({("static-erk", 0.9): _shift(SEEDS, 0.0), ("static-uniform", 0.9): SEEDS,
                        ("static-erk", 0.98): erk_at_98, ("static-uniform", 0.98): SEEDS}, dense)
    chapter = chapters.erk_vs_uniform(results)
    assert chapter.verdict.startswith(verdict), chapter.verdict
    # the effects figure shows a test only where the verdict rests on it, not behind a void anchor
    assert [j.word for j in chapter.tested] == ([] if "no verdict" in verdict else [verdict.strip("*")])
    assert "| 98% |" in chapter.body and "(95%, paired, n=3) |" in chapter.body  # each sparsity's effect, reported


@pytest.mark.parametrize("gain, verdict", [(0.03, "**reproduced**"), (-0.01, "**not reproduced**"),
                                           (0.002, "**inconclusive**")])
def test_soup_is_judged_against_the_ingredient_chosen_on_validation(tmp_path, gain, verdict):
    for seed, noise in enumerate((0.0, 0.004, -0.004)):  # per-seed spread of the soup's gain
        phases = [{"phase": p, "density": d, "uniform": {"test_acc": 0.40 + gain + noise}, "greedy": {"test_acc": 0.41},
                   # the validation's best ingredient (0.40 on test) is not the test set's best (0.45)
                   "ingredients": [{"val_acc": 0.50, "test_acc": 0.40}, {"val_acc": 0.49, "test_acc": 0.45}]}
                  for p, d in ((1, 0.3), (2, 0.1))]
        where = tmp_path / "compare" / f"seed-{seed}" / "soup-0.9"
        where.mkdir(parents=True)
        (where / "soup.json").write_text(json.dumps(phases))
    rows = [{"variant": "soup", "train_seconds": 120.0}, {"variant": "dense", "test_acc": 0.9, "train_seconds": 60.0}]
    chapter = chapters.soup_vs_best_ingredient({"rows": rows}, tmp_path)
    assert chapter.verdict.startswith(verdict), chapter.verdict
    assert "n=3" in chapter.verdict  # two phases a seed pooled: three seeds, not six comparisons
    assert "| seed 0, soup-0.9 | 1 | 0.300 | 42.50 | 40.00 |" in chapter.body and "Paper vs ours" in chapter.body


def test_document_lists_every_claim_with_its_verdict_and_figure():
    bench = {"machine": {"cpu": "cpu", "torch": "2"}, "args": {"trials": 5}, "results": [
        {"model": "resnet56", "batch": 32, "threads": 2, "sparsity": 0.95, "speedup": 3.0, "speedup_vs_fastest_dense": 1.75}]}
    chapters = [("1", searches.dass_vs_darts(_search([0.5, 0.4], [0.4, 0.3], [0.4, 0.3]))),
                ("7 (kernels)", architecture.speedup(bench))]
    text = document._document(chapters, Path("results"), 120)
    assert "| 1 | DASS cell vs DARTS cell at equal sparsity, as searched | reproduced |" in text
    assert "| 7 (kernels) | Measured speedup vs sparsity against the FLOP ideal | no evidence |" in text
    assert "## Claim 7 (kernels): Measured speedup" in text
    assert "| resnet56 | 32 | 2 | 1.75x |" in text and "![" in text and "results/runtime-speedup.png" in text
    assert "docs/results/RULES.md, sha256 " in text  # the rules the verdicts were judged under, by their hash
    from sparsearch.host import machine

    assert f"{machine()['cpu']} (" in text  # the CPU and its vector extensions: speed ratios are host-specific
    assert "the fastest dense engine" in architecture.speedup(bench).body


def test_a_paired_claims_figure_joins_each_seed_across_the_variants_its_test_compares(tmp_path):
    from sparsearch.report.plots import paired_seeds_plot

    rows = [{"variant": v, "sparsity": s, "seed": k, "test_acc": 0.7 + 0.01 * k}
            for v, sparsities in (("static-uniform", [0.9, 0.98]), ("static-erk", [0.9, 0.98]), ("rigl", [0.9]))
            for s in sparsities for k in range(3)]
    assert paired_seeds_plot(rows, ["static-uniform", "static-erk"], tmp_path / "a.png") == 0.98  # the highest shared
    assert paired_seeds_plot(rows, ["static-erk", "rigl"], tmp_path / "b.png") == 0.9
    assert paired_seeds_plot(rows, ["static-erk", "set"], tmp_path / "c.png") is None  # no sparsity in common
    assert (tmp_path / "a.png").exists() and (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()
    claim4 = chapters.rigl_set_static(_results({(v, 0.9): [0.80, 0.81, 0.82] for v in ("rigl", "set", "static-erk")}))
    assert claim4.plot == "cifar10-rigl-set-static.png" and claim4.figure.kind == "paired"
    assert set(claim4.figure.variants) == {"rigl", "set", "static-erk"}  # the chapter's figure shows what it judges
    dense = [{"variant": "dense", "sparsity": 0.0, "seed": k, "test_acc": 0.75} for k in range(3)]
    assert paired_seeds_plot(rows + dense, ["dense", "rigl"], tmp_path / "d.png") == 0.9  # dense joins any sparsity


def test_the_effects_figure_has_a_row_per_test_a_verdict_rests_on(tmp_path):
    from sparsearch.report.plots import effects_plot

    claim4 = chapters.rigl_set_static(_results({("rigl", 0.9): _shift(SEEDS, 0.01, 0.001), ("set", 0.9): _shift(SEEDS, 0.01),
                                                ("static-erk", 0.9): SEEDS}))
    void = chapters.erk_vs_uniform(_results({("static-erk", 0.98): SEEDS, ("static-uniform", 0.98): SEEDS}, 0.45))
    rows = document._effects([("3", void), ("4", claim4), ("1", ["cells-darts-v2: 0 of 9 finished"])])
    assert [r["label"] for r in rows] == ["claim 4 (a): rigl - static-erk over 90% (95% CI)",
                                          "claim 4 (b): set - rigl over 90% (90% CI)"]  # a TOST reads its 90% interval
    assert rows[0]["word"] == "reproduced"
    assert rows[0]["low"] > 0 and rows[0]["smallest"] == 0.5  # in points
    assert "results/effects.png" in document._document([("4", claim4)], Path("results"), None)
    assert "effects.png" not in document._document([("3", void)], Path("results"), None)
    one_seed = chapters.rigl_set_static(_results({(v, 0.9): [0.8] for v in ("rigl", "set", "static-erk")}))
    assert document._effects([("4", one_seed)])[0]["label"].endswith("(one seed: no interval)")  # not a bare point
    effects_plot(rows + document._effects([("4", one_seed)]), tmp_path / "effects.png")
    assert (tmp_path / "effects.png").stat().st_size > 0


def _ift(uniform: list[float], erk: list[float], dense: float = 0.90) -> dict:
    """A Sparse-IFT comparison: dense at `dense`, Sparse Wide + RigL (uniform, ERK) at s = 0.5, accuracies per seed."""
    base = [dense - 0.002, dense, dense + 0.002]
    results = _results({("wide-rigl-uniform", 0.5): [b + u for b, u in zip(base, uniform)],
                        ("wide-rigl", 0.5): [b + e for b, e in zip(base, erk)]}, dense)
    for row in results["table"]:
        row.update(macs=1e6, params=1e4, density=0.5)
    return results


INFERENCE = {"dense": {"batch-1": {"engine": "onnxruntime", "ms": 1.0, "other_cores": 0.02}},
             "wide-rigl-0.5": {"batch-1": {"engine": "engine", "ms": 1.5, "other_cores": 1.1}}}


@pytest.mark.parametrize("uniform, verdict", [
    ([0.02, 0.021, 0.019], "**reproduced**"),       # 2 points ahead on every seed
    ([-0.01, -0.011, -0.009], "**not reproduced**"),  # behind: 0.5 points ruled out
    ([0.003, 0.013, -0.007], "**inconclusive**"),   # the interval holds 0 and 0.5 points
])
def test_sparse_ift_judges_the_papers_uniform_allocation_against_dense(uniform, verdict):
    chapter = chapters.sparse_ift(_ift(uniform, [-0.05] * 3), INFERENCE, "ResNet-20, 30 epochs")
    assert chapter.verdict.startswith(verdict) and "wide-rigl-uniform - dense" in chapter.verdict, chapter.verdict
    assert chapters.sparse_ift(_ift(uniform, [0.0] * 3, dense=0.40), INFERENCE).verdict.startswith("**no verdict**: proxy")
    assert "| wide-rigl-0.5 | 1 | engine | 1.50 | 1.50x |" in chapter.body  # inference against the compiled dense
    assert "here the widened networks take 1.50x its time" in chapter.body  # said, not left to the table
    assert "kept 1.10 cores busy on average while it timed: not a quiet machine" in chapter.body  # the worst timing
    assert "| wide-rigl | 50% |" in chapter.body and "-5.00 [" in chapter.body  # ERK beside it, its paired effect
    assert "Paper vs ours" in chapter.body and "ResNet-20, 30 epochs" in chapter.body
    assert "timed at its initialisation" not in chapter.body
    assert chapter.figure == Figure("paired", ("dense", "wide-rigl-uniform", "wide-rigl"))  # each seed against its dense
    initial = {**INFERENCE, "dense": {b: {**t, "weights": "initial"} for b, t in INFERENCE["dense"].items()}}
    assert "timed at its initialisation" in chapters.sparse_ift(_ift(uniform, [-0.05] * 3), initial).body


def test_the_gpu_scale_runs_the_same_chapters_at_paper_like_budgets(tmp_path):
    for name in runs.RUNS:
        cpu, gpu = runs.load(name, tmp_path, [], None, "cpu"), runs.load(name, tmp_path, [], None, "gpu")
        assert len(cpu) == len(gpu) and all(c.name == g.name for c, g in zip(cpu, gpu))
        assert all(g.train.device == "cuda" and g.data.train_subset is None and g.train.epochs >= 160 for g in gpu)
        assert all(c.train.device == "auto" and c.train.epochs < g.train.epochs for c, g in zip(cpu, gpu))
    assert runs.load("book-search", tmp_path, [], None, "gpu")[0].run.search_seeds == [0, 1, 2]
    from sparsearch.pipeline.compare import variant_config

    ablation = runs.load("cifar10-v3", tmp_path, [], None, "gpu")[runs.V3_PART["ablation"]]
    ablated = variant_config(ablation, "rigl-every-25", 0.9, 0)
    assert ablated.dst.update_every == 25 and ablated.sparsity.allocation == "erk"  # not the GPU scale's 100
    cell = runs.load("cells-dass-99", tmp_path, [], None, "gpu")[0]
    assert cell.model.kwargs == {"genotype": "DASS_99", "channels": 36, "layers": 20, "auxiliary": True}  # DASS-Small
    assert runs.load("vit-nm-cifar10", tmp_path, [], None, "gpu")[0].model.kwargs["dim"] == 192
    mobilenet = runs.load(runs.MOBILENET, tmp_path, [], None, "gpu")[0]  # claim 7's accuracy: HYDRA as the cells take it
    assert (mobilenet.model.name, mobilenet.model.kwargs, mobilenet.compare.sparsities) == ("mobilenetv2", {}, [0.99])
    assert (mobilenet.hydra, mobilenet.train.epochs, mobilenet.compare.seeds) == (cell.hydra, cell.train.epochs, cell.compare.seeds)
    imp, dense = (runs.load(n, tmp_path, [], None, "gpu")[0] for n in ("imp-cifar10", "dense-cifar10-480"))
    levels = 2  # 0.3 then 0.09 -> 0.1 of the weights left: two prunings after the dense level
    assert (1 - imp.imp.prune_fraction) ** levels <= 0.1 < (1 - imp.imp.prune_fraction) ** (levels - 1)
    imp_epochs = (levels + 1) * imp.train.epochs  # matched budgets: one-shot and dense train as long as IMP
    assert imp.train.epochs + imp.oneshot.finetune_epochs == imp_epochs == dense.train.epochs
    gpu = {name: runs.load(name, tmp_path, [], None, "gpu") for name in runs.SCALES["gpu"]}
    book, _ = document.chapters_of(gpu, tmp_path, "gpu")  # nothing run yet: every claim waits, none is deferred
    labels, waits = zip(*book)
    assert labels == ("1", "1 (searched)", "2", "3", "4", "5", "6", "7", "7 (kernels)", "8", "9")
    assert all(isinstance(c, list) and c for c in waits)
    assert ["imp-cifar10: 0 of 6 finished"] in waits and ["soup-cifar10: 0 of 3 finished"] in waits
    assert ["book-search: 0 of 9 finished"] in waits  # DASS, DARTS and random search on 3 seeds


def test_a_comparison_states_the_dense_accuracy_it_starts_from():
    rows = [{"variant": v, "sparsity": 0.9, "train_seconds": 60.0} for v in ("static-erk", "static-uniform")]
    results = {"model": "resnet20", "rows": rows, "table": [
        _table("dense", 0.0, 0.47, 0.46, 0.48), _table("static-erk", 0.9, 0.44, 0.43, 0.45),
        _table("static-uniform", 0.9, 0.43, 0.42, 0.44)]}
    assert "The dense network reaches 47.00 ± 1.00 (3)." in chapters.erk_vs_uniform(results).body


@pytest.mark.parametrize("rigl_by, set_by, verdict", [
    (0.02, 0.020, "**reproduced**"),      # RigL 2 points above static; SET equal to RigL on every seed
    (-0.01, 0.030, "**not reproduced**"),  # RigL below static; SET 1 point above RigL
    (0.02, 0.030, "**mixed**"),           # dynamic beats static, but SET beats RigL
])
def test_rigl_set_static_follows_the_v3_rules(rigl_by, set_by, verdict):
    accs = {}
    for s in (0.9, 0.98):
        accs |= {("rigl", s): _shift(SEEDS, rigl_by, 0.001), ("set", s): _shift(SEEDS, set_by, 0.001),
                 ("static-erk", s): SEEDS}
    chapter = chapters.rigl_set_static(_results(accs))
    assert chapter.verdict.startswith(verdict), chapter.verdict
    assert "(a) **" in chapter.verdict and "(b) **" in chapter.verdict


def test_imp_follows_the_v3_rules():
    st = _results({("imp", 0.9): _shift(SEEDS, 0.003, 0.01), ("oneshot", 0.9): SEEDS})
    chapter = chapters.imp_vs_oneshot(st)
    assert chapter.verdict.startswith("**inconclusive**")  # ahead in the mean, the interval holding 0 and 0.5 points
    st = _results({("imp", 0.9): _shift(SEEDS, 0.02, 0.001), ("oneshot", 0.9): SEEDS})
    assert chapters.imp_vs_oneshot(st).verdict.startswith("**reproduced**")
    st = _results({("imp", 0.9): _shift(SEEDS, -0.01, 0.001), ("oneshot", 0.9): SEEDS})
    assert chapters.imp_vs_oneshot(st).verdict.startswith("**not reproduced**")
    long_dense = _results({}, 0.92)
    assert "trained as long as IMP reaches 92.00 ± 1.00 (3)" in chapters.imp_vs_oneshot(st, long_dense).body


def _bench(compiled: tuple[float, float, float], model: str = "dass-small") -> dict:
    """A runtime bench row at 95%, batch 1, 1 thread: the fastest dense engine's median 1.0 s, the compiled (median,
    min, max), and a faster row elsewhere that must not be picked."""
    times = {"onnxruntime": {"median": 1.0, "min": 1.0, "max": 1.1}, "compiled": dict(zip(("median", "min", "max"), compiled))}
    row = {"model": model, "batch": 1, "threads": 1, "sparsity": 0.95, "times": times, "fastest_dense": "onnxruntime",
           "speedup": 2.0, "speedup_vs_fastest_dense": 1.0 / compiled[0]}
    best = {**row, "model": "resnet56", "batch": 32, "threads": 2, "speedup_vs_fastest_dense": 9.0}
    return {"machine": {"cpu": "cpu", "torch": "2"}, "args": {"trials": 5}, "results": [row, best], "seconds": 1800.0}


def test_the_kernel_table_quotes_the_configuration_fixed_in_advance_not_its_best_case():
    chapter = architecture.speedup(_bench((0.25, 0.2, 0.3)))
    assert chapter.verdict.startswith("**reported, not judged**: dass-small at 95%, batch 1, 1 thread: 4.00x")
    assert "3.33x between its slowest round" in chapter.verdict and "9.00x" in chapter.body  # the table keeps all
    assert chapter.budget == "0.5 CPU-hours (wall time of the bench on 2 cores)"
    assert architecture.speedup(_bench((0.25, 0.2, 0.3), "resnet56")).verdict.startswith("**no evidence**")


def test_a_run_counts_each_search_and_cell_once():
    rows = [{"search": "darts/seed-0", "search_seconds": 100.0, "pretrain_seconds": 50.0, "train_seconds": 10.0,
             "sparsity": s} for s in (0.9, 0.95)]  # one DARTS cell, pruned to two sparsities
    assert searches.run_seconds(rows) == 100.0 + 50.0 + 2 * 10.0


def test_a_book_written_before_its_runs_finish_marks_their_chapters_pending(tmp_path):
    cfgs = {name: runs.load(name, tmp_path, [], None) for name in runs.RUNS}
    v3 = tmp_path / "cifar10-v3" / "compare"  # claim 3's invocation finished, claim 4's half way (no SET yet)
    v3.mkdir(parents=True)
    results = _results({("static-erk", 0.98): _shift(SEEDS, 0.02, 0.001), ("static-uniform", 0.98): SEEDS,
                        ("static-erk", 0.9): SEEDS, ("rigl", 0.9): SEEDS})
    (v3 / "results.json").write_text(json.dumps(results))
    cell = tmp_path / "cells-dass-90" / "compare"  # two of its seeds' dense networks trained, none pruned yet
    cell.mkdir(parents=True)
    (cell / "results.json").write_text(json.dumps({**_results({}), "rows": _results({})["rows"][:2]}))
    book, seconds = document.chapters_of(cfgs, tmp_path)
    labels, chapters_ = zip(*book)
    assert labels == ("1", "2", "3", "4", "5", "6", "7", "7 (kernels)", "8", "9")
    assert chapters_[0][0] == "cells-darts-v2: 0 of 9 finished" and len(chapters_[0]) == len(runs.CELLS)
    assert chapters_[0][1] == "cells-dass-90: 0 of 3 finished (and 2 dense networks to prune from)"
    assert chapters_[3] == ["cifar10-v3 (claim 4): 15 of 18 finished"]  # claim 3's nine and six of its own
    assert chapters_[2].verdict.startswith("**reproduced**")
    deferred = [chapters_[i] for i in (1, 4, 5)]  # the searches, IMP and soups run at the GPU scale only
    assert all(c.verdict.startswith("**not run at this scale**") and "--scale gpu" in c.body for c in deferred)
    assert deferred[1].claim.startswith("Pruning iteratively")
    assert chapters_[8] == ["cifar10-v3 (claim 8): 9 of 15 finished", "sparse-ift-inference"]
    assert chapters_[9] == ["vit-nm-cifar10: 0 of 15 finished"]
    assert seconds == 17 * 60.0  # the finished trials of unfinished runs count, dense ones too
    rows = [{"machine": {"cpu": cpu, "isa": ["avx2"]}} for cpu in ("Zen 4", "Zen 4", "Zen 3")]  # other sittings
    machines = document.trained_on(rows)
    assert machines == ["Zen 4 (avx2): 2 trainings", "Zen 3 (avx2): 1 training"]
    rows[0]["provenance"] = "transcribed: the document of commit abc"  # a row the ledger kept from a lost folder
    assert document.trained_on(rows)[0].startswith("Zen 4 (avx2): 2 trainings (1 of them transcribed")
    resumed = {"machine": {"cpu": "Zen 4", "isa": ["avx2"]},  # a training a sitting on another CPU finished
               "sittings": [{"machine": None}, {"machine": {"cpu": "Zen 3", "isa": ["avx2"]}},
                            {"machine": {"cpu": "Zen 4", "isa": ["avx2"]}}]}
    assert document.trained_on([resumed]) == ["an unrecorded machine (checkpoints before 2026-12-06 did not name "
                                              "theirs) then Zen 3 (avx2) then Zen 4 (avx2): 1 training"]
    text = document._document(book, Path("results"), None, "sparsearch book", seconds, machines)
    assert "The trainings ran on: Zen 4 (avx2): 2 trainings; Zen 3 (avx2): 1 training." in text
    assert "bf16 products ran on torch's kernels or, since 2026-12-07, in float32" in text  # no bf16 units listed
    assert "in float32" not in document._document(book, Path("results"), None, "sparsearch book", seconds,
                                                  ["SPR (avx2, avx512_bf16, amx_bf16): 1 training"])
    assert "| 4 | (waits for cifar10-v3 (claim 4): 15 of 18 finished) | pending |" in text and "ran nothing" in text
    assert "| 2 | Random search vs random sparse configurations | not run at this scale |" in text
    assert "recorded 17 CPU-minutes in all" in text


def _cells(dass_by: float | None, darts_dense: float = 0.85) -> dict[str, dict]:
    """The published cells' runs: DARTS_V2 at 90/95/99%, each DASS cell at its own, `dass_by` apart per seed (None:
    +0.3 points with a per-seed spread of a point)."""
    cells = {"DARTS_V2": _results({("hydra", s): _shift(SEEDS, 0.1 * i) for i, s in enumerate((0.9, 0.95, 0.99))},
                                  darts_dense)}
    for i, s in enumerate((0.9, 0.95, 0.99)):
        by, noise = (0.003, 0.01) if dass_by is None else (dass_by, 0.001)
        cells[f"DASS_{round(100 * s)}"] = _results({("hydra", s): _shift(SEEDS, 0.1 * i + by, noise)})
    return cells


@pytest.mark.parametrize("dass_by, darts_dense, verdict", [(0.02, 0.85, "**reproduced**"),
                                                           (-0.01, 0.85, "**not reproduced**"),
                                                           (None, 0.85, "**inconclusive**"),
                                                           (0.02, 0.75, "**no verdict**: proxy budget")])
def test_the_published_cells_are_one_test_over_the_sparsities_behind_an_80_percent_anchor(dass_by, darts_dense, verdict):
    chapter = searches.published_cells(_cells(dass_by, darts_dense), "genotype")
    assert chapter.verdict.startswith(verdict), chapter.verdict
    assert "| 99% |" in chapter.body and "(95%, paired, n=3)" in chapter.body and "Paper vs ours" in chapter.body


def test_claim_1s_figure_draws_each_dass_cell_against_darts_at_its_sparsity(tmp_path):
    from sparsearch.report.plots import comparison_plot

    merged = searches.cells_results({**_cells(0.02), "DASS_95": None})  # a cell still training is left out
    lines = {(t["variant"], t["sparsity"]) for t in merged["table"]}
    assert lines == {("DARTS_V2", 0.0), ("DARTS_V2", 0.9), ("DARTS_V2", 0.95), ("DARTS_V2", 0.99),
                     (searches.DASS_CELL, 0.9), (searches.DASS_CELL, 0.99)}  # DARTS_V2's dense network: the anchor
    comparison_plot(merged["table"], tmp_path / "cells.png")
    assert (tmp_path / "cells.png").stat().st_size > 0
    assert searches.cells_results({g: None for g in runs.CELLS}) is None


def test_write_only_from_a_folder_without_the_books_runs_is_one_line_and_writes_nothing(tmp_path, capsys):
    from sparsearch.cli import main

    output = tmp_path / "RESULTS.md"
    assert main(["book", "--write-only", "--out-dir", str(tmp_path / "typo"), "--output", str(output)]) == 2
    assert "holds none of the book's runs" in capsys.readouterr().err and not output.exists()


def test_rigls_update_interval_ablation_stands_beside_the_claim():
    st = _results({("rigl", 0.9): [0.61, 0.62, 0.63], ("set", 0.9): SEEDS, ("static-erk", 0.9): SEEDS})
    ablation = _results({("rigl-every-400", 0.9): [0.58], ("rigl-every-25", 0.9): [0.55]}, dense=None)
    chapter = chapters.rigl_set_static(st, "ResNet-20", ablation, every=100)
    assert ("| every 25 steps | 55.00 |\n| every 100 steps (the claim's runs) | 61.00 |\n| every 400 steps | 58.00 |"
            in chapter.body) and "update every 100 steps" in chapter.rule
    alone = chapters.rigl_set_static(st, "ResNet-20", None)
    assert "not finished" in alone.body
    assert chapter.seconds == alone.seconds + 2 * 60.0  # the ablation's two trainings count in the claim's budget


@pytest.mark.parametrize("decay_by, verdict", [(0.02, "**reproduced**"), (-0.01, "**not reproduced**"),
                                               (0.003, "**inconclusive**")])
def test_nm_mask_decay_vs_srste_is_one_test_over_the_ratios(decay_by, verdict):
    from sparsearch.book.nm import nm_decay_vs_srste

    noise = 0.001 if decay_by != 0.003 else 0.01
    results = _results({(v, s): _shift(SEEDS, by, noise if v == "nm-decay" else 0.0) for s in (0.875, 0.9375)
                        for v, by in (("nm-decay", decay_by), ("nm-srste", 0.0))})
    chapter = nm_decay_vs_srste(results, "vit")
    assert chapter.verdict.startswith(verdict) and "over 1:8, 1:16" in chapter.verdict and "n=3" in chapter.verdict
    assert "| 1:16 |" in chapter.body and "Paper vs ours" in chapter.body


def test_nm_variants_take_their_pattern_from_the_compare_sparsity():
    from sparsearch.config import Config, ConfigError
    from sparsearch.pipeline.compare import variant_config

    decay, srste = (variant_config(Config(), v, 0.9375, 1) for v in ("nm-decay", "nm-srste"))
    assert (decay.sparsity.kind, decay.nm.decay, srste.nm.decay) == ("nm:1:16", "exp", "none")
    assert decay.sparsity.method == "nm" and decay.seed == 1
    with pytest.raises(ConfigError, match="1 - 1/M"):
        variant_config(Config(), "nm-decay", 0.85, 0)  # 1:7 would be 0.857


def test_an_inconclusive_claim_with_too_few_seeds_trains_two_more(tmp_path, monkeypatch):
    from sparsearch.book import make
    from sparsearch.pipeline import compare

    cfgs = {name: runs.load(name, tmp_path, [], None) for name in runs.RUNS}
    v3 = tmp_path / "cifar10-v3" / "compare"
    v3.mkdir(parents=True)
    noisy = {("static-erk", 0.98): _shift(SEEDS, 0.003, 0.01), ("static-uniform", 0.98): SEEDS}  # inconclusive
    (v3 / "results.json").write_text(json.dumps(_results(noisy)))
    calls = []
    monkeypatch.setattr(compare, "run_compare", lambda parts, show_progress, recorded: calls.extend(p.compare for p in parts))
    more = lambda: make.more_seeds(cfgs, tmp_path, "cpu", False, tmp_path / "RESULTS.md", {runs.V3: []})  # noqa: E731
    assert more() == ["3"]
    assert calls[0].seeds == [0, 1, 2, 3, 4] and calls[0].variants == ["dense", "static-uniform", "static-erk"]
    five = {k: [*v, v[0], v[1]] for k, v in noisy.items()}  # seeds 3 and 4 in: the verdict stands, nothing reruns
    (v3 / "results.json").write_text(json.dumps(_results({**five, ("dense", 0.0): [0.9] * 5}, dense=None)))
    assert more() == []
    tight = {("static-erk", 0.98): _shift(SEEDS, 0.02, 0.001), ("static-uniform", 0.98): SEEDS}  # reproduced
    (v3 / "results.json").write_text(json.dumps(_results(tight)))
    assert more() == [] and len(calls) == 1


def test_a_verdict_reads_three_seeds_until_all_five_are_in():
    """RULES.md's two stages: seeds 0-2, then 0-4; four seeds (a sitting ended between seeds 3 and 4) is no stage."""
    seeds = {n: _results({("a", 0.5): [0.70, 0.71, 0.72, 0.90, 0.91][:n], ("b", 0.5): [0.60] * n}) for n in (3, 4, 5)}
    for n, expect in ((3, 3), (4, 3), (5, 5)):
        a, b = verdicts.paired(seeds[n], "a", "b", [0.5])
        assert len(a) == len(b) == expect
        pairs = verdicts.common_seeds(verdicts.per_seed(seeds[n], "a", 0.5), verdicts.per_seed(seeds[n], "b", 0.5))
        assert pairs == (a, b)
    assert "n=3" in verdicts.judged("superiority", seeds[4], "a", "b", [0.5], 0.005).text


def test_a_claim_that_wants_more_seeds_takes_them_before_the_queues(tmp_path, monkeypatch):
    """Claim 3 inconclusive with too few seeds from an earlier sitting: its seeds 3 and 4 train first."""
    from sparsearch.book import make
    from sparsearch.pipeline import compare, run

    cfgs = {name: runs.load(name, tmp_path, [], None) for name in runs.RUNS}
    v3 = tmp_path / "cifar10-v3" / "compare"
    v3.mkdir(parents=True)
    noisy = {("static-erk", 0.98): _shift(SEEDS, 0.003, 0.01), ("static-uniform", 0.98): SEEDS}
    (v3 / "results.json").write_text(json.dumps(_results(noisy)))
    calls = []
    monkeypatch.setattr(compare, "run_compare", lambda parts, show_progress, recorded: calls.append(parts[0].compare.seeds))
    monkeypatch.setattr(compare, "run_comparisons", lambda comparisons, show_progress: calls.append(
        [(parts[0].name, parts[0].compare.seeds) for parts, _ in comparisons]))
    monkeypatch.setattr(run, "run_all", lambda cfg, show_progress: calls.append("run_all"))
    for quiet in ("bench_result", "record_rows", "ift_inference"):
        monkeypatch.setattr(make, quiet, lambda *a, **k: {"done": True})
    make._run_chapters(cfgs, tmp_path, False, "cpu", tmp_path / "RESULTS.md", {name: [] for name in cfgs})
    queues = [c for c in calls if c != [0, 1, 2, 3, 4]]  # (the mock trains nothing: claim 3 asks again after each)
    assert calls[0] == [0, 1, 2, 3, 4] and calls[1] == [(runs.V3, [0, 1, 2])]  # claim 3's seeds 3 and 4, then v3
    assert queues == [[(runs.V3, [0, 1, 2])], [("vit-nm-cifar10", [0, 1, 2])],
                      [(name, [0, 1, 2]) for name in runs.ONE_QUEUE]]  # claim 1's four runs: one queue


def test_the_gpu_scale_refuses_a_machine_without_cuda_before_any_work(tmp_path, monkeypatch):
    from sparsearch.book import make
    from sparsearch.errors import SparsearchError

    monkeypatch.setattr(make, "_has_cuda", lambda: False)
    monkeypatch.setattr(make, "_run_chapters", lambda *a, **k: pytest.fail("the book started work"))
    with pytest.raises(SparsearchError, match="--scale gpu trains on CUDA and this machine has none"):
        make.run_book(tmp_path / "runs", tmp_path / "RESULTS.md", data_path="cifar10.tar.xz", scale="gpu")


def test_the_book_step_bench_times_each_network_as_its_config_trains_it(tmp_path):
    """`sparsearch bench book`: the book's own configs (batch, bf16, layout), both paths, ratios to the ResNet-20."""
    import json

    from sparsearch.book.steps import main as bench_book

    out = tmp_path / "steps.json"
    assert bench_book(["--trials", "1", "--only", "ViT", "--precision", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["network"] for r in results] == ["ResNet-20 (claims 3, 4, 8)", "ViT (claim 9)"]
    assert [r["batch"] for r in results] == [64, 128] and results[1]["kwargs"]["attention"] == "manual"
    assert results[0]["vs_resnet20"] == 1.0 and all(r["times"]["plain"]["median"] > 0 < r["speedup"] for r in results)
    assert all(r["times"][path]["median"] > 0 for r in results for path in ("torch bf16", "float32"))
