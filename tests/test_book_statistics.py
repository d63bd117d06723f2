"""The book's statistics (book/statistics.py) on synthetic numbers: the intervals against textbook values, and every
branch of every verdict rule."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsearch.book.statistics import difference, pooled, power_note, verdict


def test_the_paired_interval_is_the_textbook_t_interval():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841
    e = difference([11, 12, 13], [10, 10, 10])
    assert e.estimate == pytest.approx(2) and e.high - e.estimate == pytest.approx(2.4841, abs=1e-4) and e.paired
    # pairing removes the seed-to-seed spread that both sides share; Welch's interval keeps it
    a, b = [0.50, 0.60, 0.70], [0.49, 0.59, 0.69]
    assert difference(a, b).low > 0 > difference(a, b, paired=False).low


def test_welch_interval_matches_a_hand_computation():
    a, b = [1.0, 2.0, 3.0, 4.0], [1.0, 1.5, 2.0]
    e = difference(a, b, paired=False)
    va, vb = (5 / 3) / 4, 0.25 / 3  # sample variances over n
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert e.estimate == pytest.approx(1.0) and dof == pytest.approx(4.0755, abs=1e-4)
    assert e.high - e.estimate == pytest.approx(2.7563 * math.sqrt(va + vb), rel=1e-4)  # t(0.975, 4.0755)


def test_one_seed_concludes_nothing_and_mismatched_pairs_are_refused():
    assert verdict("superiority", [0.9], [0.1], 0.01)[0] == "inconclusive"
    with pytest.raises(ValueError, match="paired"):
        difference([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        verdict("superiority", [1, 2], [1, 2], 0)
    with pytest.raises(ValueError, match="kind"):
        verdict("better", [1, 2], [1, 2], 0.1)


BASE = [0.80, 0.82, 0.84, 0.86, 0.88]


def _shifted(delta: float, noise: float) -> list[float]:
    wiggle = [noise, -noise, 0.5 * noise, -0.5 * noise, 0.0]
    return [x + delta + w for x, w in zip(BASE, wiggle)]


@pytest.mark.parametrize("kind, delta, noise, want", [
    ("superiority", 0.010, 0.001, "reproduced"),       # clearly above 0
    ("superiority", -0.002, 0.001, "not reproduced"),  # below the smallest effect (0.5 points)
    ("superiority", 0.003, 0.010, "inconclusive"),     # wide: holds 0 and 0.5 points
    ("no better", 0.000, 0.001, "reproduced"),         # tight around 0: below 0.5 points
    ("no better", 0.020, 0.001, "not reproduced"),     # better by 2 points
    ("no better", 0.004, 0.010, "inconclusive"),
    ("equivalence", 0.000, 0.001, "reproduced"),
    ("equivalence", -0.020, 0.001, "not reproduced"),
    ("equivalence", 0.000, 0.020, "inconclusive"),
])
def test_every_branch_of_every_rule(kind, delta, noise, want):
    got, reason = verdict(kind, _shifted(delta, noise), BASE, smallest=0.005)
    assert got == want, reason


def test_nested_comparisons_count_as_one_test():
    """Three sparsities on the same three seeds: three values per seed averaged, n = 3 (not 9)."""
    comps = [([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]), ([0.4, 0.5, 0.6], [0.4, 0.5, 0.6]), ([0.3, 0.4, 0.5], [0.3, 0.4, 0.5])]
    e = pooled(comps)
    assert e.n == 3 and e.estimate == pytest.approx(0.1 / 3)
    with pytest.raises(ValueError, match="share"):
        pooled([([1, 2], [1, 2]), ([1, 2, 3], [1, 2, 3])])


def test_power_note_says_when_seeds_are_too_few():
    assert "too few" in power_note(3, sigma=0.01, smallest=0.005)
    assert "enough" in power_note(20, sigma=0.002, smallest=0.005)
    assert "no interval" in power_note(1, 0.01, 0.005)


def _architecture_bench(ratios: list[float], sparsity: float = 0.99) -> dict:
    """A `bench architecture` result whose rounds have these MobileNetV2 / DASS eager latency ratios."""
    dass = [0.010 * (1 + 0.01 * i) for i in range(len(ratios))]
    samples = {"dass eager": dass, "mobilenetv2 eager": [d * r for d, r in zip(dass, ratios)],
               "dass compiled": [0.002] * len(ratios), "mobilenetv2 compiled": [0.001] * len(ratios)}
    row = {"sparsity": sparsity, "threads": 1, "genotype": "DASS_99", "engines": {"dass": "engine", "mobilenetv2": "engine"},
           "samples_s": samples}
    return {"results": [row], "machine": {"cpu": "test", "isa": [], "torch": "x"}, "seconds": 1.0}


@pytest.mark.parametrize("ratios,word", [([2.0, 2.1, 1.9, 2.05, 1.95], "reproduced"),
                                         ([0.5, 0.52, 0.48, 0.51, 0.49], "not reproduced"),
                                         ([0.8, 1.9, 1.1, 1.6, 0.9], "inconclusive")])
def test_claim_7_judges_the_eager_log_ratio_at_99_percent(ratios, word):
    from sparsearch.book.architecture import dass_vs_mobilenet

    chapter = dass_vs_mobilenet(_architecture_bench(ratios))
    assert chapter.verdict.startswith(f"**{word}**") and "3.87x" in chapter.verdict
    assert "0.50x [" in chapter.body and "Paper vs ours" in chapter.body  # the compiled ratio beside it, not judged
    assert dass_vs_mobilenet(_architecture_bench(ratios, 0.95)).verdict.startswith("**no evidence**")


def test_claim_7_sets_the_accuracies_beside_the_latency_where_its_scale_trains_them():
    from sparsearch.book.architecture import ACCURACY_RUNS, dass_vs_mobilenet

    bench = _architecture_bench([0.5, 0.52, 0.48, 0.51, 0.49])
    cpu = dass_vs_mobilenet(bench)  # the CPU book trains neither network: it says where they are trained
    assert "not measured at this scale" in cpu.body and "--scale gpu" in cpu.body and "mobilenetv2-cifar10" in cpu.body
    waiting = dass_vs_mobilenet(bench, {"DASS": None, "MobileNetV2": {"rows": []}})
    assert f"Accuracy waits for {ACCURACY_RUNS['DASS']}." in waiting.body

    def run(hydra: list[float], dense: float) -> dict:
        return {"rows": [{"variant": "hydra", "sparsity": 0.99, "seed": i, "test_acc": a} for i, a in enumerate(hydra)]
                + [{"variant": "dense", "sparsity": 0.0, "seed": i, "test_acc": dense} for i in range(3)]}

    chapter = dass_vs_mobilenet(bench, {"DASS": run([0.80, 0.81, 0.82], 0.9), "MobileNetV2": run([0.74, 0.73, 0.75], 0.92)})
    assert "| DASS | 81.00 (3) | 90.00 (3) | 81.35 |" in chapter.body and "| MobileNetV2 | 74.00 (3) |" in chapter.body
    assert "DASS - MobileNetV2: +7.00 [" in chapter.body and "Welch" in chapter.body  # two networks: nothing paired
    assert chapter.verdict == cpu.verdict and chapter.judgements == cpu.judgements  # described, never judged
    assert "accuracy DASS - MobileNetV2 +7.00 points" in chapter.body  # in the paper-vs-ours row too


def test_the_architecture_bench_times_both_networks_in_both_quantities_and_the_chapter_reads_it(tmp_path, monkeypatch):
    import json

    import torch.nn as nn

    from sparsearch.bench import architecture
    from sparsearch.book.architecture import dass_vs_mobilenet

    tiny = lambda width: nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 4, 1)).eval()  # noqa: E731
    monkeypatch.setattr(architecture, "networks", lambda s: {"dass": tiny(32), "mobilenetv2": tiny(4)})
    out = tmp_path / "architecture.json"
    assert architecture.main(["--sparsities", "0.99", "--rounds", "3", "--calls", "1", "--out", str(out)]) == 0
    bench = json.loads(out.read_text())
    (row,) = bench["results"]
    assert bench["complete"] and {len(v) for v in row["samples_s"].values()} == {3}
    assert all(row[q]["min"] <= row[q]["ratio"] <= row[q]["max"] for q in ("eager", "compiled"))
    assert dass_vs_mobilenet(bench).verdict.split("**")[1] in ("reproduced", "not reproduced", "inconclusive")
    # what else ran while it timed: recorded beside the numbers and read out by the chapter
    if Path("/proc/stat").exists():  # Linux: the machine's busy time can be read
        assert bench["other_cores"] >= 0 and "Other processes kept" in dass_vs_mobilenet(bench).body


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the machine's busy time is read from Linux /proc/stat")
def test_a_benchmark_counts_the_cores_other_processes_kept_busy_and_says_so(monkeypatch, capsys):
    from sparsearch import bench
    from sparsearch.bench import common
    from sparsearch.host import OtherLoad

    load = OtherLoad()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        other = load.cores()  # read before the spinner is reaped, when its time would become this process's own
    finally:
        spinner.kill()
        spinner.wait()
    assert other > 0.5  # a busy loop for 1.5 s: most of a core (of 2 at least), not this process's own time
    monkeypatch.setattr(common.LOAD, "cores", lambda: 1.5)
    monkeypatch.setattr("sparsearch.bench.sparsity.main", lambda argv: 0)
    assert bench.main("sparsity", []) == 0 and "kept 1.5 cores busy" in capsys.readouterr().err
    monkeypatch.setattr(common.LOAD, "cores", lambda: 0.01)
    assert bench.main("sparsity", []) == 0 and capsys.readouterr().err == ""  # a quiet machine: no warning


def test_a_paired_verdict_says_whether_its_seeds_were_enough():
    noisy = verdict("superiority", [0.62, 0.64, 0.66], [0.60, 0.62, 0.645], 0.005)[1]
    tight = verdict("superiority", [0.62, 0.64, 0.66], [0.60, 0.6201, 0.6399], 0.005)[1]
    assert noisy.endswith("too few seeds") and tight.endswith("enough seeds")  # RULES.md: too few -> five seeds
    assert "against the 0.25 (half the smallest effect)" in noisy  # the bound it is held to, not the effect itself
    assert "seeds" not in verdict("superiority", [0.6, 0.7], [0.5, 0.6], 0.005, paired=False)[1]  # Welch: no note


def test_the_book_waits_for_a_quiet_machine_before_timing_but_not_forever(monkeypatch, capsys):
    from sparsearch.bench import common

    def busy_then(values):
        seen = iter(values)
        monkeypatch.setattr(common, "OtherLoad", lambda: type("Load", (), {"cores": lambda self: next(seen)})())

    monkeypatch.setattr(common.time, "sleep", lambda s: None)
    busy_then([1.9, 1.9, 0.05])
    assert common.wait_for_quiet(limit_s=60, every_s=10) == 0.05
    out = capsys.readouterr().out
    assert "keep 1.9 cores busy: waiting up to 1 min" in out and "quiet now after 20 s" in out
    busy_then([1.9] * 10)
    assert common.wait_for_quiet(limit_s=30, every_s=10) == 1.9  # after the limit it times anyway, and says so
    assert "still busy, timing anyway" in capsys.readouterr().out
    busy_then([0.0])
    assert common.wait_for_quiet() == 0.0 and capsys.readouterr().out == ""  # quiet at once: silent
