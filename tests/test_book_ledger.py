"""The book's ledger: the rows of finished trainings committed beside the document, so a sitting whose `--out-dir`
is gone (a new checkout) neither trains them again nor loses their chapters; rows of another config are refused."""

import json
from pathlib import Path

import pytest

from sparsearch.book import document, ledger, make, runs
from sparsearch.errors import SparsearchError
from sparsearch.pipeline.compare import _unrecorded

DATA = "../shared/data/cifar10-images.tar.xz"


def _row(variant: str, sparsity: float, seed: int, acc: float) -> dict:
    return {"variant": variant, "sparsity": sparsity, "seed": seed, "mask_sparsity": sparsity, "test_acc": acc,
            "weight_density": 1 - sparsity, "params_nonzero": 1000, "macs_effective": 10**6, "train_seconds": 60.0,
            "machine": {"cpu": "Zen 4", "isa": ["avx2"]}}


def _claim3_rows(erk_by: float = 0.02) -> list[dict]:
    return [_row(v, s, seed, acc + by) for seed, acc in enumerate((0.60, 0.62, 0.64))
            for v, s, by in (("dense", 0.0, 0.27), ("static-uniform", 0.98, 0.0), ("static-erk", 0.98, erk_by))]


def _cfgs(out_dir: Path, *overrides: str, data: str = DATA) -> dict:
    return {name: runs.load(name, out_dir, list(overrides), data) for name in runs.RUNS}


def test_rows_recorded_once_carry_a_chapter_after_the_runs_folder_is_gone(tmp_path):
    cfgs, output = _cfgs(tmp_path / "runs"), tmp_path / "docs" / "RESULTS.md"
    compare_dir = tmp_path / "runs" / runs.V3 / "compare"
    compare_dir.mkdir(parents=True)
    (compare_dir / "results.json").write_text(json.dumps({"dataset": "cifar10", "model": "resnet20",
                                                          "rows": _claim3_rows()}))
    make.record_rows(cfgs, tmp_path / "runs", output, "cpu", committed := make.committed_rows(cfgs, output, "cpu"))
    path = ledger.ledger_path(output, "cpu", runs.V3)
    assert path == tmp_path / "docs" / "results" / "rows" / "cpu" / f"{runs.V3}.json" and len(committed[runs.V3]) == 9
    stored = json.loads(path.read_text())
    assert stored["config"]["data"]["path"] == "cifar10-images.tar.xz" and "compare" not in stored["config"]

    fresh = tmp_path / "new-checkout-runs"  # a later sitting: its --out-dir holds nothing
    cfgs = _cfgs(fresh)
    committed = make.committed_rows(cfgs, output, "cpu")
    wanted, done, _ = runs.progress(runs.V3, cfgs, fresh, [0], committed)
    assert done == wanted  # claim 3's nine trainings: none to train again
    chapters = dict(document.chapters_of(cfgs, fresh, "cpu", committed)[0])
    assert chapters["3"].verdict.startswith("**reproduced**")
    assert chapters["4"] == ["cifar10-v3 (claim 4): 9 of 18 finished"]
    document.write_book(cfgs, fresh, output, "sparsearch book", None, "cpu", committed)
    assert "Zen 4 (avx2): 9 trainings" in output.read_text() and (output.parent / "results" / "cifar10-erk-uniform.png").exists()


def test_a_trial_trained_again_under_out_dir_wins_over_its_record():
    old, new = _row("dense", 0.0, 0, 0.80), _row("dense", 0.0, 0, 0.85)
    results = ledger.merged({"rows": [new]}, [old, _row("dense", 0.0, 1, 0.81)])
    assert sorted(r["test_acc"] for r in results["rows"]) == [0.81, 0.85] and results["table"][0]["seeds"] == 2
    assert ledger.merged(None, []) is None


def test_rows_of_another_config_are_refused_not_mixed_in(tmp_path):
    cfgs, output = _cfgs(tmp_path), tmp_path / "RESULTS.md"
    ledger.record(ledger.ledger_path(output, "cpu", runs.V3), cfgs[runs.V3][0], {"rows": _claim3_rows()})
    assert make.committed_rows(_cfgs(tmp_path, "run.workers=1"), output, "cpu")[runs.V3]  # how, not what: same rows
    assert make.committed_rows(_cfgs(tmp_path, data=f"/elsewhere/{Path(DATA).name}"), output, "cpu")[runs.V3]
    with pytest.raises(SparsearchError, match=r"another config \(train.epochs differ\)"):
        make.committed_rows(_cfgs(tmp_path, "train.epochs=31"), output, "cpu")
    with pytest.raises(SparsearchError, match="data.path differ"):  # another file is other data
        make.committed_rows(_cfgs(tmp_path, data="cifar10-official.tar.gz"), output, "cpu")
    ledger.ledger_path(output, "cpu", runs.V3).write_text('{"rows": []}')
    with pytest.raises(SparsearchError, match="is not a book ledger"):
        make.committed_rows(cfgs, output, "cpu")


def test_a_recorded_trial_is_not_trained_again_but_a_dense_network_still_needed_is():
    cfg = runs.load(runs.V3, Path("runs"), [], DATA)[0]
    jobs = [(0, "dense", 0.0), (0, "oneshot", 0.9), (0, "static-erk", 0.9), (1, "dense", 0.0), (1, "static-erk", 0.9)]
    # seed 0's one-shot pruning starts from its dense network, whose checkpoint went with the folder: trained again
    assert _unrecorded(jobs, {(0, "dense", 0.0), (0, "static-erk", 0.9), (1, "dense", 0.0)}, cfg) == [
        (0, "dense", 0.0), (0, "oneshot", 0.9), (1, "static-erk", 0.9)]
    assert _unrecorded(jobs, set(jobs), cfg) == []


def test_write_only_writes_from_the_ledger_alone(tmp_path, capsys):
    from sparsearch.cli import main

    cfgs, output = _cfgs(tmp_path / "runs"), tmp_path / "RESULTS.md"
    ledger.record(ledger.ledger_path(output, "cpu", runs.V3), cfgs[runs.V3][0], {"rows": _claim3_rows()})
    assert main(["book", "--write-only", "--out-dir", str(tmp_path / "gone"), "--output", str(output)]) == 0
    assert "| 3 | ERK vs uniform random pruning at high sparsity | reproduced |" in output.read_text()
    stored = json.loads(ledger.ledger_path(output, "cpu", runs.V3).read_text())
    assert stored["config"]["data"]["path"] == "cifar10-images.tar.xz"  # not forgotten by a run without --data-path


def test_the_committed_ledger_matches_the_books_config():
    """A change to a book config that would orphan the committed trainings fails here, not hours into a sitting."""
    output = Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"
    committed = make.committed_rows(_cfgs(Path("runs/book")), output, "cpu")
    assert len(committed[runs.V3]) >= 12  # the dense anchor, claim 3, claim 4's seed 0


def test_a_finished_timing_is_kept_whole_and_read_back_an_unfinished_one_is_not(tmp_path):
    cfgs, output, out_dir = _cfgs(tmp_path / "runs"), tmp_path / "RESULTS.md", tmp_path / "runs"
    for name, complete in ((runs.BENCH_JSON, True), (runs.ARCHITECTURE_JSON, False)):
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_text(json.dumps({"complete": complete, "rows": [1, 2]}))
    make.record_rows(cfgs, out_dir, output, "cpu", make.committed_rows(cfgs, output, "cpu"))
    assert ledger.kept_path(output, "cpu", runs.BENCH_JSON).exists()
    assert not ledger.kept_path(output, "cpu", runs.ARCHITECTURE_JSON).exists()  # still running: not a result
    committed = make.committed_rows(cfgs, output, "cpu")
    assert runs.bench_result(tmp_path / "new", runs.BENCH_JSON, committed) == {"complete": True, "rows": [1, 2]}
    assert runs.bench_result(tmp_path / "new", runs.ARCHITECTURE_JSON, committed) is None


def test_claim_8s_inference_waits_for_its_trained_networks_and_times_a_lost_dense_one_untrained(tmp_path, capsys,
                                                                                                    monkeypatch):
    from sparsearch.pipeline import compile as compile_module

    seed_0 = tmp_path / runs.V3 / "compare" / "seed-0"
    (seed_0 / "wide-rigl-0.5").mkdir(parents=True)
    (seed_0 / "wide-rigl-0.5" / "summary.json").write_text("{}")
    cfg = runs.load(runs.V3, tmp_path, [], DATA)[0]
    assert make.ift_inference(tmp_path, 2, cfg) is None  # one of two Sparse-IFT networks: no partial table
    assert "wait for seed 0's 2 Sparse-IFT networks" in capsys.readouterr().out
    assert not (tmp_path / runs.INFERENCE_JSON).exists()

    timed = []  # the dense network's folder went with an earlier sitting: it is timed at its initialisation
    plan = {"engine": "sparse", "times_ms": {"sparse": {"median": 2.0}}}
    monkeypatch.setattr(compile_module, "run_compile", lambda where, batch, threads: timed.append(where.name) or plan)
    monkeypatch.setattr(compile_module, "compile_untrained", lambda c, batch, threads: timed.append(c.name) or plan)
    monkeypatch.setattr("sparsearch.bench.common.wait_for_quiet", lambda: None)
    result = make.ift_inference(tmp_path, 1, cfg)
    assert timed == [runs.V3, runs.V3, "wide-rigl-0.5", "wide-rigl-0.5"]  # two batches each
    assert result["dense"]["batch-1"]["weights"] == "initial" and "weights" not in result["wide-rigl-0.5"]["batch-1"]


def test_a_dense_network_compiles_at_its_initialisation_writing_nothing(tmp_path):
    from sparsearch.config import load_config
    from sparsearch.pipeline.compile import compile_untrained

    cfg = load_config(None, ["data.name=digits", "model.kwargs={width: 4}", f"out_dir={tmp_path}"])
    plan = compile_untrained(cfg, batch=4, threads=1)
    assert plan["engine"] in plan["times_ms"] and plan["batch"] == 4 and not list(tmp_path.iterdir())
