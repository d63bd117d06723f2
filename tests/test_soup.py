"""Sparse model soups: phase schedule, averaging that keeps the shared mask, BatchNorm recalibration, the method from
the CLI (masks shared exactly, greedy soups, re-runs that skip), and ingredients run by worker processes."""

import json

import pytest
import torch
import torch.nn as nn

from sparsearch.cli import main
from sparsearch.data import TensorLoader
from sparsearch.methods import phase_densities
from sparsearch.methods.soup import average, recalibrate_batchnorm
from sparsearch.sparsity import SparsityError
from sparsearch.train import load_checkpoint

MASK = ".parametrizations.weight.0.mask"


def test_phase_densities_prune_the_same_fraction_each_phase():
    d = phase_densities(0.9, 3)
    assert d[-1] == pytest.approx(0.1) and d[0] == pytest.approx(0.1 ** (1 / 3))
    assert d[1] / d[0] == pytest.approx(d[0])  # q = 1 - 0.1^(1/3) of the remaining weights each time


def test_average_keeps_masks_and_refuses_different_ones():
    mask = torch.tensor([1.0, 0.0, 1.0])
    a = {"w" + MASK: mask, "w.original": torch.tensor([1.0, 0.0, 3.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w" + MASK: mask.clone(), "w.original": torch.tensor([3.0, 0.0, 5.0]), "bn.num_batches_tracked": torch.tensor(7)}
    soup = average([a, b])
    assert torch.equal(soup["w.original"], torch.tensor([2.0, 0.0, 4.0]))
    assert torch.equal(soup["w" + MASK], mask) and int(soup["bn.num_batches_tracked"]) == 5
    with pytest.raises(SparsityError, match="disagree on the mask"):
        average([a, {**b, "w" + MASK: torch.tensor([0.0, 1.0, 1.0])}])


def test_recalibrate_batchnorm_takes_the_average_over_the_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8, generator=gen)
    loader = TensorLoader(x, torch.zeros(64, dtype=torch.long), 16, mean=[0, 0, 0], std=[1, 1, 1])
    model = nn.Sequential(nn.BatchNorm2d(3))
    model[0].running_mean.fill_(100.0)
    model.eval()
    recalibrate_batchnorm(model, loader, batches=2)  # the first 32 images only
    want = (x[:32].float() / 255).mean((0, 2, 3))
    assert torch.allclose(model[0].running_mean, want, atol=1e-6)
    assert model[0].momentum == 0.1 and not model.training  # settings and mode restored


def _soup(tmp_path, *extra):
    return main(["train", "--method", "soup", "--sparsity", "0.75", "--model", "cnn", "--set", f"out_dir={tmp_path}",
                 "--set", "data.name=digits", "--set", "data.train_subset=384", "--set", "data.batch_size=64",
                 "--set", "train.epochs=3", "--set", "train.lr=0.1", "--set", "model.kwargs={width: 8}",
                 "--set", "soup.phases=2", "--set", "soup.ingredients=3", "--set", "soup.retrain_epochs=2",
                 "--set", "soup.bn_batches=2", *extra])


def _masks(path):
    return {k: v for k, v in load_checkpoint(path)["model"].items() if k.endswith(MASK)}


def test_soup_shares_masks_exactly_and_resumes(tmp_path, cache_dir):
    assert _soup(tmp_path, "--set", "soup.kind=greedy") == 0
    out = tmp_path / "run" / "train" / "soup-0.75"
    history = json.loads((out / "soup.json").read_text())
    assert [h["phase"] for h in history] == [1, 2] and (out / "soup.png").exists()
    previous = None
    for h in history:
        phase = out / f"phase-{h['phase']}"
        start = _masks(phase / "start.ckpt")
        kept, total = sum(int(m.sum()) for m in start.values()), sum(m.numel() for m in start.values())
        assert kept == round(h["density"] * total)  # one global threshold: the total is exact
        if previous is not None:
            assert all(torch.all(previous[k].bool() | ~m.bool()) for k, m in start.items())  # masks only tighten
        previous = start
        for i in range(3):  # every ingredient and the soup hold exactly the start's mask
            ingredient = _masks(phase / f"ingredient-{i}" / "checkpoints" / "last.ckpt")
            assert all(torch.equal(ingredient[k], m) for k, m in start.items())
        soup = _masks(phase / "soup" / "checkpoints" / "last.ckpt")
        assert soup.keys() == start.keys() and all(torch.equal(soup[k], m) for k, m in start.items())
        assert len(h["ingredients"]) == 3 and set(h["greedy"]["members"]) <= {0, 1, 2}
        best = max(range(3), key=lambda i: (h["ingredients"][i]["val_acc"], -i))
        assert h["greedy"]["val_acc"] >= h["ingredients"][best]["val_acc"] - 0.05  # recalibrated best, within noise
    accs = [tuple(i["test_acc"] for i in h["ingredients"]) for h in history]
    assert all(len(set(a)) > 1 for a in accs)  # the ingredients differ (seeds), so a soup is more than a copy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_acc"] == history[-1]["greedy"]["test_acc"]
    masked = json.loads((out / "phase-2" / "soup" / "sparsity.json").read_text())[-2]
    assert masked["name"] == "(masked layers)" and masked["density"] == pytest.approx(0.25, abs=1e-3)
    before = {p: p.stat().st_mtime for p in out.rglob("*.ckpt")}
    assert _soup(tmp_path, "--set", "soup.kind=greedy") == 0  # a re-run trains and merges nothing again
    assert before == {p: p.stat().st_mtime for p in out.rglob("*.ckpt")}


def test_soup_refuses_weight_decay_variation_without_values(tmp_path, cache_dir, capsys):
    assert _soup(tmp_path, "--set", "soup.vary=weight_decay") == 2
    assert "soup.weight_decays" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_soup_ingredients_run_the_same_in_worker_processes(tmp_path, cache_dir):
    one_phase = ["--sparsity", "0.5", "--set", "soup.phases=1", "--set", "soup.ingredients=2", "--set", "train.threads=1"]
    assert _soup(tmp_path / "local", *one_phase) == 0
    assert _soup(tmp_path / "process", *one_phase, "--set", "run.executor=process", "--set", "run.workers=2") == 0
    local, process = (json.loads((tmp_path / k / "run" / "train" / "soup-0.5" / "soup.json").read_text()) for k in
                      ("local", "process"))
    assert local == process
