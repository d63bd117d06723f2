"""The whole-network engine computes the masked model's function: a seeded fuzz over convolution shapes, every
registry model and genotype networks at several sparsities, block and channel masks, thread counts, saved plans,
and the fallbacks where it cannot run."""

import random

import pytest
import torch
import torch.nn as nn

from sparsearch import sparsity as sp
from sparsearch.bench.runtime import masked_for_bench
from sparsearch.models import build_model
from sparsearch.runtime import compile, export, load, native
from sparsearch.runtime.graph import Unsupported, lower
from sparsearch.runtime.plan import Plan

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C++ compiler: the engine is not built here")


def _close(got, want, tol=1e-4):
    return float((got - want).abs().max()) <= tol * max(1.0, float(want.abs().max()))


def _sparse_(weight: torch.Tensor, density: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        weight.mul_((torch.rand(weight.shape, generator=gen) < density).float())


def _run(model: nn.Module, x: torch.Tensor, threads: int = 2) -> torch.Tensor:
    return Plan(lower(model.eval(), tuple(x.shape))).run(x, threads)


def test_a_seeded_fuzz_over_convolution_shapes_equals_torch():
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    for case in range(60):
        k = rng.choice([1, 3, 5])
        dilation = rng.choice([1, 1, 2])
        stride = rng.choice([1, 2])
        padding = rng.randint(0, dilation * (k - 1) // 2 + 1)
        c_in = rng.choice([1, 3, 4, 8, 12])
        groups = rng.choice([g for g in (1, 2, c_in) if c_in % g == 0])
        c_out = groups * rng.choice([1, 2, 3])
        h, w = rng.randint(k * dilation, 19), rng.randint(k * dilation, 19)  # odd sizes too
        conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias=rng.random() < 0.5)
        _sparse_(conv.weight, rng.choice([1.0, 0.5, 0.05, 0.01]), gen)
        layers = [conv] + ([nn.ReLU()] if rng.random() < 0.5 else [])
        model = nn.Sequential(*layers)
        x = torch.randn(rng.choice([1, 3]), c_in, h, w, generator=gen)
        with torch.no_grad():
            want = model(x)
        assert _close(_run(model, x), want), f"case {case}: {conv}, input {tuple(x.shape)}"


class _Block(nn.Module):
    """Residual add, cat into one buffer, pooling of both kinds, a crop, and a linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1, stride=2)
        self.pool, self.avg = nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        y = torch.relu(self.a(x) + x)
        z = torch.cat([self.b(y[:, :, 1:, 1:]), self.pool(y), self.avg(self.pool(x))], dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


def test_fusions_cat_crops_and_pools_equal_torch():
    torch.manual_seed(0)
    model = _Block().eval()
    for shape in ((1, 4, 10, 10), (3, 4, 8, 8)):
        x = torch.randn(*shape)
        with torch.no_grad():
            assert _close(_run(model, x), model(x))


SLOW = pytest.mark.slow  # the same kinds of layer as a faster model in the list: in `make test-all`
REGISTRY = [("resnet20", {}, 3, 15), pytest.param("resnet56", {}, 3, 16, marks=SLOW), pytest.param("vgg16", {}, 3, 32, marks=SLOW),
            ("mobilenetv2", {}, 3, 16),
            pytest.param("wrn28-2", {}, 3, 16, marks=SLOW), ("cnn", {}, 1, 8), ("mlp", {"image_size": 8}, 1, 8),
            ("genotype", {"genotype": "DASS_95", "channels": 8, "layers": 5}, 3, 16),
            ("genotype", {"genotype": "DARTS_V2", "channels": 8, "layers": 5}, 3, 16)]


def _masked(name, kwargs, channels, sparsity, kind="unstructured"):
    torch.manual_seed(0)
    return masked_for_bench(build_model(name, num_classes=10, in_channels=channels, **kwargs), sparsity, kind)


@pytest.mark.parametrize("name,kwargs,channels,size", REGISTRY,
                         ids=[f"{v[0]}-{v[1].get('genotype', '')}" for v in (getattr(r, "values", r) for r in REGISTRY)])
def test_engine_equals_the_masked_model_on_every_registry_model(name, kwargs, channels, size):
    for sparsity in (0.0, 0.5, 0.95, 0.99):
        model = _masked(name, kwargs, channels, sparsity)
        for batch in (1, 32):
            x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(batch))
            compiled = compile(model, x, repeats=1, engines=("engine",))
            with torch.no_grad():
                want = model(x)
            assert compiled.engine == "engine" and _close(compiled(x), want), (sparsity, batch)
    assert sp.masked_layers(model)  # the original keeps its masks


@pytest.mark.parametrize("kind", ["block:4:4", "channel"])
def test_block_and_channel_masks(kind):
    model = _masked("resnet20", {}, 3, 0.9, sp.parse_kind(kind))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _close(compile(model, x, repeats=1, engines=("engine",))(x), model(x))


def test_thread_counts_give_the_same_numbers():
    model = _masked("genotype", {"genotype": "DASS_95", "channels": 8, "layers": 5}, 3, 0.9)
    compiled = compile(model, torch.randn(2, 3, 16, 16), repeats=1, engines=("engine",))
    x = torch.randn(2, 3, 16, 16)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(compiled(x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])  # each output is summed by one thread, in one order


def test_a_saved_plan_reloads_without_timing_and_gives_identical_outputs(tmp_path, monkeypatch):
    import sparsearch.runtime as runtime

    model = _masked("resnet20", {}, 3, 0.95)
    x = torch.randn(4, 3, 32, 32)
    compiled = compile(model, x, repeats=1)
    export(model, tmp_path, "resnet20")
    compiled.save(tmp_path)
    monkeypatch.setattr(runtime, "_race", lambda *a, **k: pytest.fail("load must not time"))
    again = load(tmp_path)
    assert again.engine == compiled.engine and torch.equal(again(x), compiled(x))


def test_unsupported_networks_fall_back_and_say_why():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(Unsupported, match="Tanh"):
        lower(model, tuple(x.shape))
    compiled = compile(model, x, repeats=1)
    assert compiled.engine != "engine" and "Tanh" in compiled.skipped["engine"]
    with torch.no_grad():
        assert _close(compiled(x), model(x))


def test_an_unwritable_cache_is_a_notice_not_a_crash(monkeypatch, capsys, tmp_path):
    native.library.cache_clear()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSEARCH_CACHE", str(blocker))  # a file where the cache folder should be
    try:
        assert native.library() is None and "not usable" in capsys.readouterr().err
    finally:
        native.library.cache_clear()


def test_without_a_compiler_the_library_is_none_after_one_line(monkeypatch, capsys):
    native.library.cache_clear()
    monkeypatch.setattr("sparsearch.native.compiler", lambda: None)
    try:
        assert native.library() is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no C++ compiler" in err[0]
        model = _masked("cnn", {}, 1, 0.9)
        x = torch.randn(2, 1, 8, 8)
        compiled = compile(model, x, repeats=1, engines=("engine", "layers"))
        with torch.no_grad():
            assert compiled.engine == "layers" and _close(compiled(x), model(x))
    finally:
        native.library.cache_clear()


def test_outputs_are_the_callers_not_the_engines_buffers():
    model = _masked("cnn", {}, 1, 0.9)
    a, b = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    compiled = compile(model, a, repeats=1, engines=("engine",))
    first = compiled(a)
    kept = first.clone()
    compiled(b)  # a (1, C) output's view of its buffer is contiguous: it must still be copied out
    assert torch.equal(first, kept)



def test_a_fuzz_over_pools_equals_torch():
    """Max and average pools (padding counted or not) of every kernel, stride and padding, on maps where the
    vectorised inner columns are many, few or none."""
    rng, gen = random.Random(3), torch.Generator().manual_seed(3)
    for case in range(40):
        k = rng.choice([1, 2, 3, 5])
        stride, pad = rng.choice([1, 1, 2]), rng.randint(0, k // 2)
        pool = rng.choice([nn.MaxPool2d(k, stride, pad), nn.AvgPool2d(k, stride, pad, count_include_pad=True),
                           nn.AvgPool2d(k, stride, pad, count_include_pad=False)])
        model = nn.Sequential(nn.Conv2d(2, 3, 1), pool)
        x = torch.randn(rng.choice([1, 2]), 2, rng.randint(k, 40), rng.randint(k, 40), generator=gen)
        with torch.no_grad():
            assert _close(_run(model, x), model(x)), f"case {case}: {pool}, input {tuple(x.shape)}"
