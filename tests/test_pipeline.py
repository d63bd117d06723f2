"""HYDRA stages, random search, executors, FLOP counting, and `sparsearch run` end to end."""

import json
import random

import pytest
import torch
import torch.nn as nn

from sparsearch import sparsity as sp
from sparsearch.config import ConfigError, from_dict
from sparsearch.errors import SparsearchError
from sparsearch.models.flops import count_flops
from sparsearch.models.operations import PRIMITIVES
from sparsearch.search import sample_genotype
from sparsearch.train import load_checkpoint


def test_sampled_genotypes_cover_the_space_and_are_reproducible():
    a = [sample_genotype(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]
    samples = [sample_genotype(random.Random(seed)) for seed in range(200)]
    ops = {op for g in samples for op, _ in g.normal + g.reduce}
    assert ops == set(PRIMITIVES) - {"none"}
    for g in samples:
        for cell in (g.normal, g.reduce):
            for node in range(4):
                (_, a_src), (_, b_src) = cell[2 * node], cell[2 * node + 1]
                assert a_src < b_src < 2 + node  # two distinct earlier inputs
    # every input of node 3 is drawn
    assert {src for g in samples for _, src in g.normal[6:]} == {0, 1, 2, 3, 4}


def test_flops_dense_and_effective():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    counts = count_flops(net, (3, 16, 16))
    assert counts["macs"] == 8 * 3 * 9 * 16 * 16 + 8 * 10
    assert counts["params"] == 8 * 3 * 9 + 16 + 80 + 10
    mask = torch.zeros(8, 3, 3, 3, dtype=torch.bool)
    mask[:4] = True  # half of the conv kept
    sp.attach(net, {"0": mask})
    counts = count_flops(net, (3, 16, 16))
    assert counts["macs"] == 8 * 3 * 9 * 16 * 16 + 80
    assert counts["macs_effective"] == 4 * 3 * 9 * 16 * 16 + int(torch.count_nonzero(net[5].weight))
    tensors = [net[0].weight, net[1].weight, net[1].bias, net[5].weight, net[5].bias]  # masked conv weight included
    assert counts["params_nonzero"] == sum(int(torch.count_nonzero(t)) for t in tensors) <= counts["params"] - 4 * 27


def test_flops_skip_the_training_only_auxiliary_head():
    from sparsearch.models.darts import GenotypeNetwork

    plain = count_flops(GenotypeNetwork("DARTS_V2", 8, 5, 10, 3, auxiliary=False), (3, 32, 32))
    aux = count_flops(GenotypeNetwork("DARTS_V2", 8, 5, 10, 3, auxiliary=True), (3, 32, 32))
    assert plain == aux and plain["macs"] == plain["macs_effective"] > 0


def _hydra_cfg(tmp_path, **over):
    return from_dict({"out_dir": str(tmp_path), "name": "h", "data": {"name": "digits", "batch_size": 64, "train_subset": 256},
                      "model": {"name": "cnn"}, "train": {"epochs": 1, "lr": 0.05, "log_every": 0},
                      "sparsity": {"method": "hydra", "sparsity": 0.8, "allocation": "uniform"},
                      "hydra": {"prune_epochs": 1, "finetune_epochs": 1}, **over})


def test_hydra_stages(tmp_path, cache_dir):
    from sparsearch.pipeline import run_train

    cfg = _hydra_cfg(tmp_path)
    summary = run_train(cfg, show_progress=False)
    root = tmp_path / "h" / "train" / "hydra-0.8"
    pre = load_checkpoint(root / "pretrain" / "checkpoints" / "last.ckpt")["model"]
    pruned = load_checkpoint(root / "sparsity-0.8" / "prune" / "checkpoints" / "last.ckpt")["model"]
    fine = load_checkpoint(root / "sparsity-0.8" / "finetune" / "checkpoints" / "last.ckpt")["model"]
    scored = [k[: -len(".parametrizations.weight.0.scores")] for k in pruned if k.endswith("weight.0.scores")]
    assert scored
    for layer in scored:
        # prune: weights frozen, scores moved away from their scaled init
        assert torch.equal(pruned[f"{layer}.parametrizations.weight.original"], pre[f"{layer}.weight"])
        w = pre[f"{layer}.weight"]
        init = (6 / w[0].numel()) ** 0.5 * w / w.abs().max()
        assert not torch.allclose(pruned[f"{layer}.parametrizations.weight.0.scores"], init)
        # finetune: the mask is the prune stage's top-k, at the target density
        scores = pruned[f"{layer}.parametrizations.weight.0.scores"]
        mask = fine[f"{layer}.parametrizations.weight.0.mask"]
        assert torch.equal(mask.bool(), sp.topk_mask(scores.abs(), sp.keep_count(0.2, scores.numel())).bool())
        assert torch.all(fine[f"{layer}.parametrizations.weight.original"][mask == 0] == 0)
    rows = json.loads((root / "sparsity-0.8" / "finetune" / "sparsity.json").read_text())
    assert [r["name"] for r in rows if "shape" in r] == scored  # first conv and classifier stay dense (default)
    assert all(r["density"] == pytest.approx(0.2, abs=0.005) for r in rows if "shape" in r)
    assert summary["final_stage"].endswith("sparsity-0.8/finetune")
    # the trial's cost is both of its stages (the dense pretraining is a trial of its own), not only the last one
    stage_seconds = [json.loads((root / "sparsity-0.8" / s / "summary.json").read_text())["train_seconds"]
                     for s in ("prune", "finetune")]
    assert min(stage_seconds) > 0 and summary["train_seconds"] == pytest.approx(sum(stage_seconds), abs=0.002)
    assert run_train(cfg, show_progress=False)["final_test_acc"] == summary["final_test_acc"]  # done: skipped


def test_hydra_rejects_global_allocation(tmp_path, cache_dir):
    from sparsearch.pipeline import run_train

    with pytest.raises(SparsearchError, match="global"):
        run_train(_hydra_cfg(tmp_path, sparsity={"method": "hydra", "sparsity": 0.8, "allocation": "global"}),
                  show_progress=False)
    assert not (tmp_path / "h").exists()  # refused before anything was written


def _run_cfg(tmp_path, **over):
    return from_dict({"out_dir": str(tmp_path), "name": "q",
                      "data": {"name": "digits", "batch_size": 32, "train_subset": 192},
                      "search": {"channels": 2, "layers": 3, "second_order": False, "pretrain_epochs": 1, "prune_epochs": 1,
                                 "finetune_epochs": 1, "random_samples": 2, "random_epochs": 1},
                      "model": {"name": "genotype", "kwargs": {"channels": 4, "layers": 3, "auxiliary": True}},
                      "train": {"epochs": 1, "lr": 0.05, "log_every": 0, "drop_path": 0.2},
                      "hydra": {"prune_epochs": 1, "finetune_epochs": 1},
                      "sparsity": {"allocation": "uniform", "dense_first_last": False},
                      "run": {"sparsities": [0.5, 0.9]}, **over})


@pytest.mark.slow
def test_run_end_to_end(tmp_path, cache_dir):
    from sparsearch.pipeline.run import run_all

    cfg = _run_cfg(tmp_path)
    report = run_all(cfg, show_progress=False)
    run_dir = tmp_path / "q"
    results = json.loads((run_dir / "results.json").read_text())
    assert [(r["method"], r["sparsity"]) for r in results["rows"]] == [
        (m, s) for m in ("dass", "darts", "random") for s in (0.5, 0.9)]
    for r in results["rows"]:
        assert r["params_nonzero"] < r["params"] and r["macs_effective"] < r["macs"]
        # every conv and the classifier pruned at the target: nonzero weights are close to (1 - s) of them
        assert 0 <= r["test_acc"] <= 1
    by = {(r["method"], r["sparsity"]): r for r in results["rows"]}
    assert by["dass", 0.9]["params_nonzero"] < by["dass", 0.5]["params_nonzero"]
    # a DASS and a random search per target sparsity, each cell trained at its own; DARTS (dense) searched once
    assert [r["search"] for r in results["rows"]] == ["dass/sparsity-0.5", "dass/sparsity-0.9", "darts", "darts",
                                                     "random/sparsity-0.5", "random/sparsity-0.9"]
    dass = results["searches"]["dass/sparsity-0.9"]
    assert dass["target"] == 0.9 and results["searches"]["darts"]["target"] is None
    prune = json.loads((run_dir / "search" / "dass" / "sparsity-0.9" / "prune" / "sparsity.json").read_text())
    assert next(r for r in prune if r["name"] == "(masked layers)")["density"] == pytest.approx(0.1, abs=0.01)
    assert len((run_dir / "search" / "random" / "sparsity-0.5" / "trials.jsonl").read_text().splitlines()) == 2
    for name in ("index.html", "report.md", "accuracy_vs_sparsity.png", "alphas_dass_sparsity-0.9.png", "alphas_darts.png",
                 "cell_dass_sparsity-0.5_normal.png", "cell_random_sparsity-0.9_reduce.png"):
        assert (report / name).stat().st_size > 0
    text = (report / "report.md").read_text()
    assert "| dass | dass/sparsity-0.9 | 90%" in text
    # searches this short do not move alpha: the report says so first, and names both differentiable searches
    assert dass["verdict"]["moved"] is False and results["searches"]["random/sparsity-0.5"]["verdict"] is None
    assert text.count("did not move away from uniform") >= 3 and "do not rank the methods" in text.splitlines()[2]
    # a second run skips everything that is finished and reports the same numbers
    before = (run_dir / "results.json").read_text()
    run_all(cfg, show_progress=False)
    assert (run_dir / "results.json").read_text() == before


def test_search_seeds_give_mean_and_spread_and_a_shared_search_stays_an_option(tmp_path, cache_dir):
    from sparsearch.pipeline.run import run_all

    cfg = _run_cfg(tmp_path, run={"methods": ["dass"], "sparsities": [0.5, 0.9], "search_seeds": [0, 1],
                                  "search_per_sparsity": False})
    report = run_all(cfg, show_progress=False)
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert list(results["searches"]) == ["dass/seed-0", "dass/seed-1"]
    assert [results["searches"][k]["target"] for k in results["searches"]] == [None, None]  # search.sparsity, shared
    groups = {(g["method"], g["sparsity"]): g for g in results["by_seed"]}
    g = groups["dass", 0.9]
    accs = [r["test_acc"] for r in results["rows"] if r["sparsity"] == 0.9]
    assert g["n"] == 2 and g["seeds"] == [0, 1] and g["acc_mean"] == pytest.approx(sum(accs) / 2)
    assert g["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    text = (report / "report.md").read_text()
    assert "Over search seeds [0, 1]" in text and "| dass | 90% |" in text
    with pytest.raises(ConfigError, match="search_seeds"):
        run_all(_run_cfg(tmp_path / "x", run={"search_seeds": [1, 1]}), show_progress=False)


@pytest.mark.slow
def test_searches_and_cells_run_side_by_side_as_trials_with_the_same_results(tmp_path, cache_dir):
    """run.executor=process runs the DASS and DARTS searches, then the cells' HYDRA trainings, two at a time in
    worker processes; each logs into its own folder, and searches and cells end where they end run one after the
    other here."""
    from sparsearch.pipeline.run import run_all

    run = {"methods": ["dass", "darts"], "sparsities": [0.9]}
    run_all(_run_cfg(tmp_path / "a", run=run), show_progress=False)
    run_all(_run_cfg(tmp_path / "b", run={**run, "executor": "process", "workers": 2}), show_progress=False)
    here, beside = (json.loads((tmp_path / d / "q" / "results.json").read_text()) for d in ("a", "b"))
    assert list(beside["searches"]) == list(here["searches"]) == ["dass/sparsity-0.9", "darts"]
    for key in here["searches"]:
        a, b = (tmp_path / d / "q" for d in ("a", "b"))
        assert (b / "search" / key / "metrics.jsonl").stat().st_size > 0
        assert (b / "train" / key / "metrics.jsonl").stat().st_size > 0
        last_a, last_b = (json.loads((d / "search" / key / "alphas.jsonl").read_text().splitlines()[-1]) for d in (a, b))
        assert torch.tensor(last_b["normal"]).allclose(torch.tensor(last_a["normal"]), rtol=1e-4, atol=0)
    assert not (tmp_path / "b" / "q" / "metrics.jsonl").exists()  # no trial wrote into the run's shared file
    keep = ("method", "search", "sparsity", "test_acc", "dense_test_acc", "params_nonzero")
    assert [{k: r[k] for k in keep} for r in beside["rows"]] == [{k: r[k] for k in keep} for r in here["rows"]]


def test_run_cli_errors_are_one_line(tmp_path, capsys):
    from sparsearch.cli import main

    code = main(["run", "--set", f"out_dir={tmp_path}", "--set", "model.name=resnet20"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model.name must be 'genotype'" in err
    assert not (tmp_path / "run").exists()  # nothing written
    code = main(["report", str(tmp_path)])
    assert code == 2 and "results.json" in capsys.readouterr().err


def test_drop_path_ramps_over_training(tmp_path, cache_dir):
    from sparsearch.pipeline import build_for
    from sparsearch.train import Callback, DropPathSchedule, Trainer

    cfg = from_dict({"data": {"name": "digits", "batch_size": 128, "train_subset": 128},
                     "model": {"name": "genotype", "kwargs": {"channels": 2, "layers": 3}},
                     "train": {"epochs": 3, "log_every": 0}})
    _, model, train_loader, _ = build_for(cfg)
    seen = []

    class Record(Callback):
        def on_step_end(self, trainer):
            seen.append(trainer.model.drop_path_prob)

    Trainer(model, train_loader, None, cfg.train, tmp_path, callbacks=[DropPathSchedule(0.3), Record()],
            show_progress=False).fit()
    assert seen == pytest.approx([0.0, 0.1, 0.2])
