"""The native depthwise backward (kernels/depthwise.py) computes torch's gradients up to the order of their sums
(tests/floats.py), over channels, kernels, strides, dilations, paddings, odd sizes, batch sizes and thread counts;
the search's operations take it on channels-last CPU training input only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from floats import assert_same_sum, sum_tolerance, unit_roundoff
from sparsearch.kernels.depthwise import block_vectors, depthwise_conv2d
from sparsearch.kernels.loading import depthwise_library
from sparsearch.models import operations
from sparsearch.models.operations import DilConv
from sparsearch.native import compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="the depthwise kernels need a C++ compiler")


def test_the_library_builds_where_a_compiler_is():
    assert depthwise_library() is not None


def _case(rng: torch.Generator) -> dict:
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=rng))]  # noqa: E731
    k, dilation, stride = pick([3, 5, 7]), pick([1, 2]), pick([1, 2])
    padding = int(torch.randint(0, k // 2 * dilation + 1, (1,), generator=rng))
    smallest = max(1, (k - 1) * dilation + 1 - 2 * padding)
    return dict(c=pick([1, 3, 4, 8, 11, 12, 16, 24, 32, 36, 64]), k=k, stride=stride, dilation=dilation, padding=padding,
                size=int(torch.randint(smallest, smallest + 12, (1,), generator=rng)),
                batch=int(torch.randint(1, 5, (1,), generator=rng)))


@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_gradients_equal_torchs_on_a_seeded_fuzz(threads):
    rng = torch.Generator().manual_seed(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    covered = 0
    try:
        for _ in range(40):
            case = _case(rng)
            c, k = case["c"], case["k"]
            args = (case["stride"], case["padding"], case["dilation"])
            weight = torch.randn(c, 1, k, k, generator=rng)
            x = torch.randn(case["batch"], c, case["size"], case["size"], generator=rng)
            x = x.contiguous(memory_format=torch.channels_last)
            x1, x2, w1, w2 = (t.clone().requires_grad_() for t in (x, x, weight, weight))
            want = F.conv2d(x1, w1, None, *args, c)
            got = depthwise_conv2d(x2, w2, *args)
            if block_vectors(c) is None:  # no block of at most most_vectors() holds a multiple of c floats
                assert got is None
                continue
            covered += 1
            probe = torch.randn(want.shape, generator=rng)
            (want * probe).sum().backward()
            (got * probe).sum().backward()
            xa, wa = x.abs().double().requires_grad_(), weight.abs().double().requires_grad_()
            sizes = torch.autograd.grad((F.conv2d(xa, wa, None, *args, c) * probe.abs().double()).sum(), [xa, wa])
            assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(got, want)  # the forward is torch's own
            assert_same_sum(x2.grad, x1.grad, k * k, sizes[0].float())
            assert_same_sum(w2.grad, w1.grad, case["batch"] * want.shape[2] * want.shape[3], sizes[1].float())
    finally:
        torch.set_num_threads(before)
    assert covered >= 25


def test_it_declines_what_it_is_not_fast_or_right_for():
    w = torch.randn(8, 1, 3, 3)
    x = torch.randn(2, 8, 10, 10)
    assert depthwise_conv2d(x, w, 1, 1, 1) is None  # NCHW: torch's kernels
    assert depthwise_conv2d(x.double().contiguous(memory_format=torch.channels_last), w.double(), 1, 1, 1) is None
    assert depthwise_conv2d(x.contiguous(memory_format=torch.channels_last), torch.randn(8, 2, 3, 3), 1, 1, 1) is None
    with torch.autocast("cpu", torch.bfloat16):  # neither float32 nor autocast's dtype
        assert depthwise_conv2d(x.double().contiguous(memory_format=torch.channels_last), w, 1, 1, 1) is None


@pytest.mark.parametrize("k, stride, dilation", [(3, 1, 1), (5, 1, 1), (3, 1, 2), (5, 2, 2), (3, 2, 1)])
def test_under_autocast_it_is_autocasts_convolution(k, stride, dilation):
    """Under bf16 autocast: the convolution of the bf16-rounded input and weight, each output (and gradient) within
    a float32 sum's reordering plus one bf16 rounding of the exact value, in float64, of that function."""
    c, bf = 16, torch.bfloat16
    gen = torch.Generator().manual_seed(k * 10 + stride + dilation)
    x = torch.randn(3, c, 12, 12, generator=gen).contiguous(memory_format=torch.channels_last).to(bf).requires_grad_()
    weight = torch.randn(c, 1, k, k, generator=gen).requires_grad_()
    args = (stride, dilation * (k // 2), dilation)
    with torch.autocast("cpu", bf):
        got = depthwise_conv2d(x, weight, *args)
    probe = torch.randn(got.shape, generator=gen).to(bf)
    (got * probe).float().sum().backward()
    exact = [t.detach().to(bf).double().requires_grad_() for t in (x, weight)]
    want = F.conv2d(*exact, None, *args, groups=c)
    want_grads = torch.autograd.grad((want * probe.double()).sum(), exact)
    sizes = [t.detach().abs().requires_grad_() for t in exact]
    size = F.conv2d(*sizes, None, *args, groups=c)
    size_grads = torch.autograd.grad((size * probe.double().abs()).sum(), sizes)
    assert got.dtype == bf and got.is_contiguous(memory_format=torch.channels_last)
    n_batch = x.shape[0] * got.shape[2] * got.shape[3]
    for value, exact_value, scale, n in ((got, want, size, k * k), (x.grad, want_grads[0], size_grads[0], k * k),
                                         (weight.grad, want_grads[1], size_grads[1], n_batch)):
        bound = (sum_tolerance(n) / 2 + unit_roundoff(bf)) * scale + torch.finfo(bf).tiny
        assert ((value.double() - exact_value).abs() <= bound).all()


def test_the_search_operations_offer_it_training_only(monkeypatch):
    calls = []
    monkeypatch.setattr(operations, "depthwise_conv2d", lambda *a: calls.append(a) or None)
    op = DilConv(8, 8, 3, 1, 2, 2)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    want = op(x)  # declined: the plain convolution, the same output
    assert len(calls) == 1
    op.eval()
    op(x)
    assert len(calls) == 1  # evaluation (and so tracing and export) runs the plain layers
    monkeypatch.undo()
    op.train()
    torch.testing.assert_close(op(x), want)


def test_a_depthwise_layer_on_the_sparse_training_kernels_stays_there(monkeypatch):
    """With `sparse_kernels` on, a masked depthwise convolution is routed to them; the native depthwise path
    (and the strided-dilated rewrite) must not bypass that route."""
    from sparsearch import sparsity as sp
    from sparsearch.train.sparse import sparse_kernels

    op = DilConv(8, 8, 3, 2, 2, 2)  # stride = dilation: the rewrite would apply too
    layers = sp.find_layers(op, dense_first_last=False)
    masks, densities = sp.compute_masks(op, layers, 0.5, "random", "uniform")
    sp.attach(op, masks, densities=densities)
    calls = []
    monkeypatch.setattr(operations, "depthwise_conv2d", lambda *a: calls.append(a))
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    with sparse_kernels(op, "on") as routed:
        op(x)
    assert calls == [] and routed["1"].pattern is not None  # the sparse route saw the input
