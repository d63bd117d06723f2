"""N:M sparsity from scratch with SR-STE: straight-through gradients, the sparse-refined term, valid N:M exports."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.methods import SRSTE, FlowDecay, MaskDecay


def _nm_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    sp.attach_nm(model, ["0", "2"], sp.NM(2, 4))
    return model


def test_dynamic_nm_masks_follow_the_weights_and_pass_gradients_straight_through():
    model = _nm_model()
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    F.cross_entropy(model(x), y).backward()
    stored = sp.weight_param(model[0])
    mask = sp.current_masks(model)["0"]
    assert torch.equal(mask, sp.NM(2, 4).select(stored.detach().abs()))  # 2 largest |w| of every 4 inputs
    assert stored.grad[~mask].abs().sum() > 0  # straight through: pruned weights get gradients as well
    assert torch.equal(model[0].weight[~mask], torch.zeros(int((~mask).sum())))
    with torch.no_grad():  # make a pruned weight the largest of its group: the mask follows at the next forward
        row, col = (~mask).nonzero()[0].tolist()
        stored[row, col] = 10.0
    model(x)
    assert sp.current_masks(model)["0"][row, col]
    assert not sp.check(model)


def test_sparse_refined_term_decays_only_the_pruned_weights():
    model = _nm_model()
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    F.cross_entropy(model(x), y).backward()
    plain = {n: sp.weight_param(model.get_submodule(n)).grad.clone() for n in ("0", "2")}
    method = SRSTE("2:4", lambda_w=0.5)
    method.model = model
    method.before_optimizer_step()
    for name, before in plain.items():
        w = sp.weight_param(model.get_submodule(name))
        mask = sp.current_masks(model)[name].float()
        assert torch.allclose(w.grad - before, 0.5 * (1 - mask) * w.detach())


def test_mask_decay_schedules_and_soft_mask():
    lin = FlowDecay("linear", rate=0.01, hard_fraction=0.1)
    assert [lin.at(t, 200) for t in (0, 50, 100, 179, 180)] == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])
    exp = FlowDecay("exp", rate=0.01, hard_fraction=0.1)
    assert exp.at(50, 200) == pytest.approx(torch.exp(torch.tensor(-0.5)).item()) and exp.at(180, 200) == 0.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    decay = MaskDecay("2:4", decay=lin, dense_first_last=False, total_steps=200)
    decay.prepare(model)
    decay.step_count = 50
    decay.start_step()  # beta = 0.5: in training, pruned weights pass at half strength
    stored = sp.weight_param(model[0])
    mask = sp.NM(2, 4).select(stored.detach().abs()).float()
    assert torch.allclose(model[0].weight, stored * (mask + 0.5 * (1 - mask)))
    model.eval()  # evaluation sees the hard N:M weights
    assert torch.equal(model[0].weight, stored * mask) and not sp.check(model)
    model.train()
    decay.squash()  # so does the export
    assert torch.equal(model[0].weight, stored * mask)


def _train_nm(tmp_path, *extra):
    return main(["train", "--method", "nm", "--sparsity", "0.5", "--model", "cnn", "--set", f"out_dir={tmp_path}",
                 "--set", "sparsity.kind=nm:2:4", "--set", "data.name=digits", "--set", "data.train_subset=384",
                 "--set", "data.batch_size=64", "--set", "train.epochs=2", "--set", "train.lr=0.05",
                 "--set", "model.kwargs={width: 8}", *extra])


@pytest.mark.parametrize("decay", ["none", "exp"])
def test_nm_from_the_cli_exports_valid_nm_weights(tmp_path, cache_dir, decay):
    assert _train_nm(tmp_path, "--set", f"nm.decay={decay}", "--set", "nm.decay_rate=0.02") == 0
    out = tmp_path / "run" / "train" / "nm-0.5"
    rows = json.loads((out / "sparsity.json").read_text())
    layers = [r for r in rows if "shape" in r]
    assert layers and all(r["kind"] == "nm:2:4" and r["density"] == 0.5 for r in layers)
    weights = load_file(out / "final.safetensors")
    for r in layers:  # the squashed (exported) weights: at most 2 non-zeros in every group of 4
        groups = sp.NM(2, 4).groups(weights[f"{r['name']}.weight"])
        assert int((groups != 0).sum(1).max()) <= 2


def test_nm_needs_an_nm_kind(tmp_path, cache_dir, capsys):
    assert main(["train", "--method", "nm", "--sparsity", "0.5", "--model", "cnn", "--set", f"out_dir={tmp_path}",
                 "--set", "data.name=digits"]) == 2
    assert "sparsity.method nm needs sparsity.kind nm:N:M" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("ratio", ["nm:1:4"])
def test_nm_sparsity_must_match_the_kind(tmp_path, cache_dir, capsys, ratio):
    assert _train_nm(tmp_path, "--set", f"sparsity.kind={ratio}") == 2
    assert "fixes sparsity at 0.75" in capsys.readouterr().err
