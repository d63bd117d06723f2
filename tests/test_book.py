"""The results book: each claim's verdict follows the numbers (reproduced, not, mixed), and the document lists them all.
The runs themselves are the ordinary `run` / `compare` / `bench runtime` commands, tested elsewhere."""

import json
from pathlib import Path

import pytest

from sparsearch.pipeline import book
from sparsearch.pipeline.run import seed_summary


def _search(dass: list[float], darts: list[float], random: list[float], seeds=(0, 1, 2), moved=True) -> dict:
    """A `sparsearch run` results.json: each method's accuracy per sparsity, +-0.5 points over the search seeds."""
    rows, searches = [], {}
    for method, accs in (("dass", dass), ("darts", darts), ("random", random)):
        for k, seed in enumerate(seeds):
            key = f"{method}/seed-{seed}"
            searches[key] = {"method": method, "verdict": None if method == "random" else
                             {"moved": moved, "words": "moved" if moved else "did not move away from uniform"}}
            for s, acc in zip((0.9, 0.95), accs):
                rows.append({"method": method, "sparsity": s, "test_acc": acc + 0.005 * (k - 1), "search_seed": seed,
                             "search": key, "search_seconds": 100.0, "pretrain_seconds": 50.0, "train_seconds": 10.0,
                             "dense_test_acc": 0.6})
    return {"summary": "Tiny.", "rows": rows, "random_samples": 4, "searches": searches, "by_seed": seed_summary(rows),
            "search_seeds": list(seeds)}


@pytest.mark.parametrize("dass, verdict", [([0.5, 0.4], "**reproduced**"), ([0.3, 0.2], "**not reproduced**"),
                                           ([0.5, 0.2], "**mixed**"), ([0.404, 0.304], "**mixed**")])
def test_dass_verdict_follows_the_numbers(dass, verdict):
    chapter = book.dass_vs_darts(_search(dass, [0.4, 0.3], [0.4, 0.3]))
    assert chapter.verdict.startswith(verdict)  # the last: ahead in the mean, seed ranges overlapping: undecided
    assert f"| 90% | {100 * dass[0]:.2f} ± 0.50 (3) | 40.00 ± 0.50 (3) | {100 * (dass[0] - 0.4):+.2f} |" in chapter.body
    assert "reach 60.00% before pruning" in chapter.body


def test_a_search_that_did_not_move_is_no_evidence():
    chapter = book.dass_vs_darts(_search([0.5, 0.4], [0.4, 0.3], [0.4, 0.3], moved=False))
    assert chapter.verdict.startswith("**no evidence**") and "dass/seed-0" in chapter.verdict
    assert "did not move away from uniform" in chapter.body


def test_one_search_seed_cannot_reproduce_the_claim():
    chapter = book.dass_vs_darts(_search([0.5, 0.4], [0.4, 0.3], [0.4, 0.3], seeds=(0,)))
    assert chapter.verdict.startswith("**mixed**")  # ahead, but one seed has no spread to be beyond


def test_random_search_no_better_than_one_random_configuration_within_a_point():
    searched, single = _search([0.4] * 2, [0.4] * 2, [0.405, 0.50]), _search([0.4] * 2, [0.4] * 2, [0.40, 0.40])
    chapter = book.random_search_vs_random_configuration(searched, single)
    assert chapter.verdict.startswith("**mixed**") and "best of 4" in chapter.body


def _table(variant: str, s: float, mean: float, lo: float, hi: float, seeds: int = 3) -> dict:
    return {"variant": variant, "sparsity": s, "acc_mean": mean, "acc_std": 0.01, "acc_min": lo, "acc_max": hi,
            "seeds": seeds}


def test_erk_needs_disjoint_seed_ranges_at_the_highest_sparsity():
    rows = [{"variant": v, "train_seconds": 60.0} for v in ("static-erk", "static-uniform")]
    overlapping = {"model": "resnet20", "rows": rows, "table": [
        _table("static-erk", 0.9, 0.44, 0.43, 0.45), _table("static-uniform", 0.9, 0.43, 0.42, 0.44),
        _table("static-erk", 0.98, 0.39, 0.37, 0.41), _table("static-uniform", 0.98, 0.37, 0.36, 0.38)]}
    assert book.erk_vs_uniform(overlapping).verdict.startswith("**mixed**")
    overlapping["table"][2] = _table("static-erk", 0.98, 0.40, 0.39, 0.41)
    chapter = book.erk_vs_uniform(overlapping)
    assert chapter.verdict.startswith("**reproduced**") and "at 90% the two are within noise" in chapter.verdict


def test_soup_counts_phases_where_the_soup_beats_its_best_ingredient(tmp_path):
    phases = [{"phase": 1, "density": 0.3, "ingredients": [{"test_acc": 0.40}, {"test_acc": 0.42}],
               "uniform": {"test_acc": 0.43}, "greedy": {"test_acc": 0.42}},
              {"phase": 2, "density": 0.1, "ingredients": [{"test_acc": 0.38}, {"test_acc": 0.39}],
               "uniform": {"test_acc": 0.385}, "greedy": {"test_acc": 0.39}}]
    where = tmp_path / "compare" / "seed-0" / "soup-0.9"
    where.mkdir(parents=True)
    (where / "soup.json").write_text(json.dumps(phases))
    chapter = book.soup_vs_best_ingredient({"rows": [{"variant": "soup", "train_seconds": 120.0}]}, tmp_path)
    assert "beats its best ingredient in 1 of 2 phases" in chapter.verdict and chapter.verdict.startswith("**mixed**")
    assert "| seed-0, soup-0.9 | 1 | 0.300 | 41.00 | 42.00 | 43.00 | 42.00 |" in chapter.body


def test_document_lists_every_claim_with_its_verdict_and_figure():
    bench = {"machine": {"cpu": "cpu", "torch": "2"}, "args": {"trials": 5}, "results": [
        {"model": "resnet56", "batch": 32, "threads": 2, "sparsity": 0.95, "speedup": 1.75}]}
    chapters = [book.dass_vs_darts(_search([0.5, 0.4], [0.4, 0.3], [0.4, 0.3])), book.speedup(bench)]
    text = book._document(chapters, Path("results"), 120)
    assert "| 1 | DASS cell vs DARTS cell at equal sparsity | reproduced |" in text
    assert "| 2 | Measured speedup vs sparsity against the FLOP ideal | not reproduced |" in text
    assert "resnet56, batch 32, 2 threads: 1.75x" in text and "![" in text and "results/runtime-speedup.png" in text
    assert "over dense eager PyTorch" in text  # an old bench file: eager was all it measured
    bench["results"][0]["speedup_vs_fastest_dense"] = 1.2
    assert "batch 32, 2 threads: 1.20x" in book.speedup(bench).verdict
    assert "the fastest dense engine" in book.speedup(bench).body


def _ift(wide_rigl: list[tuple[float, float, float]]) -> dict:
    """Results of the Sparse-IFT comparison: dense at 40% (38-42), wide-rigl (mean, min, max) per sparsity."""
    table = [{**_table("dense", 0.0, 0.40, 0.38, 0.42), "macs": 1e6, "params": 1e4, "density": 1.0}]
    for s, (mean, lo, hi) in zip((0.5, 0.75), wide_rigl):
        table += [{**_table("wide-rigl", s, mean, lo, hi), "macs": 1e6, "params": 1e4, "density": 0.3},
                  {**_table("wide-static", s, 0.41, 0.40, 0.42), "macs": 1e6, "params": 1e4, "density": 0.3}]
    return {"table": table, "rows": [{"variant": "dense", "train_seconds": 60.0}]}


INFERENCE = {"dense": {"batch-1": {"engine": "onnxruntime", "ms": 1.0}},
             "wide-rigl-0.5": {"batch-1": {"engine": "engine", "ms": 1.5}}}


@pytest.mark.parametrize("wide, verdict", [
    ([(0.45, 0.43, 0.47), (0.46, 0.44, 0.48)], "**reproduced**"),  # ahead, seed ranges disjoint, at both sparsities
    ([(0.39, 0.37, 0.41), (0.40, 0.38, 0.42)], "**not reproduced**"),  # at or below dense's mean at both
    ([(0.45, 0.43, 0.47), (0.41, 0.39, 0.43)], "**mixed**"),  # ahead at 50%; at 75% ahead but overlapping
])
def test_sparse_ift_verdict_follows_its_rule(wide, verdict):
    chapter = book.sparse_ift(_ift(wide), INFERENCE)
    assert chapter.verdict.startswith(verdict)
    assert "| wide-rigl-0.5 | 1 | engine | 1.50 | 1.50x |" in chapter.body  # inference against the compiled dense


def test_the_gpu_scale_runs_the_same_chapters_at_paper_like_budgets(tmp_path):
    for name in book.RUNS:
        cpu, gpu = book._load(name, tmp_path, [], None, "cpu"), book._load(name, tmp_path, [], None, "gpu")
        assert len(cpu) == len(gpu) and all(c.name == g.name for c, g in zip(cpu, gpu))
        assert all(g.train.device == "cuda" and g.data.train_subset is None and g.train.epochs >= 160 for g in gpu)
        assert all(c.train.device == "auto" and c.data.train_subset for c in cpu)
    assert book._load("book-search", tmp_path, [], None, "gpu")[0].run.search_seeds == [0, 1, 2]


def test_a_comparison_states_the_dense_accuracy_it_starts_from():
    rows = [{"variant": v, "train_seconds": 60.0} for v in ("static-erk", "static-uniform")]
    results = {"model": "resnet20", "rows": rows, "table": [
        _table("dense", 0.0, 0.47, 0.46, 0.48), _table("static-erk", 0.9, 0.44, 0.43, 0.45),
        _table("static-uniform", 0.9, 0.43, 0.42, 0.44)]}
    assert "The dense network reaches 47.00 ± 1.00 (3)." in book.erk_vs_uniform(results).body
