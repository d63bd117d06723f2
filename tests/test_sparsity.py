import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import prune

from sparsearch import sparsity as sp
from sparsearch.errors import SparsearchError
from sparsearch.models import build_model
from sparsearch.sparsity.select import expected_kept


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),  # depthwise
        nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(),  # grouped
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def test_find_layers_defaults_and_globs():
    net = small_net()
    assert list(sp.find_layers(net)) == ["2", "4", "6", "10"]  # first conv "0" and classifier "12" stay dense
    assert list(sp.find_layers(net, dense_first_last=False)) == ["0", "2", "4", "6", "10", "12"]
    assert list(sp.find_layers(net, include=["4", "6"])) == ["4", "6"]
    assert list(sp.find_layers(net, exclude=["1?"])) == ["2", "4", "6"]
    with pytest.raises(sp.SparsityError, match="no maskable layers"):
        sp.find_layers(net, include=["nothing*"])


def test_topk_exact_count_and_tie_break():
    scores = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.5, 2.0])
    assert sp.topk_mask(scores, 3).tolist() == [False, True, True, True, False, False]
    assert sp.topk_mask(scores, 2).tolist() == [False, True, True, False, False, False]  # lower index wins ties
    assert sp.topk_mask(torch.zeros(7), 3).tolist() == [True] * 3 + [False] * 4
    assert int(sp.topk_mask(torch.randn(100), 0).sum()) == 0 and int(sp.topk_mask(torch.randn(5), 9).sum()) == 5


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=4), density=st.floats(0.001, 1.0),
       seed=st.integers(0, 10_000), ties=st.booleans())
def test_exact_counts_property(shape, density, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, shape, generator=gen).float() if ties else torch.rand(shape, generator=gen)
    mask = sp.select(scores, density, sp.Unstructured())
    n = math.prod(shape)
    assert int(mask.sum()) == sp.keep_count(density, n) == max(1, min(n, math.floor(density * n + 0.5)))
    kept_min = scores[mask].min()
    assert torch.all(scores[~mask] <= kept_min)  # nothing dropped scores above anything kept


@settings(max_examples=60, deadline=None)
@given(n_m=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)]), out=st.integers(1, 6),
       groups_in=st.integers(1, 4), k=st.sampled_from([1, 3]), seed=st.integers(0, 1000))
def test_nm_validity_property(n_m, out, groups_in, k, seed):
    n, m = n_m
    kind = sp.NM(n, m)
    w = torch.randn((out, groups_in * m, k, k), generator=torch.Generator().manual_seed(seed))
    mask = sp.select(w.abs(), 0.0, kind)
    per_group = kind.groups(mask.long()).sum(1)
    assert torch.all(per_group == n)  # exactly n of every m along the input dimension
    # along the input channels at a fixed (out, kh, kw): every aligned window of m holds n
    windows = mask.permute(0, 2, 3, 1).reshape(-1, m).sum(1)
    assert torch.all(windows == n)
    assert int(mask.sum()) == expected_kept(kind, 0.0, mask.shape)


def test_nm_rejects_bad_layers_and_sparsity():
    with pytest.raises(SparsearchError, match="divisible"):
        sp.select(torch.randn(4, 3), 0.5, sp.NM(2, 4))
    net = small_net()
    with pytest.raises(Exception, match="fixes sparsity at 0.5"):
        sp.compute_masks(net, sp.find_layers(net, include=["2"]), 0.9, kind="nm:2:4")
    with pytest.raises(Exception, match="unknown mask kind"):
        sp.parse_kind("nm:4:2")


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64), st.sampled_from([1, 3, 5])),
                       min_size=1, max_size=8),
       sparsity=st.floats(0.0, 0.99), method=st.sampled_from(["er", "erk", "uniform"]))
def test_allocation_property(shapes, sparsity, method):
    layers = {f"l{i}": torch.Size((o, i_, k, k)) for i, (o, i_, k) in enumerate(shapes)}
    dens = sp.allocate(layers, sparsity, method)
    numel = {k: math.prod(s) for k, s in layers.items()}
    assert all(0 < d <= 1 + 1e-12 for d in dens.values())
    total = sum(dens[k] * numel[k] for k in layers)
    assert total == pytest.approx((1 - sparsity) * sum(numel.values()), rel=1e-9)


def test_erk_matches_reference_values():
    """Reference vectors for ResNet-20 with 1x1 projection shortcuts at density 0.1 (shared/reference, App. A)."""
    shapes = {"conv1": (16, 3, 3, 3)}
    ch_in = 16
    for stage, ch in enumerate((16, 32, 64)):
        for b in range(3):
            shapes[f"s{stage}b{b}c1"] = (ch, ch_in if b == 0 else ch, 3, 3)
            shapes[f"s{stage}b{b}c2"] = (ch, ch, 3, 3)
            if b == 0 and stage > 0:
                shapes[f"s{stage}sc"] = (ch, ch_in, 1, 1)
        ch_in = ch
    shapes["fc"] = (10, 64)
    assert sum(math.prod(s) for s in shapes.values()) == 270_896
    erk = sp.allocate({k: torch.Size(s) for k, s in shapes.items()}, 0.9, "erk")
    assert erk["conv1"] == pytest.approx(0.983, abs=1e-3)
    assert erk["s0b0c1"] == pytest.approx(0.2802, abs=1e-4)
    assert erk["s1b0c1"] == pytest.approx(0.1991, abs=1e-4)
    assert erk["s1sc"] == 1.0 and erk["fc"] == 1.0
    assert erk["s2b2c2"] == pytest.approx(0.0617, abs=1e-4)
    er = sp.allocate({k: torch.Size(s) for k, s in shapes.items()}, 0.9, "er")
    assert er["conv1"] == pytest.approx(0.8897, abs=1e-4) and er["fc"] == pytest.approx(0.2599, abs=1e-4)


def test_lamp_reference_vector():
    got = sp.lamp_scores(torch.tensor([0.1, -0.4, 0.2, 0.3]))
    assert got.tolist() == pytest.approx([0.0333, 1.0, 0.1379, 0.36], abs=1e-4)


def test_block_and_channel_kinds():
    w = torch.randn(6, 5, 3, 3)
    ch = sp.select(w.abs(), 0.5, sp.Channel())
    kept_rows = ch.reshape(6, -1).any(1)
    assert int(kept_rows.sum()) == 3 and torch.all(ch.reshape(6, -1).all(1) == kept_rows)
    blk = sp.Block(2, 4)
    mask = sp.select(w.abs(), 0.25, blk)
    grid = blk.units(mask.float())  # (3, 12) blocks; partial edge blocks count as blocks
    sizes = blk.units(torch.ones_like(w))
    assert torch.all((grid == 0) | (grid == sizes))  # every block all-kept or all-dropped
    assert int((grid > 0).sum()) == sp.keep_count(0.25, grid.numel())


def test_layerwise_magnitude_equals_torch_prune():
    torch.manual_seed(1)
    for shape, amount in (((64, 32, 3, 3), 0.9), ((100, 30), 0.5), ((16, 16, 5, 5), 0.73)):
        layer = nn.Conv2d(shape[1], shape[0], shape[2]) if len(shape) == 4 else nn.Linear(shape[1], shape[0])
        ours = sp.select(layer.weight.detach().abs(), 1 - amount, sp.Unstructured())
        n = layer.weight.numel()
        assert int(ours.sum()) == n - round(amount * n)
        prune.l1_unstructured(layer, "weight", amount=amount)
        assert torch.equal(ours, layer.weight_mask.bool())


def test_global_magnitude_equals_torch_global_unstructured():
    torch.manual_seed(2)
    net = build_model("resnet20")
    layers = sp.find_layers(net, dense_first_last=False)
    ours, dens = sp.compute_masks(net, layers, 0.8, "magnitude", "global")
    assert dens is None
    total = sum(m.weight.numel() for m in layers.values())
    assert sum(int(m.sum()) for m in ours.values()) == total - round(0.8 * total)
    prune.global_unstructured([(m, "weight") for m in layers.values()], prune.L1Unstructured, amount=0.8)
    for name, m in layers.items():
        assert torch.equal(ours[name], m.weight_mask.bool()), name


def _train_steps(model, opt, steps=5):
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
])
def test_masked_weights_stay_exactly_zero(make_opt):
    net = small_net()
    layers = sp.find_layers(net)
    masks, dens = sp.compute_masks(net, layers, 0.8, "random", "erk", seed=3)
    sp.attach(net, masks, densities=dens)
    opt = make_opt(net.parameters())
    sp.bind_optimizer(net, opt)
    _train_steps(net, opt)
    assert sp.check(net) == []
    for name, m in sp.masked_layers(net).items():
        stored, mask = sp.weight_param(m), masks[name]
        assert torch.all(stored[~mask] == 0) and torch.all(m.weight[~mask] == 0)
        for value in opt.state[stored].values():
            if torch.is_tensor(value) and value.shape == stored.shape:
                assert torch.all(value[~mask] == 0)
    # a mask change must not revive stale momentum: prune more, keep training, still exact
    tighter = {n: sp.select(sp.weight_param(m).detach().abs(), 0.1, sp.Unstructured()) & masks[n]
               for n, m in sp.masked_layers(net).items()}
    sp.update(net, tighter, optimizer=opt)
    _train_steps(net, opt)
    assert sp.check(net) == []
    for name, m in sp.masked_layers(net).items():
        assert torch.all(sp.weight_param(m)[~tighter[name]] == 0)


def test_check_reports_violations():
    net = small_net()
    masks, dens = sp.compute_masks(net, sp.find_layers(net), 0.5, "magnitude", "uniform")
    sp.attach(net, masks, densities=dens)
    assert sp.check(net) == []
    with torch.no_grad():
        sp.weight_param(net[2]).add_(1.0)  # un-zero the masked entries behind the mask's back
    assert any("masked stored weights are non-zero" in p for p in sp.check(net))
    net2 = small_net()
    masks, _ = sp.compute_masks(net2, sp.find_layers(net2, include=["2"]), 0.5)
    sp.attach(net2, masks, densities={"2": 0.25})  # mask keeps 50% but claims 25%
    assert any("expected" in p for p in sp.check(net2))
    net3 = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    bad = torch.ones(8, 8, dtype=torch.bool)
    sp.attach(net3, {"0": bad}, sp.NM(2, 4))
    assert any("N:M group" in p for p in sp.check(net3))


def test_save_load_train_squash(tmp_path):
    net = small_net()
    masks, dens = sp.compute_masks(net, sp.find_layers(net), 0.9, "magnitude", "erk")
    sp.attach(net, masks, densities=dens)
    torch.save(net.state_dict(), tmp_path / "masked.pt")

    fresh = small_net()
    sp.load_masked_state_dict(fresh, torch.load(tmp_path / "masked.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(sp.current_masks(fresh).values(), masks.values()))
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sp.bind_optimizer(fresh, opt)
    _train_steps(fresh, opt)
    assert sp.check(fresh) == []

    state = sp.squash(fresh)
    assert not any("parametrizations" in k for k in state)
    plain = small_net()
    plain.load_state_dict(state)  # an unmodified model loads it
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(plain(x), fresh(x), atol=1e-6)
    for name, mask in masks.items():
        assert torch.all(dict(plain.named_modules())[name].weight[~mask] == 0)
    sp.remove(fresh)
    assert sp.masked_layers(fresh) == {} and torch.allclose(fresh(x), plain(x), atol=1e-6)


def test_learned_scores_hydra():
    torch.manual_seed(0)
    layer = nn.Linear(20, 10)
    net = nn.Sequential(layer)
    w = layer.weight.detach().clone()
    sp.attach_learned(net, {"0": 0.1})
    p = layer.parametrizations.weight[0]
    assert torch.allclose(p.scores, math.sqrt(6 / 20) * w / w.abs().max())  # scaled score init
    assert torch.equal(p.current(), sp.select(w.abs(), 0.1, sp.Unstructured()))  # starts at magnitude pruning
    out = net(torch.randn(4, 20)).sum()
    out.backward()
    assert p.scores.grad is not None and p.scores.grad.abs().sum() > 0  # straight-through gradient
    assert int((layer.weight != 0).sum()) == 20
    assert sp.check(net) == []
    sp.freeze(net)
    assert isinstance(layer.parametrizations.weight[0], sp.Mask) and sp.check(net) == []
    assert int((sp.weight_param(layer) != 0).sum()) == 20


def test_learned_mask_gradients_are_straight_through_and_the_mask_follows_the_scores():
    """The scored mask's hand-written backward equals autograd's on weight * (mask + |S| - |S|.detach()), and the
    top-k is selected anew whenever the scores change: by an optimiser step, or written through .data."""
    torch.manual_seed(0)
    layer = nn.Linear(20, 10)
    sp.attach_learned(nn.Sequential(layer), {"0": 0.3})
    p = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original
    x, target = torch.randn(4, 20), torch.randn(4, 10)
    (layer(x) - target).square().sum().backward()
    scores = p.scores.detach().clone().requires_grad_()
    weight = w.detach().clone().requires_grad_()
    mask = sp.select(scores.detach().abs(), 0.3, sp.Unstructured()).float()
    reference = weight * (mask + scores.abs() - scores.abs().detach())
    (torch.nn.functional.linear(x, reference, layer.bias) - target).square().sum().backward()
    assert torch.allclose(p.scores.grad, scores.grad) and torch.allclose(w.grad, weight.grad)
    before = p.current().clone()
    opt = torch.optim.SGD([p.scores], lr=10.0)
    for _ in range(3):  # big steps: the ranking of |S| changes
        opt.zero_grad()
        (layer(x) - target).square().sum().backward()
        opt.step()
    assert not torch.equal(p.current(), before)
    assert torch.equal(layer.weight != 0, p.current() & (w != 0))  # the forward pass uses the new top-k
    p.scores.data.copy_(torch.randn_like(p.scores))  # as fused optimisers do: no version bump
    assert torch.equal(layer.weight != 0, p.current() & (w != 0))


def test_snip_criterion_prefers_sensitive_weights():
    torch.manual_seed(0)
    net = small_net()
    layers = sp.find_layers(net)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))]
    masks, _ = sp.compute_masks(net, layers, 0.9, "snip", "global", batches=batches)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * sum(m.weight.numel() for m in layers.values()))
    with pytest.raises(Exception, match="needs the model and at least one batch"):
        sp.compute_masks(net, layers, 0.9, "snip", "erk")


def test_trainer_fails_loudly_on_violation(tmp_path):
    from sparsearch.config import from_dict
    from sparsearch.pipeline import build_for
    from sparsearch.train import Callback, SparsityCallback, Trainer

    cfg = from_dict({"data": {"name": "digits"}, "model": {"name": "cnn", "kwargs": {"width": 8}},
                     "train": {"epochs": 1}, "sparsity": {"sparsity": 0.5}})
    _, model, train_loader, test_loader = build_for(cfg)
    sp.sparsify(model, cfg.sparsity)

    class Saboteur(Callback):
        def on_step_end(self, trainer):
            with torch.no_grad():
                sp.weight_param(next(iter(sp.masked_layers(trainer.model).values()))).fill_(1.0)

    trainer = Trainer(model, train_loader, test_loader, cfg.train, tmp_path, show_progress=False,
                      callbacks=[SparsityCallback(), Saboteur()])
    with pytest.raises(sp.SparsityError, match="invariant violated"):
        trainer.fit()


def test_freeze_and_remove_on_a_deep_copy_leave_the_original_intact():
    """torch's remove_parametrizations edits the parametrized class, which deep copies share."""
    import copy

    net = small_net()
    sp.attach_learned(net, {n: 0.2 for n in sp.find_layers(net)})
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    frozen = copy.deepcopy(net)
    sp.freeze(frozen)
    removed = copy.deepcopy(frozen)
    sp.remove(removed)
    assert torch.allclose(net(x), expected) and torch.allclose(frozen(x), expected, atol=1e-6)
    assert torch.allclose(removed(x), expected, atol=1e-6) and sp.masked_layers(removed) == {}
    assert isinstance(frozen[2].parametrizations.weight[0], sp.Mask) and sp.check(frozen) == []
