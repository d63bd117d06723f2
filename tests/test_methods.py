"""Reference models, the pruning methods (dense, static, oneshot, gmp, hydra, maskspar) and the comparison command."""

import json

import pytest
import torch
import torch.nn as nn

from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.methods import Cubic
from sparsearch.models import build_model, count_parameters
from sparsearch.models.flops import count_flops
from sparsearch.models.tracing import conv_bn_pairs


@pytest.mark.parametrize("name, published", [
    ("resnet32", 0.46e6), ("vgg16", 14.7e6), ("mobilenetv2", 2.24e6), ("wrn28-2", 1.47e6), ("wrn28-10", 36.5e6),
])
def test_reference_model_parameter_counts(name, published):
    model = build_model(name)
    assert count_parameters(model) == pytest.approx(published, rel=0.01)
    if name != "wrn28-10":  # the big one: counting is enough
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_cubic_schedule_matches_zhu_gupta():
    g = Cubic(initial=0.0, start=0.0, end=1.0, every=1)
    # s_i = 0, s_f = 0.9, n = 10 (shared/reference/algorithms.md section 9.2)
    expected = [0, .2439, .4392, .5913, .7056, .7875, .8424, .8757, .8928, .8991, .9]
    assert [round(g.at(k, 10, 0.9), 4) for k in range(11)] == expected
    late = Cubic(initial=0.2, start=0.5, end=0.8, every=7)
    assert late.at(10, 100, 0.9) == 0.2 and late.at(90, 100, 0.9) == 0.9
    steps = late.update_steps(100)
    assert steps[0] == 50 and steps[-1] == 80 and len(steps) == 5  # (80 - 50) / 7 -> 4 intervals


def _train(tmp_path, method, sparsity=0.8, *extra):
    argv = ["train", "--method", method, "--sparsity", str(sparsity), "--model", "cnn", "--name", method,
            "--set", f"out_dir={tmp_path}", "--set", "data.name=digits", "--set", "data.train_subset=384",
            "--set", "data.batch_size=64", "--set", "train.epochs=2", "--set", "train.lr=0.05", "--set", "train.log_every=0",
            "--set", "model.kwargs={width: 8}", "--set", "hydra.prune_epochs=1", "--set", "hydra.finetune_epochs=1",
            "--set", "oneshot.finetune_epochs=1", "--set", "maskspar.reg_epochs=1", "--set", "maskspar.finetune_epochs=1",
            "--set", "sparsity.allocation=uniform", *extra]
    assert main(argv) == 0
    variant = "dense" if method == "dense" else f"{method}-{sparsity:g}"
    return tmp_path / method / "train" / variant


@pytest.mark.parametrize("method", ["dense", "static", "oneshot", "gmp", "hydra"])
def test_each_method_from_the_cli(tmp_path, cache_dir, method):
    out = _train(tmp_path, method)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["final_test_acc"] <= 1 and summary["params"] > 0
    if method == "dense":
        assert summary["params_nonzero"] == summary["params"] and "weight_density" not in summary
        return
    final = summary["final_stage"]
    rows = json.loads((tmp_path / final.split(f"{tmp_path}/")[-1] / "sparsity.json").read_text())
    layers = [r for r in rows if "shape" in r]
    assert layers and all(r["density"] == pytest.approx(0.2, abs=0.01) for r in layers)  # uniform allocation, exact
    assert rows[-2]["density"] == pytest.approx(0.2, abs=0.01)  # the masked layers together
    assert summary["weight_density"] == rows[-1]["density"] > 0.2  # all conv/linear: first conv + classifier dense
    assert summary["macs_effective"] < summary["macs"]


def test_gmp_masks_only_tighten_and_end_exact(tmp_path, cache_dir):
    out = _train(tmp_path, "gmp", 0.9, "--set", "gmp.frequency=2", "--set", "gmp.end=0.5")
    lines = [json.loads(x) for x in (tmp_path / "gmp" / "metrics.jsonl").read_text().splitlines()]
    targets = [r["target_sparsity"] for r in lines if r.get("kind") == "prune"]
    assert targets[0] == 0 and targets[-1] == 0.9 and targets == sorted(targets) and len(targets) >= 4
    rows = json.loads((out / "sparsity.json").read_text())
    assert all(r["kept"] == sp.keep_count(0.1, r["numel"]) for r in rows if "shape" in r)


def test_static_snip_uses_training_batches(tmp_path, cache_dir):
    out = _train(tmp_path, "static", 0.8, "--set", "sparsity.criterion=snip", "--set", "sparsity.allocation=global")
    rows = json.loads((out / "sparsity.json").read_text())
    assert rows[-2]["kept"] == round(0.2 * rows[-2]["numel"])  # one global threshold: the total is exact
    assert len({round(r["density"], 3) for r in rows if "shape" in r}) > 1  # but not uniform per layer


def test_oneshot_rerun_is_skipped_with_the_same_result(tmp_path, cache_dir):
    out = _train(tmp_path, "oneshot")
    first = json.loads((out / "summary.json").read_text())
    mtime = (out / "finetune" / "checkpoints" / "last.ckpt").stat().st_mtime
    _train(tmp_path, "oneshot")
    assert json.loads((out / "summary.json").read_text())["final_test_acc"] == first["final_test_acc"]
    assert (out / "finetune" / "checkpoints" / "last.ckpt").stat().st_mtime == mtime


def test_maskspar_removes_channels_and_counts_the_savings(tmp_path, cache_dir):
    out = _train(tmp_path, "maskspar", 0.5)
    channels = json.loads((out / "channels.json").read_text())
    assert channels and all(c["kept"] == c["channels"] // 2 for c in channels.values())
    summary = json.loads((out / "summary.json").read_text())
    # half the channels of every BatchNorm-ed conv go: the convs between two pruned layers keep about a quarter
    assert summary["macs_structural"] < 0.45 * summary["macs"]
    assert summary["params_structural"] < 0.45 * summary["params"]
    from safetensors.torch import load_file
    weights = load_file(out / "finetune" / "final.safetensors")
    for bn, c in channels.items():
        pruned = torch.tensor(c["pruned"])
        assert torch.all(weights[f"{bn}.weight"][pruned] == 0) and torch.all(weights[f"{bn}.bias"][pruned] == 0)
        assert torch.all(weights[f"{c['conv']}.weight"][pruned] == 0)


def test_conv_bn_pairs_follow_the_data_flow():
    model = build_model("resnet20", width=4)
    pairs = conv_bn_pairs(model, torch.zeros(1, 3, 8, 8))
    assert pairs["bn1"] == "conv1" and pairs["layer2.0.bn2"] == "layer2.0.conv2" and len(pairs) == 19
    wrn = conv_bn_pairs(build_model("wrn28-2"), torch.zeros(1, 3, 8, 8))  # pre-activation: most BNs follow an addition
    assert wrn["blocks.0.bn1"] == "conv1" and wrn["blocks.3.bn2"] == "blocks.3.conv1"
    assert "blocks.1.bn1" not in wrn and "bn" not in wrn and len(wrn) == 13


def test_structural_counts_remove_pruned_channels_exactly():
    model = build_model("resnet20", width=4).eval()
    block = model.layer1[0]  # conv1: 4 -> 4 (3x3), bn1, conv2: 4 -> 4 at 32x32
    before = count_flops(model, (3, 32, 32))
    keep = torch.tensor([True, False, True, False])
    sp.attach_channels(model, {"layer1.0.conv1": keep, "layer1.0.bn1": keep})
    after = count_flops(model, (3, 32, 32))
    removed_weights = 2 * 4 * 9 + 4 * 2 * 9  # conv1 loses two filters, conv2 two input channels
    assert before["params_structural"] - after["params_structural"] == removed_weights
    assert before["macs_structural"] - after["macs_structural"] == removed_weights * 32 * 32
    x = torch.randn(2, 3, 32, 32)
    plain = build_model("resnet20", width=4).eval()
    plain.load_state_dict(sp.squash(model))  # the BatchNorm masks squash like the weight masks
    assert torch.allclose(plain(x), model(x), atol=1e-6)
    fresh = build_model("resnet20", width=4).eval()
    sp.load_masked_state_dict(fresh, model.state_dict())
    assert torch.equal(fresh.layer1[0].bn1.bias == 0, block.bn1.bias == 0)


def test_bn_masks_stay_zero_through_optimizer_steps():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 5, 5))
    keep = torch.tensor([True, True, False, True])
    sp.attach_channels(model, {"0": keep, "1": keep})
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    sp.bind_optimizer(model, opt)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 1, 5, 5)).square().sum().backward()
        opt.step()
    bn = model[1]
    assert bn.weight[2] == 0 and bn.bias[2] == 0 and bn.bias[[0, 1, 3]].ne(0).all()
    assert not sp.check(model)


def test_compare_writes_table_and_plot_and_resumes(tmp_path, cache_dir, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "name": "cmp", "out_dir": str(tmp_path), "data": {"name": "digits", "batch_size": 64, "train_subset": 256},
        "model": {"name": "cnn", "kwargs": {"width": 8}}, "train": {"epochs": 1, "lr": 0.05, "log_every": 0},
        "oneshot": {"finetune_epochs": 1},
        "compare": {"variants": ["dense", "oneshot", "static-erk"], "sparsities": [0.8], "seeds": [0, 1]}}))
    assert main(["compare", "-c", str(cfg)]) == 0
    out = tmp_path / "cmp" / "compare"
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 6 and {r["seed"] for r in results["rows"]} == {0, 1}
    table = {(t["variant"], t["sparsity"]): t for t in results["table"]}
    assert set(table) == {("dense", 0.0), ("oneshot", 0.8), ("static-erk", 0.8)}
    accs = [r["test_acc"] for r in results["rows"] if r["variant"] == "oneshot"]
    assert table[("oneshot", 0.8)]["acc_mean"] == pytest.approx(sum(accs) / 2)
    assert table[("oneshot", 0.8)]["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert (out / "accuracy.png").stat().st_size > 1000 and "| static-erk | 80% |" in (out / "table.md").read_text()
    # oneshot started from the dense run of its seed, not a pretrain of its own
    assert not (out / "seed-0" / "oneshot-0.8" / "pretrain").exists()
    capsys.readouterr()
    assert main(["compare", "-c", str(cfg)]) == 0  # everything finished: skipped
    assert main(["compare", "-c", str(cfg), "--executor", "process"]) == 0  # how trials run is no config change
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    # more variants later: only the new ones train (the dense runs are reused), other sections may not change
    assert main(["compare", "-c", str(cfg), "--set", "compare.variants=[dense, oneshot, gmp]", "--set", "compare.seeds=[0]"]) == 0
    extended = json.loads((out / "results.json").read_text())["rows"]
    assert extended[:6] == results["rows"]  # earlier rows stay (static-erk, seed 1), the new one is added
    assert [(r["variant"], r["seed"]) for r in extended[6:]] == [("gmp", 0)]
    assert main(["compare", "-c", str(cfg), "--set", "train.lr=0.1"]) == 2
    assert "different config" in capsys.readouterr().err


def test_method_without_target_is_refused(tmp_path, capsys):
    assert main(["train", "--method", "oneshot", "--set", f"out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == ("sparsearch: error: sparsity.method oneshot needs a target: "
                                               "sparsity.sparsity in (0, 1), got 0.0")
    assert not (tmp_path / "run").exists()


def test_compare_rejects_unknown_variant(tmp_path, capsys):
    assert main(["compare", "--set", f"out_dir={tmp_path}", "--set", "compare.variants=[dense, magic]"]) == 2
    assert "unknown compare variant 'magic'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
