"""The one rule for float tolerances in this suite: derived from the arithmetic, never fitted to one CPU.

Two correct evaluations of a sum of n products that add in different orders (another kernel, another SIMD width:
AVX2 vs AVX-512, oneDNN vs a matrix product) each lie within gamma_n * sum|terms| of the exact value, where
gamma_n = n*u / (1 - n*u) and u is the dtype's unit roundoff (Higham, Accuracy and Stability of Numerical
Algorithms, section 3.1). So they differ by at most 2 * gamma_n * sum|terms|.

n counts every term added on the way to one value: for a gradient through a chain of layers, the reduction
lengths of the layers it passes through (batch x positions for a weight gradient, channels x taps for a
convolution's output) added up. `scale` stands for sum|terms|: exact where a test computes it (the same layer on
|inputs| and |weights|, elementwise); where a test passes the largest |value| of the reference instead, it relies
on its data being random with mixed signs, for which the observed error is about
sqrt(n) * u of that value: the bound then has a margin of about sqrt(n), and a wrong function (an error of the
order of the value itself) still fails it by orders of magnitude.
"""

from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    return torch.finfo(dtype).eps / 2


def sum_tolerance(n_terms: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> float:
    """The largest difference between two summation orders of `n_terms` terms whose absolute sum is `scale`."""
    nu = n_terms * unit_roundoff(dtype)
    assert nu < 0.5, f"{n_terms} terms in {dtype}: the bound says nothing"
    return 2 * nu / (1 - nu) * scale


def assert_same_sum(got: torch.Tensor, want: torch.Tensor, n_terms: int, scale: float | torch.Tensor | None = None) -> None:
    """`got` equals `want` up to a reordering of sums of `n_terms` terms. `scale`: the sum of |terms| behind each
    value (a tensor: elementwise, the rigorous bound; a number: one scale for all), by default the largest |want|."""
    got, want = got.detach(), want.detach()
    scale = float(want.abs().max()) if scale is None else scale
    tol = sum_tolerance(n_terms, want.dtype) * (scale.detach() if torch.is_tensor(scale) else scale)
    tol = tol + torch.finfo(want.dtype).tiny if torch.is_tensor(tol) else max(tol, torch.finfo(want.dtype).tiny)
    err = (got.to(want.dtype) - want).abs()
    worst = float((err / tol).max()) if err.numel() else 0.0
    assert worst <= 1, f"difference {worst:.3g} times the bound (n={n_terms}; max |difference| {float(err.max()):.3g})"
