"""Sparse training kernels compute the masked dense layer's function: outputs and both gradients equal PyTorch's up to
the order of their sums (tests/floats.py), over shapes, strides, dilations, groups, densities and batch sizes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from floats import assert_same_sum
from sparsearch import sparsity as sp
from sparsearch.native import compiler
from sparsearch.train.sparse import Pattern, library, sparse_conv2d, sparse_kernels, sparse_linear

# only a missing compiler skips: a compiler that fails to build the kernels fails these tests (library() is None)
pytestmark = pytest.mark.skipif(compiler() is None, reason="the sparse training kernels need a C++ compiler")


def test_the_kernels_build_where_a_compiler_is():
    assert library() is not None


def _abs_sums(layer, x, weight, bias, probe) -> list[torch.Tensor]:
    """Sum of |terms| behind each output and each gradient entry: the same linear map on absolute values (in double)."""
    x_, w_, b_ = (t.abs().double().requires_grad_() for t in (x, weight, bias))
    out = layer(x_, w_, b_)
    return [out.detach().float(), *(g.float() for g in torch.autograd.grad((out * probe.abs().double()).sum(), [x_, w_, b_]))]


def _case(rng: torch.Generator):
    groups = [1, 1, 1, 2, "depthwise"][int(torch.randint(5, (1,), generator=rng))]
    c = int(torch.randint(1, 9, (1,), generator=rng)) * (2 if groups == 2 else 1)
    o = c if groups == "depthwise" else int(torch.randint(1, 9, (1,), generator=rng)) * (2 if groups == 2 else 1)
    groups = c if groups == "depthwise" else groups
    k = [1, 3, 5, 7][int(torch.randint(4, (1,), generator=rng))]
    stride, dilation = int(torch.randint(1, 3, (1,), generator=rng)), int(torch.randint(1, 3, (1,), generator=rng))
    padding = int(torch.randint(0, k // 2 * dilation + 1, (1,), generator=rng))
    smallest = max(1, (k - 1) * dilation + 1 - 2 * padding)  # the kernel's reach fits the padded input
    size = int(torch.randint(smallest, smallest + 10, (1,), generator=rng))
    batch = int(torch.randint(1, 5, (1,), generator=rng))
    return dict(c=c, o=o, groups=groups, k=k, stride=stride, dilation=dilation, padding=padding, size=size, batch=batch)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.05, 0.01])
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_conv_equals_the_masked_dense_conv_on_a_seeded_fuzz(density, threads):
    rng = torch.Generator().manual_seed(int(1000 * density) + threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(25):
            case = _case(rng)
            c, o, g, k = case["c"], case["o"], case["groups"], case["k"]
            weight = torch.randn(o, c // g, k, k, generator=rng, dtype=torch.float32)
            mask = torch.rand(weight.shape, generator=rng) < density
            bias = torch.randn(o, generator=rng)
            x = torch.randn(case["batch"], c, case["size"], case["size"], generator=rng)
            pattern = Pattern(mask, g, c)
            args = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=g)
            w1, w2, b1, b2 = (t.clone().requires_grad_() for t in (weight, weight, bias, bias))
            x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
            want = F.conv2d(x1, w1 * mask, b1, **args)
            got = sparse_conv2d(x2, w2, b2, pattern, case["stride"], (case["padding"],) * 2, (case["dilation"],) * 2)
            probe = torch.randn(want.shape, generator=rng)
            (want * probe).sum().backward()
            (got * probe).sum().backward()
            sizes = _abs_sums(lambda x_, w_, b_: F.conv2d(x_, w_ * mask, b_, **args), x, weight, bias, probe)
            taps = c // g * k * k
            positions = case["batch"] * want.shape[2] * want.shape[3]
            assert_same_sum(got, want, taps + 1, sizes[0])
            assert_same_sum(x2.grad, x1.grad, o * k * k, sizes[1])
            assert_same_sum(w2.grad, w1.grad, positions, sizes[2])
            assert_same_sum(b2.grad, b1.grad, positions, sizes[3])
            assert torch.all(w2.grad[~mask] == 0)  # nothing reaches a pruned weight
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("density", [0.5, 0.05])
def test_sparse_linear_equals_the_masked_dense_linear(density):
    rng = torch.Generator().manual_seed(7)
    weight, bias = torch.randn(24, 40, generator=rng), torch.randn(24, generator=rng)
    mask = torch.rand(weight.shape, generator=rng) < density
    for shape in ((5, 40), (2, 7, 40), (1, 40)):
        x = torch.randn(*shape, generator=rng)
        w1, w2, x1, x2 = weight.clone().requires_grad_(), weight.clone().requires_grad_(), x.clone().requires_grad_(), x.clone().requires_grad_()
        want = F.linear(x1, w1 * mask, bias)
        got = sparse_linear(x2, w2, bias, Pattern(mask, 1, 40))
        assert got.shape == want.shape
        probe = torch.randn(want.shape, generator=rng)
        (want * probe).sum().backward()
        (got * probe).sum().backward()
        sizes = _abs_sums(lambda x_, w_, b_: F.linear(x_, w_ * mask, b_), x, weight, bias, probe)
        assert_same_sum(got, want, 41, sizes[0])
        assert_same_sum(x2.grad, x1.grad, 24, sizes[1])
        assert_same_sum(w2.grad, w1.grad, x.numel() // 40, sizes[2])


def _masked(name: str, **kwargs):
    from sparsearch.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, **kwargs)
    layers = sp.find_layers(model, dense_first_last=False)
    masks, densities = sp.compute_masks(model, layers, 0.9, "random", "erk")
    sp.attach(model, masks, densities=densities)
    return model


def _train(model, mode, steps, seed=0):
    """A free-running training on the given kernels: masked weights and their momentum exactly zero every step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sp.bind_optimizer(model, opt)
    gen = torch.Generator().manual_seed(seed)
    with sparse_kernels(model, mode) as layers:
        for _ in range(steps):
            x, y = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for module in sp.masked_layers(model).values():
                w = module.parametrizations.weight.original
                pruned = ~sp.current_mask(module)
                assert torch.all(w[pruned] == 0) and torch.all(opt.state[w]["momentum_buffer"][pruned] == 0)
        return {name: layer.sparse for name, layer in layers.items()}


@pytest.mark.parametrize("name, kwargs, steps, depth", [("resnet20", {"width": 8}, 50, 20),
                                                        ("genotype", {"genotype": "DASS_95", "channels": 4, "layers": 3}, 50, 30)])
def test_every_step_of_a_training_computes_the_dense_steps_loss_and_gradients(name, kwargs, steps, depth):
    """Teacher-forced: at each of `steps` training states (the dense path trains), the sparse path's loss and
    gradients on the same weights and batch equal the dense path's up to the order of their sums. Two free-running
    trainings cannot be compared this way: after ~10 steps SGD amplifies last-bit differences to percents, and dense
    PyTorch on 1 and on 2 threads already differs by 1-14% at step 50 on this network (measured). Tolerance: the
    longest chain of sums, `depth` layers of (channels x taps + BatchNorm's batch statistics) forward and back."""
    model = _masked(name, **kwargs)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sp.bind_optimizer(model, opt)
    gen = torch.Generator().manual_seed(0)
    n = 2 * depth * (64 * 9 + 16 * 16 * 16)
    with sparse_kernels(twin, "on") as layers:
        for _ in range(steps):
            twin.load_state_dict(model.state_dict())
            x, y = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
            results = []
            for net in (model, twin):
                out = net(x)
                loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
                results.append((loss, torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])))
            (dense, dense_grads), (sparse, sparse_grads) = results
            assert_same_sum(sparse, dense, n)
            scale = float(max(g.abs().max() for g in dense_grads))
            for a, b in zip(sparse_grads, dense_grads):
                assert_same_sum(a, b, n, scale=scale)
            for p, g in zip([p for p in model.parameters() if p.requires_grad], dense_grads):
                p.grad = g
            opt.step()
        assert layers and all(layer.sparse for layer in layers.values())


def test_a_free_running_sparse_training_keeps_pruned_weights_and_momentum_exactly_zero():
    used = _train(_masked("resnet20", width=8), "on", 10)
    assert used and all(used.values())


def test_auto_picks_per_layer_and_evaluation_and_learned_masks_stay_dense():
    model = _masked("resnet20", width=8)
    used = _train(model, "auto", 2)
    assert set(used) == set(sp.masked_layers(model))  # every layer decided, whichever way
    x = torch.randn(2, 3, 16, 16)
    with sparse_kernels(model, "on") as layers, torch.no_grad():
        model.eval()
        model(x)
        assert all(layer.pattern is None for layer in layers.values())  # evaluation ran the plain layers
    assert "forward" not in vars(next(iter(sp.masked_layers(model).values())))  # the class's forward again
    learned = copy.deepcopy(model)
    sp.remove(learned)
    sp.attach_learned(learned, {n: 0.5 for n in sp.find_layers(learned)})
    with sparse_kernels(learned.train(), "on") as layers:
        learned(x).sum().backward()
        assert all(layer.pattern is None for layer in layers.values())


def test_a_conv_the_kernels_do_not_cover_runs_dense():
    conv = nn.Conv2d(4, 4, 3, padding="same")
    model = nn.Sequential(conv)
    sp.attach(model, {"0": torch.rand(conv.weight.shape) > 0.5})
    with sparse_kernels(model, "on") as layers:
        model(torch.randn(1, 4, 5, 5))
    assert layers == {}


def test_a_run_on_the_sparse_kernels_resumes_bit_identical(tmp_path):
    """The Trainer with `train.sparse_kernels: on`, crashed between checkpoints and resumed: the same weights, bit
    for bit, as the run that was not interrupted (the kernels' sums have a fixed order for a thread count)."""
    from sparsearch.config import from_dict
    from sparsearch.pipeline import build_for
    from sparsearch.train import SparsityCallback, Trainer
    from test_train import Crash

    cfg = from_dict({"data": {"name": "digits", "batch_size": 64}, "model": {"name": "cnn", "kwargs": {"width": 8}},
                     "train": {"epochs": 2, "lr": 0.05, "checkpoint_every": 7, "sparse_kernels": "on"},
                     "out_dir": str(tmp_path)})

    def fit(out, crash_at=None):
        _, model, train_loader, test_loader = build_for(cfg)
        torch.manual_seed(3)
        masks = {n: torch.rand(m.weight.shape) < 0.2 for n, m in sp.find_layers(model).items()}
        sp.attach(model, masks)
        callbacks = [SparsityCallback()] + ([Crash(crash_at)] if crash_at is not None else [])
        trainer = Trainer(model, train_loader, test_loader, cfg.train, out, callbacks=callbacks, show_progress=False)
        return trainer.fit(), trainer.model

    _, ref = fit(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "resumed", crash_at=10)
    _, got = fit(tmp_path / "resumed", crash_at=-1)
    for name, value in ref.state_dict().items():  # a mask's kind and density are extra state (not tensors)
        other = got.state_dict()[name]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, name


def test_a_method_prepared_with_kernels_on_trains_on_them_in_a_users_loop():
    import sparsearch

    model = _masked("resnet20", width=8)
    sp.remove(model)  # a plain network: the method attaches its own masks
    twin = copy.deepcopy(model)
    losses = []
    for net, kernels in ((model, "off"), (twin, "on")):
        method = sparsearch.Static(0.9, allocation="erk")
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        method.prepare(net, optimizer, kernels=kernels)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        method.step()
        losses.append(loss.detach())
        routed = ["forward" in vars(m) for m in sp.masked_layers(net).values()]
        assert all(routed) if kernels == "on" else not any(routed)
        method.squash()
        assert not any("forward" in vars(m) for m in sp.masked_layers(net).values())  # squash() switched them off
    assert_same_sum(losses[1], losses[0], 2 * 20 * (64 * 9 + 16 * 16 * 16))


@pytest.mark.parametrize("affine, momentum", [(True, 0.1), (False, None), (True, None)])
def test_the_native_batchnorm_is_torchs_in_training_mode(affine, momentum):
    """Output, the three gradients and the running statistics against nn.BatchNorm2d over three steps. Tolerance: the
    statistics are sums over M = N x H x W values, and the gradients two more such sums; scale: the largest |x - mean|
    in units of the standard deviation, times |gamma| (the output's magnitude before the shift)."""
    from sparsearch.train.batchnorm import native_batchnorm

    torch.manual_seed(0)
    ours = nn.BatchNorm2d(8, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5), ours.bias.normal_()
    torchs = copy.deepcopy(ours)
    for _ in range(3):
        x, dy = torch.randn(16, 8, 5, 7) * 3 + 2, torch.randn(16, 8, 5, 7)
        m = x.numel() // 8
        params = lambda bn: [bn.weight, bn.bias] if affine else []  # noqa: E731
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = torchs(xa)
        with native_batchnorm(ours) as routed:
            assert routed
            got = ours(xb)
        spread = float(((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)).abs().max())
        gamma = float(ours.weight.detach().abs().max()) if affine else 1.0
        assert_same_sum(got, want, 2 * m, scale=spread * gamma + (float(ours.bias.detach().abs().max()) if affine else 0.0))
        for a, b in zip(torch.autograd.grad(got, [xb, *params(ours)], dy), torch.autograd.grad(want, [xa, *params(torchs)], dy)):
            assert_same_sum(a, b, 3 * m, scale=float(b.abs().max()) + float(dy.abs().max()) * spread * gamma)
        assert_same_sum(ours.running_mean, torchs.running_mean, m, scale=float(x.abs().max()))
        assert_same_sum(ours.running_var, torchs.running_var, 2 * m, scale=float((x - 2).pow(2).max()))
        assert int(ours.num_batches_tracked) == int(torchs.num_batches_tracked)
    twin = copy.deepcopy(ours)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    with native_batchnorm(ours):  # a channels-last input, and evaluation, run torch's own forward
        assert torch.equal(ours(nhwc), nn.BatchNorm2d.forward(twin, nhwc))
        ours.eval(), twin.eval()
        assert torch.equal(ours(x), nn.BatchNorm2d.forward(twin, x))
