"""Sparse-IFT: iso-FLOP Sparse Wide and Sparse Parallel on every registry model, training with static and RigL
masks, compiling to the same function, and the CLI / compare path."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparsearch
from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.models import MODELS, WIDEN, build_model
from sparsearch.models.flops import count_flops
from sparsearch.models.ift import ParallelBranches, iso_sparsity, layer_macs, sparse_parallel, sparse_wide

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "vgg16": (3, 32, 32), "vit": (3, 32, 32), "vit_tiny": (3, 32, 32)}
# VGG pools 5 times, the ViTs have their 32x32 position tables; the rest take 8x8 RGB (cheap)
KWARGS = {"vit_tiny": {"image_size": 32}}


def _shape(name):
    return SHAPES.get(name, (3, 8, 8))


def _build(name, factor=1.0):
    shape = _shape(name)
    kwargs = WIDEN[name](KWARGS.get(name, {}), factor) if factor != 1.0 else KWARGS.get(name, {})
    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=shape[0], **kwargs)


def _iso(model, dense_macs, shape, allocation="uniform"):
    """Solve the mask sparsity, attach random masks at it, and measure the non-zero MACs."""
    s = iso_sparsity(model, dense_macs, shape, allocation)
    masks, densities = sp.compute_masks(model, sp.find_layers(model), s, "random", allocation)
    sp.attach(model, masks, densities=densities)
    return s, count_flops(model, shape)["macs_effective"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("wrn28-10", "wideresnet") else n
                                  for n in sorted(MODELS) if n != "encoder"])  # the widest two: the same layers as
# wrn28-2, in make test-all; the encoder has no width rule (its input, embedded tokens, is as wide as it is)
def test_every_registry_model_transforms_at_the_dense_models_macs(name):
    shape = _shape(name)
    dense_macs = sum(layer_macs(_build(name), shape).values())
    assert dense_macs == count_flops(_build(name), shape)["macs"]
    wide = sparse_wide(lambda f: _build(name, f), 0.5)
    assert count_flops(wide, shape)["macs"] > 1.5 * dense_macs  # the widened network is bigger...
    s, macs = _iso(wide, dense_macs, shape)
    assert s > 0.4 and macs == pytest.approx(dense_macs, rel=0.01)  # ...and sparse at the same MACs (keep-count rounding)
    parallel = sparse_parallel(_build(name), 0.5, torch.zeros(2, *shape))
    assert any(isinstance(m, ParallelBranches) for m in parallel.modules())
    s, macs = _iso(parallel, dense_macs, shape)
    # the ViT's attention projections are not branched (the block calls them as weights), so less to take back
    assert s > (0.3 if name.startswith("vit") else 0.4) and macs == pytest.approx(dense_macs, rel=0.01)


def test_iso_sparsity_follows_the_allocation_and_keeps_the_stem_dense():
    name, shape = "resnet20", (3, 32, 32)
    dense_macs = sum(layer_macs(_build(name), shape).values())
    uniform = iso_sparsity(sparse_wide(lambda f: _build(name, f), 0.75), dense_macs, shape, "uniform")
    erk = iso_sparsity(sparse_wide(lambda f: _build(name, f), 0.75), dense_macs, shape, "erk")
    assert 0.75 < uniform < 0.8  # the widened dense stem and classifier cost a little more: slightly sparser masks
    assert erk != pytest.approx(uniform, abs=1e-3)  # ERK puts more density where the feature maps are large
    _, macs = _iso(sparse_wide(lambda f: _build(name, f), 0.75), dense_macs, shape, "erk")
    assert macs == pytest.approx(dense_macs, rel=0.01)
    with pytest.raises(sparsearch.SparsearchError, match="global"):
        iso_sparsity(_build(name), dense_macs, shape, "global")


@pytest.mark.parametrize("method", ["static", "rigl"])
def test_a_transformed_network_trains_with_static_and_rigl_masks(method):
    torch.manual_seed(0)
    model = sparse_parallel(build_model("cnn", in_channels=1, width=8), 0.75, torch.zeros(2, 1, 8, 8))
    s = iso_sparsity(model, sum(layer_macs(build_model("cnn", in_channels=1, width=8), (1, 8, 8)).values()), (1, 8, 8), "erk")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    obj = sparsearch.Static(s) if method == "static" else sparsearch.RigL(s, total_steps=12,
                                                                          updates=sparsearch.Periodic(every=3))
    obj.prepare(model, optimizer)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        obj.step()
        losses.append(loss.item())
    assert not sp.check(model) and losses[-1] < losses[0]
    assert len(sp.masked_layers(model)) == 4 * 2  # two inner convs, four branches each; stem and classifier dense


def test_a_transformed_sparse_network_compiles_to_the_same_function():
    torch.manual_seed(0)
    model = sparse_parallel(build_model("resnet20", width=8), 0.75, torch.zeros(2, 3, 32, 32))
    sparsearch.Static(0.8, allocation="erk").prepare(model)
    model.eval()
    example = torch.randn(4, 3, 32, 32)
    compiled = sparsearch.compile(model, example, repeats=3)
    assert "engine" in compiled.times  # the sparse engine ran it, checked against the masked model
    with torch.no_grad():
        want = model(example)
    assert torch.allclose(compiled(example), want, atol=1e-4 * max(1.0, want.abs().max().item()))


def _argv(tmp_path, *extra):
    return ["train", "--model", "cnn", "--set", f"out_dir={tmp_path}", "--set", "data.name=digits",
            "--set", "data.train_subset=256", "--set", "data.batch_size=64", "--set", "train.epochs=1",
            "--set", "model.kwargs={width: 8}", *extra]


def test_the_cli_trains_a_sparse_wide_network_at_the_dense_macs(tmp_path, cache_dir):
    assert main(_argv(tmp_path, "--name", "d", "--method", "dense")) == 0
    assert main(_argv(tmp_path, "--name", "w", "--method", "rigl", "--sparsity", "0.75", "--set", "ift.family=wide")) == 0
    dense = json.loads((tmp_path / "d" / "train" / "dense" / "summary.json").read_text())
    wide = json.loads((tmp_path / "w" / "train" / "wide-rigl-0.75" / "summary.json").read_text())
    assert wide["params"] > 3 * dense["params"]
    assert wide["macs_effective"] == pytest.approx(dense["macs"], rel=0.01)
    assert main(_argv(tmp_path, "--name", "x", "--method", "hydra", "--sparsity", "0.5",
                      "--set", "ift.family=wide")) == 2  # a method that starts from a dense training: refused
    assert not (tmp_path / "x").exists()


def test_sparse_parallel_gives_each_branch_its_own_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    sparse_parallel(model, 0.5, torch.zeros(2, 3, 8, 8))
    assert isinstance(model[3], ParallelBranches) and isinstance(model[4], nn.Identity)
    a, b = model[3].branches
    assert isinstance(a[1], nn.BatchNorm2d) and a[1] is not b[1]
    assert not torch.equal(a[0].weight, b[0].weight)  # freshly initialised, not copies
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[8], nn.Linear)  # stem and classifier untouched
