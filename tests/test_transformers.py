"""Transformers as first-class models: the registry's ViT (nn.MultiheadAttention and hand-written attention), every
per-step method on it with the attention projections masked, Wanda, per-layer overrides, the CLI and a user's loop
bit-identical, export of a model no registry knows, and compile of a model with attention."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

import sparsearch
from floats import assert_same_sum
from sparsearch import SparsearchError
from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.config import from_dict
from sparsearch.data import build_loaders, dataset_from_config
from sparsearch.methods import Cubic, FlowDecay, Periodic
from sparsearch.models import build_model
from sparsearch.sparsity.criteria import _attention_values, wanda

# a ViT for digits: 8x8 images, 2x2 patches (16 tokens + the class token), dim 32 (N:M up to 1:16 on every layer)
VIT = {"image_size": 8, "patch": 2, "dim": 32, "depth": 2, "heads": 2}


def _vit(attention: str = "torch", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vit", in_channels=1, attention=attention, **VIT)


def _train(model, method, steps: int = 4):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    method.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        method.step()
    return model


METHODS = {
    "static": lambda: sparsearch.Static(0.9),
    "gmp": lambda: sparsearch.GMP(0.9, total_steps=4),
    "set": lambda: sparsearch.SET(0.9, updates=Periodic(every=2, end=0.75), total_steps=4),
    "rigl": lambda: sparsearch.RigL(0.9, updates=Periodic(every=2, end=0.75), total_steps=4),
    "granet": lambda: sparsearch.GraNet(0.9, pruning=Cubic(initial=0.5, start=0.0, end=0.5, every=1),
                                        updates=Periodic(every=2, end=0.75), total_steps=4),
    "srste-1:4": lambda: sparsearch.SRSTE("1:4", total_steps=4),
    "srste-1:8": lambda: sparsearch.SRSTE("1:8", total_steps=4),
    "decay-1:16": lambda: sparsearch.MaskDecay("1:16", decay=FlowDecay("exp", rate=0.5), total_steps=4),
}


@pytest.mark.parametrize("attention", ["torch", "manual"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_per_step_method_masks_the_attention_projections(name, attention):
    model = _train(_vit(attention), METHODS[name]())
    masked = sp.masked_layers(model)
    projections = [n for n in masked if n.endswith(("attn", "attn.qkv", "attn.out", "attn.out_proj"))]
    assert len(projections) == 2 * VIT["depth"], sorted(masked)  # q/k/v and output projection of every block
    assert "patch_embed" not in masked and "head" not in masked  # the first conv and the classifier stay dense
    assert not sp.check(model)
    density = sp.report(model)[-2]["density"]  # over the masked layers
    want = {"1:4": 0.25, "1:8": 0.125, "1:16": 0.0625}.get(name.split("-")[-1], 0.1)
    assert density == pytest.approx(want, abs=0.005)


def test_a_masked_attention_block_computes_with_the_masked_projection():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    plain = nn.MultiheadAttention(16, 2, batch_first=True)
    plain.load_state_dict(mha.state_dict())
    mask = torch.rand(48, 16) < 0.3
    sp.attach(mha, {"": mask})
    with torch.no_grad():
        plain.in_proj_weight.mul_(mask)
    x = torch.randn(3, 5, 16)
    for mode in (True, False):  # the training path and the fused inference path
        mha.train(mode), plain.train(mode)
        assert torch.equal(mha(x, x, x)[0], plain(x, x, x)[0])
    assert sp.squash(mha)["in_proj_weight"].count_nonzero() == mask.sum()


def test_attention_written_out_for_cpu_autocast_training_is_sdpas_function():
    """Training under bf16 autocast, the ViT's attention runs written out in float32 (torch's fused bf16 backward is
    slow on the CPU): output and gradients against float64 on the same bf16 inputs, within one bf16 rounding of the
    value plus float32 reordering over the t keys and d features (the largest |value| as the scale: random data of
    mixed signs, tests/floats.py); evaluation runs torch's fused kernel."""
    from floats import sum_tolerance, unit_roundoff
    from sparsearch.models.vit import attention

    gen = torch.Generator().manual_seed(0)
    b, h, t, d = 4, 2, 17, 16
    q, k, v = (torch.randn(b, h, t, d, generator=gen).to(torch.bfloat16).requires_grad_() for _ in range(3))
    probe = torch.randn(b, h, t, d, generator=gen).to(torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        got = attention(q, k, v)
    (got.float() * probe.float()).sum().backward()
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    want = F.scaled_dot_product_attention(*exact)
    want_grads = torch.autograd.grad((want * probe.double()).sum(), exact)
    assert got.dtype == torch.bfloat16
    for value, reference in zip((got, q.grad, k.grad, v.grad), (want.detach(), *want_grads)):
        bound = unit_roundoff(torch.bfloat16) * reference.abs() + sum_tolerance(2 * (t + d)) * float(reference.abs().max())
        assert ((value.double() - reference).abs() <= bound).all()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_wanda_scores_the_weight_times_its_input_norm_within_each_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Flatten(),
                          nn.Linear(8 * 16, 10))
    batches = [(torch.randn(4, 3, 4, 4), None), (torch.randn(4, 3, 4, 4), None)]
    scores = wanda(sp.find_layers(model, dense_first_last=False), model=model, batches=batches)
    x = torch.cat([b[0] for b in batches])
    inputs = {"1": model[0](x), "3": model[2](model[1](model[0](x)))}
    channel_norm = inputs["1"].pow(2).sum((0, 2, 3)).sqrt()  # grouped conv: each output channel sees its group's
    want = {"1": model[1].weight.abs() * torch.stack([channel_norm[o // 2 * 2:o // 2 * 2 + 2] for o in range(8)])[..., None, None],
            "3": model[3].weight.abs() * inputs["3"].norm(dim=0)}
    for name, product in want.items():
        rank = lambda t: t.reshape(t.shape[0], -1).argsort(dim=1, descending=True, stable=True)  # noqa: E731
        assert torch.equal(rank(scores[name]), rank(product)), name
    masks, _ = sp.compute_masks(model, sp.find_layers(model, dense_first_last=False), 0.5, "wanda", "uniform",
                                batches=batches)
    for name, mask in masks.items():  # the same count in every row, to within one where rows do not split evenly
        per_row = mask.reshape(mask.shape[0], -1).sum(1)
        assert int(per_row.max() - per_row.min()) <= 1 and int(per_row.sum()) == sp.keep_count(0.5, mask.numel()), name


def test_wanda_on_attention_reads_what_the_output_projection_is_fed():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(3, 5, 16)
    values = _attention_values(mha, [x, x, x], {})
    assert torch.allclose(F.linear(values, mha.out_proj.weight, mha.out_proj.bias), mha(x, x, x)[0], atol=1e-6)
    model = _vit()
    masks, _ = sp.compute_masks(model, sp.find_layers(model), 0.75, "wanda", "uniform", "nm:1:4",
                                batches=[(torch.randn(4, 1, 8, 8), None)])
    assert {round(float(m.float().mean()), 4) for m in masks.values()} == {0.25}
    with pytest.raises(SparsearchError, match="calibration"):
        sparsearch.OneShot(0.5, criterion="wanda").prepare(_vit())
    with pytest.raises(SparsearchError, match="within each output row"):
        sparsearch.OneShot(0.5, criterion="wanda", kind="channel", batches=[(torch.randn(2, 1, 8, 8), None)]).prepare(_vit())


def test_per_layer_overrides_set_a_layers_sparsity_and_kind():
    model = _vit()
    sparsearch.Static(0.9, overrides=[{"layers": ["blocks.*.attn"], "sparsity": 0.5},
                                      {"layers": "blocks.1.mlp.*", "kind": "nm:2:8"}]).prepare(model)
    rows = {r["name"]: r for r in sp.report(model) if "shape" in r}
    assert rows["blocks.0.attn"]["density"] == rows["blocks.1.attn"]["density"] == 0.5
    assert rows["blocks.1.mlp.0"]["kind"] == "nm:2:8" and rows["blocks.1.mlp.0"]["density"] == 0.25
    assert rows["blocks.0.mlp.0"]["density"] < 0.2 and not sp.check(model)
    rigl = _train(_vit(), sparsearch.RigL(0.9, overrides=[{"layers": ["blocks.0.*"], "sparsity": 0.6}],
                                          updates=Periodic(every=1, end=1.0), total_steps=4))
    block0 = [r for r in sp.report(rigl) if r["name"].startswith("blocks.0.")]  # 40% in all, kept through the updates
    assert sum(r["kept"] for r in block0) / sum(r["numel"] for r in block0) == pytest.approx(0.4, abs=1e-3)
    assert not sp.check(rigl)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: sparsearch.Static(0.9, overrides=[{"layer": "x", "sparsity": 0.5}]), "is not {layers"),
    (lambda: sparsearch.Static(0.9, overrides=[{"layers": [], "sparsity": 0.5}]), "non-empty list"),
    (lambda: sparsearch.Static(0.9, overrides=[{"layers": ["x"], "sparsity": 1.0}]), r"in \[0, 1\)"),
    (lambda: sparsearch.Static(0.9, overrides=[{"layers": ["x"]}]), "changes nothing"),
    (lambda: sparsearch.Static(0.9, overrides=[{"layers": ["x"], "kind": "nm:5:4"}]), "unknown mask kind"),
    (lambda: sparsearch.RigL(0.9, overrides=[{"layers": ["x"], "kind": "nm:2:4"}]), "cannot override kind"),
    (lambda: sparsearch.GMP(0.9, overrides=[{"layers": ["x"], "sparsity": 0.5}]), "takes no overrides"),
    (lambda: sparsearch.Static(0.9, overrides=[{"layers": ["nothing.*"], "sparsity": 0.5}]).prepare(_vit()),
     "match none of the masked layers"),
    (lambda: sparsearch.SRSTE("2:4").prepare(build_model("vit", dim=30, heads=3, depth=1)), "layer 'blocks.0.attn'"),
], ids=["key", "no-layers", "sparsity", "nothing", "kind", "rigl-kind", "gmp", "unmatched", "nm-layer"])
def test_a_bad_override_or_nm_layer_is_one_clear_error(make, expected):
    with pytest.raises(SparsearchError, match=expected):
        make()


def test_overrides_in_a_config_are_checked_before_a_run(tmp_path):
    from sparsearch.recipes import check_config

    cfg = from_dict({"sparsity": {"method": "gmp", "sparsity": 0.9, "overrides": [{"layers": ["a"], "sparsity": 0.5}]}})
    with pytest.raises(SparsearchError, match="takes no per-layer overrides"):
        check_config(cfg)
    cfg = from_dict({"sparsity": {"method": "static", "sparsity": 0.9, "snip_batches": 3}})  # an older run's key
    assert cfg.sparsity.calibration_batches == 3


# ---------------------------------------------------------------------------------- the CLI and a user's loop

CLI_CASES = {
    "rigl-torch-attention": ("torch", lambda steps: sparsearch.RigL(0.8, updates=Periodic(every=2, end=0.75), total_steps=steps),
                             ["--method", "rigl", "--sparsity", "0.8", "--set", "dst.update_every=2"]),
    "nm-1:8-manual-attention": ("manual", lambda steps: sparsearch.SRSTE("1:8", total_steps=steps),
                                ["--method", "nm", "--sparsity", "0.875", "--set", "sparsity.kind=nm:1:8"]),
}


def _user_loop(case: str):
    attention, make, _ = CLI_CASES[case]
    cfg = from_dict({"data": {"name": "digits", "batch_size": 64, "train_subset": 256}})
    loader, _ = build_loaders(dataset_from_config(cfg.data, seed=0), cfg.data, 0)
    model = _vit(attention)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    method = make(2 * len(loader))
    method.prepare(model, optimizer)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for x, y in loader.batches():
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            method.step()
    return method.squash()


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_a_vit_trains_the_same_through_the_cli_and_a_users_loop(tmp_path, cache_dir, case):
    attention, _, flags = CLI_CASES[case]
    model_flags = [f"model.kwargs.{k}={v}" for k, v in {**VIT, "attention": attention}.items()]
    argv = ["train", "--model", "vit", "--name", "vit", "--set", f"out_dir={tmp_path}", "--set", "data.name=digits",
            "--set", "data.train_subset=256", "--set", "data.batch_size=64", "--set", "train.epochs=2",
            "--set", "train.lr=0.05", "--set", "train.schedule=constant", "--set", "train.log_every=0",
            *[a for flag in model_flags for a in ("--set", flag)], *flags]
    assert main(argv) == 0
    (out,) = (tmp_path / "vit" / "train").iterdir()
    cli, mine = load_file(out / "final.safetensors"), _user_loop(case)
    assert cli.keys() == mine.keys()
    for key in cli:
        assert torch.equal(cli[key], mine[key]), key


# ------------------------------------------------------------------------------------------- deployment

class MyAttentionNet(nn.Module):
    """A model of the user's that no registry knows."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 2, stride=2)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


LOAD_ELSEWHERE = """
import sys, torch
from sparsearch.runtime import load
model = load(sys.argv[1])
x = torch.load(sys.argv[2])
torch.save(model(x), sys.argv[3])
"""


def test_a_model_no_registry_knows_exports_and_loads_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = MyAttentionNet()
    sparsearch.Static(0.75, allocation="uniform", dense_first_last=False).prepare(model)
    model.eval()
    with pytest.raises(SparsearchError, match="example=x"):
        sparsearch.runtime.export(model, tmp_path / "named", "my-attention-net")
    sparsearch.runtime.export(model, tmp_path / "out", example=torch.randn(1, 1, 8, 8))
    x = torch.randn(5, 1, 8, 8)  # another batch size than the example's
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, str(tmp_path / "out"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, capture_output=True)
    with torch.no_grad():
        want = model(x)
    # the program runs attention as its decomposed operations: the same sums in another order (at most 16 x 16
    # terms along any path through this network)
    assert_same_sum(torch.load(tmp_path / "y.pt"), want, n_terms=16 * 16)
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert int((weights["attn.in_proj_weight"] == 0).sum()) == 3 * 16 * 16 * 3 // 4  # the masked projection's zeros


def test_compile_of_a_vit_with_attention_runs_and_the_engine_says_where_it_stopped():
    model = _vit()
    sparsearch.Static(0.9).prepare(model)
    x = torch.randn(4, 1, 8, 8)
    compiled = sparsearch.runtime.compile(model, x, repeats=1)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model.eval()(x), atol=1e-4, rtol=1e-4)
    # the sparse engine's refusal names the operation, the module and the line of the model's code
    assert "flatten: .flatten() in the model (ViT), vit.py:" in compiled.skipped["engine"]
    assert "`x = self.patch_embed(x).flatten(2).transpose(1, 2)`" in compiled.skipped["engine"]
