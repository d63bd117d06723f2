"""Iterative magnitude pruning with rewinding: level schedule, global magnitude masks that only tighten, rewinding,
the control branches, and re-runs that skip finished levels."""

import importlib
import json

import pytest
import torch

from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.methods import level_densities
from sparsearch.train import load_checkpoint


def test_level_densities_remove_a_fraction_of_the_rest_and_end_on_target():
    assert level_densities(0.5, 0.2) == pytest.approx([0.8, 0.64, 0.512, 0.5])
    d = level_densities(0.9, 0.2)
    assert len(d) == 11 and d[-1] == pytest.approx(0.1) and d[-2] == pytest.approx(0.8 ** 10)
    assert level_densities(0.2, 0.2) == pytest.approx([0.8])


def _imp(tmp_path, *extra):
    return main(["train", "--method", "imp", "--sparsity", "0.5", "--model", "cnn", "--set", f"out_dir={tmp_path}",
                 "--set", "data.name=digits", "--set", "data.train_subset=384", "--set", "data.batch_size=64",
                 "--set", "train.epochs=1", "--set", "train.lr=0.05", "--set", "imp.rewind_step=2",
                 "--set", "model.kwargs={width: 8}", *extra])


def test_imp_levels_rewind_and_branches(tmp_path, cache_dir):
    assert _imp(tmp_path, "--set", "imp.branches=[reinit, random_mask]") == 0
    out = tmp_path / "run" / "train" / "imp-0.5"
    history = json.loads((out / "levels.json").read_text())
    assert [h.get("level", h.get("branch")) for h in history] == [0, 1, 2, 3, 4, "reinit", "random_mask"]
    previous = None
    for level, density in enumerate([0.8, 0.64, 0.512, 0.5], 1):
        state = load_checkpoint(out / f"level-{level}" / "checkpoints" / "last.ckpt")["model"]
        masks = {k[: -len(".parametrizations.weight.0.mask")]: v.bool() for k, v in state.items() if k.endswith("0.mask")}
        kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
        assert kept == round(density * total)  # one global threshold: the total is exact
        if previous is not None:
            assert all(torch.all(previous[n] | ~m) for n, m in masks.items())  # masks only tighten
        previous = masks
    reinit = load_checkpoint(out / "branch-reinit" / "checkpoints" / "last.ckpt")["model"]
    random_mask = load_checkpoint(out / "branch-random_mask" / "checkpoints" / "last.ckpt")["model"]
    for name, mask in previous.items():
        assert torch.equal(reinit[f"{name}.parametrizations.weight.0.mask"].bool(), mask)  # same masks, other init
        other = random_mask[f"{name}.parametrizations.weight.0.mask"].bool()
        assert int(other.sum()) == int(mask.sum()) and not torch.equal(other, mask)  # same density, other positions
    # the trial's cost is every level it trained (the dense level 0 too), not its last; the branches are controls
    level_seconds = [json.loads((out / f"level-{lv}" / "summary.json").read_text())["train_seconds"] for lv in range(5)]
    seconds = json.loads((out / "summary.json").read_text())["train_seconds"]
    assert min(level_seconds) > 0 and seconds == pytest.approx(sum(level_seconds), abs=0.003)
    before = {p: p.stat().st_mtime for p in out.rglob("last.ckpt")}
    assert _imp(tmp_path, "--set", "imp.branches=[reinit, random_mask]") == 0  # a re-run skips every finished level
    assert before == {p: p.stat().st_mtime for p in out.rglob("last.ckpt")}


def test_imp_rewinds_to_the_chosen_step(tmp_path, cache_dir, monkeypatch):
    imp_module = importlib.import_module("sparsearch.methods.imp")  # the module (the package exports the function)
    starts = []
    original = imp_module.rewound

    def spy(model, state, masks, densities=None):
        model = original(model, state, masks, densities)
        starts.append(({k: v.clone() for k, v in sp.squash(model).items()}, masks))
        return model

    monkeypatch.setattr(imp_module, "rewound", spy)
    assert _imp(tmp_path, "--sparsity", "0.2") == 0
    rewind = load_checkpoint(tmp_path / "run" / "train" / "imp-0.2" / "level-0" / "rewind.ckpt")["model"]
    (start, masks), = starts
    for name, mask in masks.items():
        assert torch.equal(start[f"{name}.weight"], rewind[f"{name}.weight"] * mask)  # survivors at their step-2 values
    assert torch.equal(start["0.weight"], rewind["0.weight"])  # the dense first conv is rewound too
