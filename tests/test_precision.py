"""bf16 products in float32 on CPUs without bf16 units (train/precision.py): the function a bf16 matrix unit computes
(exact products, float32 sums, one rounding to bf16), forward and backward, and only where it is asked for."""

import pytest
import torch
import torch.nn.functional as F

from floats import sum_tolerance, unit_roundoff
from sparsearch.pipeline import run_train
from sparsearch.train import precision
from sparsearch.train.precision import autocast, emulates_bf16, float32_products
from test_train import tiny_cfg

BF16 = torch.bfloat16


def assert_rounds_like_a_bf16_unit(got, exact, abs_exact, n_terms):
    """`got` (bf16) is `exact` (float64, of the same bf16 operands) summed in float32 in any order, then rounded
    once to bf16: within float32's summation bound of `abs_exact` (the sum of |terms|) plus half a bf16 ulp."""
    assert got.dtype == BF16
    sums = sum_tolerance(n_terms, torch.float32) * abs_exact
    bound = sums + unit_roundoff(BF16) * (exact.abs() + sums) + torch.finfo(BF16).tiny
    worst = float(((got.double() - exact).abs() / bound).max())
    assert worst <= 1, f"{worst:.3g} times the bound"


def _operands():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g).to(BF16) for shape in ((3, 40, 64), (3, 64, 24), (24,), (5, 6, 9, 9), (8, 6, 3, 3))]


def test_products_and_convolutions_are_a_bf16_units_function():
    a, b, bias, x, w = _operands()
    d = lambda t: t.double()  # noqa: E731  (the bf16 operands exactly)
    cases = {  # op on bf16 -> (the same op in float64 on the same operands, on |operands|, terms per value)
        "mm": (lambda: a[0] @ b[0], lambda f: f(a[0]) @ f(b[0]), 64),
        "addmm": (lambda: torch.addmm(bias, a[0], b[0]), lambda f: torch.addmm(f(bias), f(a[0]), f(b[0])), 65),
        "bmm": (lambda: torch.bmm(a, b), lambda f: torch.bmm(f(a), f(b)), 64),
        "baddbmm": (lambda: torch.baddbmm(bias.expand(3, 40, 24), a, b),
                    lambda f: torch.baddbmm(f(bias).expand(3, 40, 24), f(a), f(b)), 65),
        "conv": (lambda: F.conv2d(x, w, padding=1), lambda f: F.conv2d(f(x), f(w), padding=1), 6 * 9),
    }
    for name, (op, reference, n) in cases.items():
        with float32_products(force=True):
            got = op()
        assert_rounds_like_a_bf16_unit(got, reference(d), reference(lambda t: d(t).abs()), n)


def test_the_backward_products_run_in_float32_too(monkeypatch):
    seen = []
    up = precision._up
    monkeypatch.setattr(precision, "_up", lambda t: seen.append(t.dtype) or up(t) if torch.is_tensor(t) else t)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 8, 8, generator=g)
    w = torch.randn(5, 6, 3, 3, generator=g, requires_grad=True)
    with torch.autocast("cpu", BF16):
        y = F.conv2d(x, w, padding=1)  # forward outside the mode
    upstream = torch.randn(y.shape, generator=g).to(BF16)
    with float32_products(force=True):
        y.backward(upstream)
    assert BF16 in seen, "the convolution's backward did not go through float32_products"
    # the weight's gradient: sum over batch and positions of upstream x input, both bf16 operands
    xb, gb = x.to(BF16).double(), upstream.double()
    exact = torch.nn.grad.conv2d_weight(xb, w.shape, gb, padding=1)
    abs_exact = torch.nn.grad.conv2d_weight(xb.abs(), w.shape, gb.abs(), padding=1)
    assert_rounds_like_a_bf16_unit(w.grad.to(BF16), exact, abs_exact, 4 * 8 * 8)


def test_it_is_on_only_for_bf16_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "has_bf16_units", lambda: False)
    assert emulates_bf16("cpu", True, "bfloat16")
    assert not emulates_bf16("cpu", False, "bfloat16") and not emulates_bf16("cuda", True, "bfloat16")
    assert not emulates_bf16("cpu", True, "float16")
    monkeypatch.setattr(precision, "has_bf16_units", lambda: True)
    assert not emulates_bf16("cpu", True, "bfloat16")
    with autocast("cpu", True):  # autocast alone, torch's kernels
        assert not torch.utils._python_dispatch._get_current_dispatch_mode_stack()


@pytest.mark.parametrize("flags, units", [("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                                          ("avx2 amx_bf16 amx_tile", True), ("fp asimd bf16", True)])
def test_which_cpus_have_bf16_units(monkeypatch, flags, units):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    precision.has_bf16_units.cache_clear()
    try:
        assert precision.has_bf16_units() is units
    finally:
        precision.has_bf16_units.cache_clear()


def test_nested_contexts_enter_one_mode():
    with float32_products(force=True):
        depth = len(torch.utils._python_dispatch._get_current_dispatch_mode_stack())
        with float32_products(force=True), autocast("cpu", True):
            assert len(torch.utils._python_dispatch._get_current_dispatch_mode_stack()) == depth == 1
    assert not getattr(precision._active, "on", False)


def test_a_bf16_training_on_a_cpu_without_bf16_units_trains_through_it(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "has_bf16_units", lambda: False)
    calls = []
    down = precision._down
    monkeypatch.setattr(precision, "_down", lambda t: calls.append(1) or down(t))
    emulated = run_train(tiny_cfg(tmp_path / "a", epochs=1, amp=True), show_progress=False)
    assert calls, "the trainer did not run its bf16 products through float32_products"
    plain = run_train(tiny_cfg(tmp_path / "b", epochs=1), show_progress=False)
    assert emulated["final_test_loss"] == pytest.approx(plain["final_test_loss"], rel=0.1)  # as bf16 against float32
