"""The whole-network engine's fusions beyond the epilogue (runtime/fusion.py, passes 4-5) and the activations of
depthwise networks compute the unfused function: a producer computed plane by plane into a depthwise convolution's
scratch, squeeze-excitation's pool summed while planes are written and its gate folded into the next weights, SiLU and
sigmoid by a vectorised exp (relative error ~2e-7, so 1e-5 is the tolerance), EfficientNet-B0 whole."""

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsearch.bench.runtime import masked_for_bench
from sparsearch.models import build_model
from sparsearch.runtime import native
from sparsearch.runtime.common import prepare
from sparsearch.runtime.graph import lower
from sparsearch.runtime.plan import Plan
from test_engine import _close as _close_within
from test_engine import _run, _sparse_

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C++ compiler: the engine is not built here")


def _close(got, want, tol=1e-5):  # test_engine's check at this file's tolerance
    return _close_within(got, want, tol)


def _fused(model: nn.Module, shape: tuple, what: str = "expand") -> list[str]:
    plan = Plan(lower(model.eval(), shape))
    return [op.name for op in plan.graph.ops if op.attrs.get(what) is not None]


def test_a_fuzz_over_producer_depthwise_pairs_equals_torch():
    """A convolution -> (activation) -> depthwise pair runs as one fused operation (engine.cpp's fused_depthwise)
    and computes the pair's function: producers of every kernel size, stride and dilation, the ReLU read in either
    place, depthwise channels with no weights, several pairs of one geometry in a row (the scratch is reused)."""
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    for case in range(40):
        c_in, c = rng.choice([1, 3, 8]), rng.choice([4, 16, 24])
        k, stride, dilation = rng.choice([(1, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 2)])
        producer = nn.Conv2d(c_in, c, k, stride, dilation * (k // 2), dilation, bias=rng.random() < 0.5)
        kd, sd = rng.choice([(3, 1), (3, 2), (5, 1), (1, 1)])
        depthwise = nn.Conv2d(c, c, kd, sd, rng.randint(0, kd // 2 + 1), groups=c, bias=rng.random() < 0.5)
        act = [rng.choice([nn.ReLU(), nn.ReLU6()])] if rng.random() < 0.7 else []
        layers = [producer, *act, depthwise, *([nn.ReLU6()] if rng.random() < 0.5 else [])]
        for _ in range(rng.choice([0, 1])):  # a second pair on the first's output: same scratch geometry or not
            layers += [nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, groups=c)]
        for m in layers:
            if isinstance(m, nn.Conv2d):
                _sparse_(m.weight, rng.choice([1.0, 0.3, 0.1]), gen)
        model = nn.Sequential(*layers)
        x = torch.randn(rng.choice([1, 3]), c_in, rng.randint(11, 23), rng.randint(11, 23), generator=gen)
        assert _fused(model, tuple(x.shape)), f"case {case}: nothing fused"
        with torch.no_grad():
            want = model(x)
        for threads in (1, 2):
            assert _close(_run(model, x, threads), want), f"case {case}: {layers}, input {tuple(x.shape)}"


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand, self.dw = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        y = self.expand(x)
        return self.dw(y) + y  # y read twice: it must reach memory


def test_a_producer_whose_output_is_read_elsewhere_is_not_fused():
    torch.manual_seed(0)
    model, x = _Shared().eval(), torch.randn(2, 4, 9, 9)
    assert _fused(model, tuple(x.shape)) == []
    with torch.no_grad():
        assert _close(_run(model, x), model(x))


class _TwoHeights(nn.Module):
    """Two fused pairs whose scratch planes share width and border but not height: the second's bottom border
    lies where the first wrote its interior."""

    def __init__(self):
        super().__init__()
        self.pairs = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4))
                                   for _ in range(2))

    def forward(self, x):
        return self.pairs[1](self.pairs[0](x)[:, :, 5:, :])


def test_a_scratch_reused_at_another_height_reads_zeros_below_the_plane():
    torch.manual_seed(0)
    model, x = _TwoHeights().eval(), torch.rand(1, 4, 16, 12)
    with torch.no_grad():
        for m in model.modules():  # positive everywhere: no plane is all zeros after the ReLU
            if isinstance(m, nn.Conv2d):
                m.weight.abs_(), m.bias.abs_()
    assert len(_fused(model, tuple(x.shape))) == 2
    with torch.no_grad():
        assert _close(_run(model, x, 1), model(x))



class _Activations(nn.Module):
    """SiLU and sigmoid in every form a model writes them, in convolution epilogues and on their own."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1)
        self.silu, self.sigmoid, self.pool = nn.SiLU(), nn.Sigmoid(), nn.MaxPool2d(3, 1, 1)

    def forward(self, x):
        y = self.silu(self.a(x))
        z = F.silu(self.b(y) + y)  # after an add: an operation of its own
        w = torch.sigmoid(self.c(z)) + self.pool(z).sigmoid()
        return self.sigmoid(w) * y


def test_silu_and_sigmoid_equal_torch_over_the_whole_range():
    torch.manual_seed(0)
    model = _Activations().eval()
    for scale in (1.0, 30.0):  # 30: inputs far into both tails, where exp saturates and underflows
        x = scale * torch.randn(3, 3, 11, 13)
        with torch.no_grad():
            assert _close(_run(model, x), model(x))
    x = torch.linspace(-100, 100, 200 * 1001).reshape(1, 1, 200, 1001)  # element by element: ~2e-7 of max(1, |y|)
    for act in (nn.SiLU(), nn.Sigmoid()):
        want = act(x)
        err = (_run(nn.Sequential(act), x) - want).abs() / want.abs().clamp(min=1)
        assert float(err.max()) <= 1e-6, act


class _SE(nn.Module):
    """A depthwise convolution with squeeze-excitation, the gate written either way round; `reread` also reads the
    gated map elsewhere, so the gate cannot go into the next weights."""

    def __init__(self, c: int, swap: bool, reread: bool):
        super().__init__()
        self.expand, self.dw = nn.Conv2d(3, c, 1), nn.Conv2d(c, c, 5, 2, 2, groups=c)
        self.reduce, self.grow, self.project = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1), nn.Conv2d(c, 4, 1)
        self.swap, self.reread = swap, reread

    def forward(self, x):
        y = F.silu(self.dw(F.silu(self.expand(x))))
        s = torch.sigmoid(self.grow(F.silu(self.reduce(F.adaptive_avg_pool2d(y, 1)))))
        gated = s * y if self.swap else y * s
        out = self.project(gated)
        return torch.cat([out, gated], dim=1) if self.reread else out


@pytest.mark.parametrize("swap,reread", [(False, False), (True, False), (False, True)])
def test_squeeze_excitation_fused_and_not_equals_torch(swap, reread):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = _SE(12, swap, reread).eval()
    for m in (model.expand, model.dw, model.project):
        _sparse_(m.weight, 0.3, gen)
    shape = (3, 3, 15, 17)
    assert bool(_fused(model, shape, "sum")) and bool(_fused(model, shape, "gate")) == (not reread)
    x = torch.randn(*shape, generator=gen)
    with torch.no_grad():
        want = model(x)
    for threads in (1, 2):
        for n in (1, 3):
            assert _close(_run(model, x[:n], threads), want[:n]), (threads, n)


@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_efficientnet_b0_runs_whole_on_the_engine(sparsity):
    torch.manual_seed(0)
    model = masked_for_bench(build_model("efficientnet_b0", num_classes=10, width=0.25), sparsity)
    x = torch.randn(3, 3, 32, 32)
    net = prepare(model, x)
    assert len(_fused(net, tuple(x.shape), "gate")) == 16  # every MBConv's gate
    with torch.no_grad():
        want = model(x)
    for threads in (1, 2):
        assert _close(_run(net, x, threads), want, 1e-4)  # BatchNorms folded: float sums in another order
