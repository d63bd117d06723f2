"""Dynamic sparse training (SET, RigL, GraNet): the dense-gradient signal, exact sparsity after every update,
regrowth rules, exact resume, churn records."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.config import from_dict
from sparsearch.data import build_loaders, dataset_from_config
from sparsearch.methods import SET, CosineDecay, Periodic, RigL
from sparsearch.pipeline import model_builder
from sparsearch.recipes import METHODS, MethodContext


def _masked_mlp(density=0.25, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    layers = sp.find_layers(model, dense_first_last=False)
    masks, densities = sp.compute_masks(model, layers, 1 - density, "random", "uniform", seed=seed)
    sp.attach(model, masks, densities=densities)
    return model


def test_dense_gradient_is_the_gradient_of_the_masked_weight():
    model = _masked_mlp()
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    dense = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    dense.load_state_dict(sp.squash(model))
    F.cross_entropy(dense(x), y).backward()
    sink = {}
    sp.track_dense_grads(model, sink)
    F.cross_entropy(model(x), y).backward()
    sp.track_dense_grads(model, None)
    for name in ("0", "2"):
        assert torch.allclose(sink[name], dense.get_submodule(name).weight.grad, atol=1e-6)
        stored = sp.weight_param(model.get_submodule(name)).grad
        assert torch.all(stored[~sp.current_masks(model)[name]] == 0)  # the stored weight's gradient is masked
        assert sink[name][~sp.current_masks(model)[name]].abs().sum() > 0  # the dense one is not
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert set(sink) == {"0", "2"} and torch.allclose(sink["0"], dense[0].weight.grad, atol=1e-6)  # not tracking now


@pytest.mark.parametrize("cls", [RigL, SET])
def test_one_update_drops_smallest_and_regrows_exactly(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    method = cls(0.75, allocation="uniform", dense_first_last=False, updates=Periodic(10, 0.75), drop=CosineDecay(0.5),
                 total_steps=100)
    method.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    logged = []
    method.log, method.step_count = logged.append, 10
    before = {k: v.clone() for k, v in sp.current_masks(model).items()}
    weights = {n: sp.weight_param(model.get_submodule(n)).detach().clone() for n in before}
    F.cross_entropy(model(torch.randn(6, 8)), torch.randint(0, 4, (6,))).backward()  # the forward starts step 10
    grads = dict(method._grads)
    method.before_optimizer_step()
    fraction = 0.25 * (1 + torch.cos(torch.tensor(torch.pi * 10 / 75))).item()  # alpha / 2 (1 + cos(pi t / T_end))
    after = sp.current_masks(model)
    for name, old in before.items():
        new, active = after[name], int(old.sum())
        k = round(fraction * active)
        assert int(new.sum()) == active  # exact sparsity after the update
        # drop: the k smallest-magnitude active weights; the rest survive
        keep = sp.topk_mask(torch.where(old, weights[name].abs(), -torch.inf), active - k)
        assert torch.all(new[keep]) and int((new & ~keep).sum()) == k
        assert weights[name].abs()[old & ~keep].max() <= weights[name].abs()[keep].min()
        regrown = new & ~keep  # may include just-dropped positions, which are eligible again
        if cls is RigL:  # the largest dense gradients among the positions not kept
            assert grads[name].abs()[regrown].min() >= grads[name].abs()[~new].max()
        assert torch.all(sp.weight_param(model.get_submodule(name))[new & ~old] == 0)  # new connections start at zero
    assert not sp.check(model)
    assert method.churn[0]["step"] == 10 and logged[0]["kind"] == "dst"
    assert method.drop.at(75, 75) == 0 and method.drop.at(0, 75) == 0.5


def _ctx(tmp_path, method, **over):
    cfg = from_dict({"out_dir": str(tmp_path), "name": method, "data": {"name": "digits", "batch_size": 64, "train_subset": 384},
                     "model": {"name": "cnn", "kwargs": {"width": 8}},
                     "train": {"epochs": 3, "lr": 0.05, "log_every": 0, "checkpoint_every": 4},
                     "sparsity": {"method": method, "sparsity": 0.8, "allocation": "erk"},
                     "dst": {"update_every": 3}, "gmp": {"initial_sparsity": 0.5, "frequency": 3}, **over})
    ds = dataset_from_config(cfg.data, seed=0)
    train_loader, test_loader = build_loaders(ds, cfg.data, 0)
    run_dir = tmp_path / method
    return MethodContext(cfg, model_builder(cfg, ds), train_loader, test_loader, run_dir / "train", run_dir,
                         show_progress=False)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["set", "rigl", "granet"])
def test_dst_methods_keep_exact_sparsity_and_resume_exactly(tmp_path, cache_dir, monkeypatch, method):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = METHODS[method](_ctx(tmp_path / "a", method))
    checks = []
    original = SET.before_optimizer_step  # RigL and GraNet call it too

    def checked(self):
        original(self)
        if self.is_update():
            checks.append(sp.check(self.model))  # invariants right after every topology update
        if self.step_count == 14:  # mid-epoch 3 (6 steps per epoch), two steps after the epoch-2 checkpoint
            raise _Crash

    monkeypatch.setattr(SET, "before_optimizer_step", checked)
    with pytest.raises(_Crash):
        METHODS[method](_ctx(tmp_path / "b", method))
    monkeypatch.setattr(SET, "before_optimizer_step", original)
    got = METHODS[method](_ctx(tmp_path / "b", method))
    assert checks and not any(checks)
    for name, value in ref.model.state_dict().items():  # tensors, and each mask's kind and density
        other = got.model.state_dict()[name]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, name
    churn_a = json.loads((ref.out_dir / "churn.json").read_text())
    assert churn_a == json.loads((got.out_dir / "churn.json").read_text())
    assert [u["step"] for u in churn_a] == [3, 6, 9, 12]  # updates before 0.75 of 18 steps
    rows = json.loads((ref.out_dir / "sparsity.json").read_text())
    erk = sp.allocate({r["name"]: torch.Size(r["shape"]) for r in rows if "shape" in r}, 0.8, "erk")
    if method != "granet":  # SET and RigL keep the ERK counts of the start exactly
        assert all(r["kept"] == sp.keep_count(erk[r["name"]], r["numel"]) for r in rows if "shape" in r)
    else:  # GraNet reaches the target by pruning
        assert rows[-2]["kept"] == pytest.approx(0.2 * rows[-2]["numel"], abs=len(rows))


def test_dst_from_the_cli_writes_churn_plot(tmp_path, cache_dir):
    argv = ["train", "--method", "rigl", "--sparsity", "0.9", "--model", "cnn", "--set", f"out_dir={tmp_path}",
            "--set", "data.name=digits", "--set", "data.train_subset=384", "--set", "data.batch_size=64",
            "--set", "train.epochs=2", "--set", "dst.update_every=2", "--set", "model.kwargs={width: 8}"]
    assert main(argv) == 0
    out = tmp_path / "run" / "train" / "rigl-0.9"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["topology_updates"] == 4 and summary["regrown_total"] > 0  # steps 2, 4, 6, 8 of 12 (end 0.75)
    assert (out / "churn.png").stat().st_size > 1000
