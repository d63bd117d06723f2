"""The runtime on the models users bring: ImageNet-layout CNNs, depthwise and squeeze-excitation / SiLU networks,
transformers with both attention forms and a BERT-style encoder, on the per-layer engine's native kernels (a mixed
plan: dense layers stay PyTorch's), against the masked PyTorch model. Timings live in `sparsearch bench runtime`."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn

from floats import assert_same_sum
from sparsearch.bench.runtime import masked_for_bench
from sparsearch.kernels.sparse_conv import Pattern, linear_rows
from sparsearch.models import build_model
from sparsearch.runtime import compile, export, load
from sparsearch.runtime.attention import Attention, unpack_attention


@functools.lru_cache(maxsize=1)
def _built(name: str, kwargs: tuple) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=10, **dict(kwargs))  # ResNet-50's initialisation alone takes a second


def _masked(name: str, kwargs: dict, sparsity: float, allocation: str = "uniform") -> nn.Module:
    return masked_for_bench(copy.deepcopy(_built(name, tuple(sorted(kwargs.items())))), sparsity, allocation=allocation)


def _terms(model: nn.Module, x: torch.Tensor) -> int:
    """How many terms the network's sums add along its way (floats.py): every weight layer's fan-in, a LayerNorm's
    two means, attention's dot products and its sum over the keys, a pooling's positions."""
    area = x.shape[-1] * x.shape[-2] if x.dim() == 4 else 0
    tokens = x.shape[1] if x.dim() == 3 else area // 16**2 + 1  # the ViTs here: patches of 16 and a class token
    n = area  # the final global pooling, where there is one
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            n += m.weight[0].numel()
        elif isinstance(m, nn.LayerNorm):
            n += 2 * m.normalized_shape[0]
        elif isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "SelfAttention":
            n += 2 * 64 + tokens  # q.k over a head's 64 features, the softmax's and the output's sums over the keys
        elif type(m).__name__ == "SqueezeExcitation":
            n += area  # its global pooling (of a smaller map: the input's area bounds it)
    return n


CASES = [("resnet50", {}, (3, 32, 32)), ("mobilenetv2_imagenet", {}, (3, 64, 64)), ("efficientnet_b0", {}, (3, 64, 64)),
         ("vit_tiny", {"image_size": 64, "attention": "torch"}, (3, 64, 64)),
         ("vit_tiny", {"image_size": 64, "attention": "manual"}, (3, 64, 64)), ("encoder", {}, (19, 128))]


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{c[1].get('attention', '')}" for c in CASES])
def test_native_kernels_equal_the_masked_model_and_the_saved_plan_reloads(name, kwargs, shape, tmp_path):
    before = torch.get_num_threads()
    try:
        for i, sparsity in enumerate((0.0, 0.5, 0.9, 0.95, 0.99)):
            torch.set_num_threads(1 + i % 2)
            model = _masked(name, kwargs, sparsity)
            x = torch.randn((1, 3)[i % 2], *shape, generator=torch.Generator().manual_seed(i))
            compiled = compile(model, x, repeats=1, engines=("layers",), kernels=("native",))
            assert compiled.engine == "layers"
            assert {row["kind"] for row in compiled.table() if "shape" in row} == {"native"}, sparsity  # pools aside
            with torch.no_grad():
                want = model(x)
            assert_same_sum(compiled(x), want, _terms(model, x))
        export(model, tmp_path, name, num_classes=10, **kwargs)  # the 99% one
        compiled.save(tmp_path)
        loaded = load(tmp_path)
        assert loaded.engine == "layers" and loaded.runner.options() == compiled.runner.options()
        assert_same_sum(loaded(x), want, _terms(model, x))
    finally:
        torch.set_num_threads(before)


def test_a_mixed_plan_runs_dense_and_sparse_layers_and_its_saved_plan_reloads(tmp_path):
    model = _masked("efficientnet_b0", {}, 0.95, allocation="erk")  # dense stem and classifier, ERK in between
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    compiled = compile(model, x, repeats=1, engines=("layers",))
    kinds = {row["op"]: row["kind"] for row in compiled.table()}
    assert kinds["features.0.0"] == "dense" and kinds["classifier"] == "dense"
    assert {"native", "taps", "csr"} & set(kinds.values()), kinds  # the timed choice: some layer runs sparse
    with torch.no_grad():
        want = model(x)
    assert_same_sum(compiled(x), want, _terms(model, x))
    export(model, tmp_path, "efficientnet_b0", num_classes=10)
    compiled.save(tmp_path)
    loaded = load(tmp_path)
    assert loaded.engine == "layers" and loaded.runner.options() == compiled.runner.options()
    assert_same_sum(loaded(x), want, _terms(model, x))


@pytest.mark.parametrize("batch_first", [True, False])
def test_unpacked_attention_is_nn_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(24, 3, batch_first=batch_first).eval()
    mine = Attention(mha).eval()
    b, t, s = 2, 5, 7
    shape = (lambda n: (b, n, 24)) if batch_first else (lambda n: (n, b, 24))
    q, kv, other = torch.randn(*shape(t)), torch.randn(*shape(s)), torch.randn(*shape(s))
    padding = torch.rand(b, s) < 0.3
    padding[:, 0] = False  # every query keeps a key: a row of -inf only would be NaN in both
    calls = [((q, q, q), {}), ((q, q, q), {"need_weights": False}), ((q, kv, kv), {}), ((q, kv, other), {}),
             ((q, kv, kv), {"key_padding_mask": padding}), ((q, kv, kv), {"key_padding_mask": padding, "need_weights": False}),
             ((q, q, q), {"attn_mask": torch.ones(t, t, dtype=torch.bool).triu(1), "need_weights": False, "is_causal": True}),
             ((q, kv, kv), {"attn_mask": torch.randn(b * 3, t, s), "average_attn_weights": False}),
             (tuple(a[0] if batch_first else a[:, 0] for a in (q, kv, kv)), {})]  # unbatched
    with torch.no_grad():
        for args, kwargs in calls:
            (want, want_w), (got, got_w) = mha(*args, **kwargs), mine(*args, **kwargs)
            assert_same_sum(got, want, 2 * 24 + s)
            assert (want_w is None) == (got_w is None)
            if want_w is not None:
                assert_same_sum(got_w, want_w, 2 * 24 + s)


def test_a_transformer_encoder_reaches_onnxruntime_and_the_sparse_kernels():
    pytest.importorskip("onnxruntime")
    model = _masked("encoder", {}, 0.9)
    x = torch.randn(3, 11, 128)
    assert any(isinstance(m, Attention) for m in unpack_attention(build_model("encoder")).modules())
    for engine in ("onnxruntime", "layers"):  # torch's fused attention refused the ONNX exporter
        compiled = compile(model, x, repeats=1, engines=(engine,))
        assert compiled.engine == engine, compiled.skipped
        with torch.no_grad():
            assert_same_sum(compiled(x), model(x), _terms(model, x))


@pytest.mark.parametrize("threads", [1, 2])
def test_linear_rows_is_a_linear_layer_at_every_shape(threads):
    gen = torch.Generator().manual_seed(0)
    for t, c, o, density, bias in [(1, 3, 1, 1.0, True), (5, 17, 15, 0.5, False), (63, 32, 16, 0.1, True),
                                   (64, 40, 17, 0.3, True), (65, 192, 100, 0.05, False), (197, 24, 33, 0.0, True)]:
        x = torch.randn(t, c, generator=gen)
        weight = torch.randn(o, c, generator=gen) * (torch.rand(o, c, generator=gen) < density)
        b = torch.randn(o, generator=gen) if bias else None
        pattern = Pattern(weight != 0, 1, c)
        got = linear_rows(x, weight.reshape(-1)[pattern.at].contiguous(), b, pattern, threads)
        want = nn.functional.linear(x, weight, b)
        scale = x.abs() @ weight.abs().t() + (b.abs() if bias else 0)
        assert_same_sum(got, want, c + 1, scale)


def test_compiling_leaves_the_thread_count_as_it_was():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        model, x = _masked("mobilenetv2_imagenet", {}, 0.95), torch.randn(1, 3, 32, 32)
        compile(model, x, repeats=1, engines=("layers",), kernels=("taps",))
        assert torch.get_num_threads() == 1  # numba's OpenMP layer (the taps kernel) once left it at every core
    finally:
        torch.set_num_threads(before)


class _ReadTwice(nn.Module):
    """A convolution whose output a BatchNorm normalises and the residual reads as it is: folding the BatchNorm
    into the convolution would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn.running_mean.fill_(0.5)

    def forward(self, x):
        y = self.conv(x)
        return self.head(torch.flatten(self.pool(self.bn(y) + y), 1))


def test_a_model_every_prepared_engine_gets_wrong_still_compiles_to_the_model_itself():
    model = _ReadTwice().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = compile(model, x, repeats=1)
    assert compiled.engine == "eager" and "differs" in compiled.skipped["engine"]
    with torch.no_grad():
        assert_same_sum(compiled(x), model(x), 27 + 8 + 64)
