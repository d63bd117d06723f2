"""The sparse runtime: CSR kernels equal the dense layers, BatchNorm folding is exact, and a compiled model
equals the masked model on every registry model and on genotype networks."""

import copy

import pytest
import torch
import torch.nn as nn

from floats import assert_same_sum
from sparsearch import sparsity as sp
from sparsearch.models import build_model
from sparsearch.runtime import CSRConv2d, CSRLinear, compile, export, fold_batchnorm, kernels, load


def _sparse_(weight: torch.Tensor, density: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight.mul_((torch.rand(weight.shape, generator=gen) < density).float())


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=1), dict(kernel_size=1, stride=2), dict(kernel_size=5, padding=4, dilation=2)])
@pytest.mark.parametrize("batch", [1, 3])
def test_csr_conv_equals_dense_conv(kwargs, batch):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, bias=True, **kwargs)
    _sparse_(conv.weight, 0.1)
    x = torch.randn(batch, 8, 9, 7)
    terms = 8 * kwargs["kernel_size"] ** 2  # input channels x taps, the bias added to them
    assert_same_sum(CSRConv2d(conv)(x), conv(x), terms + 1)
    if kernels.numba is not None:
        assert_same_sum(kernels.TapsConv2d(conv)(x), conv(x), terms + 1)


@pytest.mark.parametrize("kwargs", [dict(groups=8, padding=1), dict(groups=4, padding=1, stride=2),
                                    dict(groups=8, padding=2, dilation=2)])
def test_taps_kernel_handles_grouped_and_depthwise_convs(kwargs):
    if kernels.numba is None:
        pytest.skip("numba (the fast extra) is not installed")
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, **kwargs)
    _sparse_(conv.weight, 0.3)
    for x in (torch.randn(1, 8, 9, 7), torch.randn(3, 8, 9, 7)):
        assert_same_sum(kernels.TapsConv2d(conv)(x), conv(x), 8 // conv.groups * 9 + 1)


def test_csr_linear_equals_dense_linear():
    torch.manual_seed(0)
    lin = nn.Linear(20, 7)
    _sparse_(lin.weight, 0.2)
    for x in (torch.randn(1, 20), torch.randn(5, 20), torch.randn(2, 3, 20)):
        assert_same_sum(CSRLinear(lin)(x), lin(x), 20 + 1)
        if kernels.numba is not None:
            assert_same_sum(kernels.TapsConv2d(lin)(x), lin(x), 20 + 1)


def test_block_masks_get_the_bsr_kernel_and_unstructured_ones_do_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 64))
    layers = sp.find_layers(model, dense_first_last=False)
    masks, densities = sp.compute_masks(model, layers, 0.9, "magnitude", "uniform", sp.Block(16, 16))
    sp.attach(model, masks, densities=densities)
    x = torch.randn(3, 16, 6, 6)
    plain = copy.deepcopy(model)
    sp.remove(plain)
    conv, lin = plain[0], plain[3]
    assert kernels.block_size(conv.weight.reshape(32, -1)) == (16, 16)
    assert_same_sum(kernels.candidates(conv)["bsr"](x), conv(x), 16 * 9 + 1)
    y = conv(x).relu().flatten(1)
    assert_same_sum(kernels.candidates(lin)["bsr"](y), lin(y), 32 * 6 * 6 + 1)
    compiled = compile(model, x, repeats=1, kernels=("bsr",))
    assert compiled.engine == "layers" and {r["kind"] for r in compiled.table()} == {"bsr"}
    unstructured = nn.Linear(64, 64)
    _sparse_(unstructured.weight, 0.1)
    assert kernels.block_size(unstructured.weight.detach()) is None and "bsr" not in kernels.candidates(unstructured)


def _randomise_batchnorm_(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def test_fold_batchnorm_is_exact_and_keeps_zeros():
    model = build_model("resnet20").eval()
    _randomise_batchnorm_(model)
    _sparse_(model.layer1[0].conv1.weight, 0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm(model, x)
        after = model(x)
    assert len(folded) == 19 and isinstance(model.layer1[0].bn1, nn.Identity)
    assert torch.allclose(before, after, atol=1e-4)
    assert float((model.layer1[0].conv1.weight != 0).float().mean()) < 0.15  # zeros stayed zeros


# small inputs keep the test quick; VGG's five poolings need 32 x 32
REGISTRY = [("resnet20", {}, 3, 16), ("resnet56", {}, 3, 16), ("vgg16", {}, 3, 32), ("mobilenetv2", {}, 3, 16),
            ("wrn28-2", {}, 3, 16), ("cnn", {}, 1, 8), ("mlp", {"image_size": 8}, 1, 8),
            ("genotype", {"genotype": "DASS_95", "channels": 8, "layers": 5}, 3, 16)]


@pytest.mark.parametrize("name,kwargs,channels,size", REGISTRY, ids=[r[0] for r in REGISTRY])
def test_compiled_model_equals_the_masked_model(name, kwargs, channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, **kwargs)
    _randomise_batchnorm_(model)
    masks, densities = sp.compute_masks(model, sp.find_layers(model), 0.9, "magnitude", "erk")
    sp.attach(model, masks, densities=densities)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        want = model.eval()(x)
        want = want[0] if isinstance(want, tuple) else want
    forced = [("csr",)] + ([("taps",)] if kernels.numba is not None else [])
    for only in forced:  # the per-layer runtime, each sparse kernel wherever it applies
        compiled = compile(model, x, repeats=1, kernels=only)
        assert compiled.max_abs_error <= 1e-4
        assert (compiled(x) - want).abs().max() <= 1e-4
        rows = compiled.table()
        assert rows and all(r["kind"] in ("dense", "csr", "taps") for r in rows)
        assert any(r["kind"] == only[0] for r in rows)
    compiled = compile(model, x, repeats=1)  # the fastest engine by measurement
    assert compiled.engine in compiled.times and compiled.max_abs_error <= 1e-4
    assert (compiled(x) - want).abs().max() <= 1e-4
    assert sp.masked_layers(model)  # the original keeps its masks


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("genotype", {"genotype": "DASS_95", "channels": 8, "layers": 5})])
def test_export_reloads_with_the_constructor_only(tmp_path, name, kwargs):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    _randomise_batchnorm_(model)
    masks, densities = sp.compute_masks(model, sp.find_layers(model), 0.9, "magnitude", "erk")
    sp.attach(model, masks, densities=densities)
    export(model, tmp_path, name, **kwargs)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert not any("parametrizations" in k for k in state)
    fresh = build_model(name, **kwargs).eval()  # plain PyTorch: constructor + load_state_dict
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x)
        got, loaded = fresh(x), load(tmp_path)(x)
    want, got, loaded = (t[0] if isinstance(t, tuple) else t for t in (want, got, loaded))
    assert torch.equal(want, got) and torch.equal(want, loaded)


def test_compile_command_on_a_trained_run(tmp_path, cache_dir, capsys):
    import json

    from sparsearch.cli import main

    assert main(["train", "--method", "static", "--sparsity", "0.9", "--model", "cnn", "--set", f"out_dir={tmp_path}",
                 "--set", "data.name=digits", "--set", "data.train_subset=256", "--set", "train.epochs=1",
                 "--set", "model.kwargs={width: 8}"]) == 0
    where = tmp_path / "run" / "train" / "static-0.9"
    assert main(["compile", str(where), "--batch", "4"]) == 0
    result = json.loads((where / "compiled" / "plan.json").read_text())
    assert result["batch"] == 4 and result["max_abs_error"] <= 1e-4 and result["engine"] in result["times_ms"]
    assert "eager" in result["times_ms"] and result["fastest_dense"]["engine"] in result["times_ms"]
    reloaded = load(where / "compiled")
    assert reloaded.training is False and reloaded.engine == result["engine"]
    assert f"engine {result['engine']}" in capsys.readouterr().out
    assert main(["compile", str(tmp_path)]) == 2  # not a training directory: one line, exit 2


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("genotype", {"genotype": "DASS_95", "channels": 8, "layers": 5})])
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path, name, kwargs):
    ort = pytest.importorskip("onnxruntime")
    from sparsearch.runtime import to_onnx

    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    _randomise_batchnorm_(model)
    masks, densities = sp.compute_masks(model, sp.find_layers(model), 0.9, "magnitude", "erk")
    sp.attach(model, masks, densities=densities)
    path = to_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "model.onnx")
    x = torch.randn(3, 3, 32, 32)  # another batch size than exported with
    with torch.no_grad():
        want = model.eval()(x)
        want = want[0] if isinstance(want, tuple) else want
    got = ort.InferenceSession(str(path)).run(["logits"], {"input": x.numpy()})[0]
    assert abs(got - want.numpy()).max() <= 1e-4


def test_the_public_api_resolves():
    import sparsearch

    assert all(getattr(sparsearch, name) is not None for name in sparsearch.__all__)
    assert sparsearch.compile is compile and sparsearch.load is load
    with pytest.raises(AttributeError):
        sparsearch.no_such_thing  # noqa: B018


@pytest.mark.parametrize("engine", ["engine", "onnxruntime", "openvino", "eager", "layers"])
def test_every_engines_saved_plan_reloads_to_the_same_engine_and_function(tmp_path, engine):
    from sparsearch.runtime.engines import BUILDERS, Unavailable

    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=1, width=8)
    masks, densities = sp.compute_masks(model, sp.find_layers(model), 0.9, "magnitude", "erk")
    sp.attach(model, masks, densities=densities)
    x = torch.randn(3, 1, 8, 8)
    try:
        BUILDERS[engine](model, x)
    except Unavailable as exc:
        pytest.skip(str(exc))
    compiled = compile(model, x, repeats=1, engines=(engine,), kernels=("csr",) if engine == "layers" else None)
    assert compiled.engine == engine
    export(model, tmp_path, "cnn", num_classes=10, in_channels=1, width=8)
    compiled.save(tmp_path)
    reloaded = load(tmp_path)
    assert reloaded.engine == engine and reloaded.table() == compiled.table()
    assert reloaded.runner.options() == compiled.runner.options()  # the engine's chunk and threads, the kernels
    assert torch.equal(reloaded(x), compiled(x))


def test_the_engine_runs_on_the_threads_it_measured_faster_and_computes_the_same_on_any():
    from sparsearch.runtime.common import prepare
    from sparsearch.runtime.engines import Native, Unavailable

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3, width=8)
    masks, densities = sp.compute_masks(model, sp.find_layers(model), 0.9, "magnitude", "erk")
    sp.attach(model, masks, densities=densities)
    x = torch.randn(1, 3, 32, 32)
    net = prepare(model, x)
    try:
        chosen = Native(net, x)
    except Unavailable as exc:
        pytest.skip(str(exc))
    assert chosen.options()["threads"] in (1, torch.get_num_threads())
    one, most = Native(net, x, threads=1), Native(net, x, threads=torch.get_num_threads())
    assert one.options() == {"chunk": 1, "threads": 1}
    assert torch.equal(one(x), most(x))  # each output is one thread's sum, whatever the thread count


def test_a_model_with_multihead_attention_compiles_to_a_working_callable_quietly(capfd):
    """An engine that cannot build a model is skipped with its reason (the ONNX exporter's graph dump silenced)."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.attn, self.head = nn.Linear(16, 32), nn.MultiheadAttention(32, 4, batch_first=True), nn.Linear(32, 10)

        def forward(self, x):
            h = self.proj(x)
            return self.head((h + self.attn(h, h, h)[0]).mean(1))

    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(2, 5, 16)
    capfd.readouterr()
    compiled = compile(model, x, repeats=1)
    out, err = capfd.readouterr()
    assert "graph" not in out + err and "Traceback" not in out + err, out + err
    assert compiled.engine in compiled.times and "onnxruntime" in {**compiled.skipped, **compiled.times}
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x))


def test_the_race_is_not_decided_by_a_burst_of_foreign_load(monkeypatch):
    """Engine A costs 2 ms and B 4 ms, but another process loads the CPU during A's first two rounds (A then takes
    10 ms): by medians B would win; the race ranks by lower quartile, sees the rankings disagree, times the two
    again, and keeps A. A fake clock makes this exact."""
    import sparsearch.runtime as runtime

    clock = {"now": 0.0, "a_calls": 0}
    calls_per_round = 2 + 4  # two warm-up calls, then `repeats`

    def engine_a(x):
        clock["a_calls"] += 1
        clock["now"] += 0.010 if clock["a_calls"] <= 2 * calls_per_round else 0.002

    def engine_b(x):
        clock["now"] += 0.004

    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock["now"])
    samples = runtime._race({"A": engine_a, "B": engine_b}, torch.zeros(1), repeats=4, rounds=3)
    median = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    quartile = {k: runtime.lower_quartile(v) for k, v in samples.items()}
    assert min(quartile, key=quartile.get) == "A"
    assert len(samples["A"]) > 3 * 4  # re-timed: the first rounds' medians had ranked B first
    assert median["A"] <= median["B"]  # and with the extra rounds the medians agree too
