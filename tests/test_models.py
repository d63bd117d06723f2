import contextlib
import json

import pytest
import torch

from floats import assert_same_sum
from sparsearch import sparsity as sp
from sparsearch.errors import SparsearchError
from sparsearch.models import build_model, count_parameters
from sparsearch.models.genotypes import GENOTYPES, Genotype, load_genotype


@pytest.mark.parametrize("name, expected", [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_resnet_parameter_counts(name, expected):
    assert count_parameters(build_model(name)) == pytest.approx(expected, rel=0.02)


def test_resnet50_is_the_imagenet_one():
    """torchvision's resnet50: 25,557,032 parameters for 1000 classes; 224x224 in, 7x7x2048 before pooling."""
    model = build_model("resnet50", num_classes=1000)
    assert count_parameters(model) == 25_557_032
    features = []
    model.layer4.register_forward_hook(lambda m, a, out: features.append(out.shape))
    assert model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000) and features == [(1, 2048, 7, 7)]


# Dense parameter counts (no auxiliary head) at DASS-Small size 36/20, from shared/reference/dass.md;
# DARTS_V2's 3.349M is also DARTS' published 3.3M.
@pytest.mark.parametrize("genotype, millions", [
    ("DARTS_V2", 3.349), ("DASS_99", 1.714), ("DASS_95", 3.962), ("DASS_90", 3.936), ("DARTS_ORIG_120", 2.118),
])
def test_genotype_network_parameter_counts(genotype, millions):
    model = build_model("genotype", genotype=genotype, channels=36, layers=20)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, abs=0.0005)


def test_genotype_network_forward_aux_and_drop_path():
    torch.manual_seed(0)
    model = build_model("genotype", genotype="DASS_95", channels=8, layers=5, auxiliary=True, drop_path_prob=0.2)
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # no auxiliary output at inference


def test_dass_style_masks_on_every_layer():
    """DASS makes every conv (depthwise, pointwise, preprocessing, stem) and the classifier sparse."""
    model = build_model("genotype", genotype="DARTS_V2", channels=8, layers=5)
    layers = sp.find_layers(model, dense_first_last=False)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert len(layers) == convs + 1
    sp.attach_learned(model, {n: 0.05 for n in layers})
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert sp.check(model) == []
    assert all(m.parametrizations.weight[0].scores.grad is not None for m in layers.values())


def test_genotype_json_round_trip_and_errors(tmp_path):
    g = GENOTYPES["DASS_99"]
    g.save(tmp_path / "g.json")
    assert load_genotype(str(tmp_path / "g.json")) == g
    assert g.parameter_free_count("normal") == 7
    with pytest.raises(SparsearchError, match="unknown genotype"):
        load_genotype("NOPE")
    with pytest.raises(SparsearchError, match="unknown operation"):
        Genotype((("conv_9x9", 0), ("skip_connect", 1)), (("skip_connect", 0), ("skip_connect", 1)))
    with pytest.raises(SparsearchError, match="not before it"):
        Genotype((("skip_connect", 2), ("skip_connect", 1)), (("skip_connect", 0), ("skip_connect", 1)))
    (tmp_path / "bad.json").write_text(json.dumps({"normal": []}))
    with pytest.raises(SparsearchError, match="not a genotype"):
        load_genotype(str(tmp_path / "bad.json"))


def test_train_genotype_network_from_cli(tmp_path):
    from sparsearch.config import from_dict
    from sparsearch.pipeline import run_train

    cfg = from_dict({"out_dir": str(tmp_path), "data": {"name": "digits"},
                     "model": {"name": "genotype", "kwargs": {"genotype": "DASS_90", "channels": 8, "layers": 3,
                                                              "auxiliary": True}},
                     "train": {"epochs": 1}, "sparsity": {"sparsity": 0.9}})
    summary = run_train(cfg, show_progress=False)
    assert summary["steps"] > 0 and summary["final_test_acc"] is not None
    assert summary["machine"]["cpu"] and isinstance(summary["machine"]["isa"], list)  # where its numbers came from


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("offset", [0, 1])
def test_factorized_reduces_sampled_input_keeps_its_layout(layout, offset):
    """torch's slice backward writes into NCHW zeros; the sum after it with a channels-last gradient was slow."""
    from sparsearch.models.operations import _Sampled

    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=layout).requires_grad_()
    probe = torch.randn(2, 4, 3, 3)
    y = _Sampled.apply(x, offset)
    (grad,) = torch.autograd.grad((y * probe).sum(), [x])
    want = torch.zeros(2, 4, 6, 6)
    want[:, :, offset::2, offset::2] = probe
    assert torch.equal(y, x[:, :, offset::2, offset::2]) and y.is_contiguous(memory_format=layout)
    assert torch.equal(grad, want) and grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("name", ["dil_conv_3x3", "dil_conv_5x5", "sep_conv_5x5", "skip_connect"])
@pytest.mark.parametrize("size", [9, 16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_rewrites_compute_the_plain_layers_function(name, size, channels_last):
    """Stride 2 (the dilated convolutions' even-taps rewrite; skip_connect's FactorizedReduce and its shifted slice)
    and stride 1, odd and even sizes, NCHW and NHWC (the 1x1 matrix product): the same outputs and gradients as the
    plain layers, with masks on the weights, and an input gradient in the input's layout."""
    from sparsearch.bench.plain import plain_layers
    from sparsearch.models.operations import OPS

    for stride in (1, 2) if name != "skip_connect" else (2,) * (size % 2 == 0):  # stride 1: an identity; odd
        # sizes: FactorizedReduce's two halves would differ
        torch.manual_seed(0)
        op = OPS[name](6, stride, True)
        sp.attach(op, {n: torch.rand_like(m.weight) > 0.5 for n, m in sp.find_layers(op, dense_first_last=False).items()})
        x = torch.randn(4, 6, size, size)
        if channels_last:
            op, x = op.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        results = []
        for plain in (True, False):
            with plain_layers() if plain else contextlib.nullcontext():
                out = op(x)
                grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                            [x, *[p for p in op.parameters() if p.requires_grad]])
            results.append((out, grads))
        (plain, plain_grads), (fast, fast_grads) = results
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert fast_grads[0].is_contiguous(memory_format=layout)
        # sums in another order; per conv stage: taps, channels, and BatchNorm's batch statistics over 4 x size^2
        stage = 25 + 6 + 4 * size * size
        assert_same_sum(fast, plain, n_terms=2 * stage)
        for a, b in zip(fast_grads, plain_grads):  # forward chain, then back through it
            assert_same_sum(a, b, n_terms=4 * stage)
