"""Which entries a mask keeps: exact top-k selection, mask kinds, and layer-wise density allocation.

Rounding rule (everywhere): a layer asked for density d over n units keeps round_half_up(d * n) units,
but at least one when d > 0, so no layer is cut off entirely. Ties in score are broken by position:
the entry with the lower flat index is kept. Units are weights (unstructured), blocks, or output channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SparsearchError


def keep_count(density: float, n: int) -> int:
    if density <= 0:
        return 0
    return min(n, max(1, math.floor(density * n + 0.5)))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest scores (exactly k; ties go to the lower index). O(n), no full sort."""
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if torch.isnan(flat).any():
        raise SparsearchError("mask scores contain NaN")
    threshold = flat.kthvalue(n - k + 1).values  # the k-th largest value
    above = flat > threshold
    ties = flat == threshold
    need = k - int(above.sum())
    keep = above | (ties & (torch.cumsum(ties, 0) <= need))
    return keep.view_as(scores)


# ------------------------------------------------------------------------------------------ mask kinds

@dataclass(frozen=True)
class Unstructured:
    def units(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def expand(self, unit_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return unit_mask

    def __str__(self) -> str:
        return "unstructured"


@dataclass(frozen=True)
class Channel:
    """Whole output channels (filters / rows); a channel's score is the sum of its entries' scores."""

    def units(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.reshape(scores.shape[0], -1).sum(1)

    def expand(self, unit_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return unit_mask.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()

    def __str__(self) -> str:
        return "channel"


@dataclass(frozen=True)
class Block:
    """bh x bw blocks of the weight viewed as (out, in * kh * kw); edge blocks may be partial."""

    bh: int
    bw: int

    def _grid(self, shape) -> tuple[int, int, int, int]:
        rows, cols = shape[0], math.prod(shape[1:])
        return rows, cols, -(-rows // self.bh), -(-cols // self.bw)

    def units(self, scores: torch.Tensor) -> torch.Tensor:
        rows, cols, gr, gc = self._grid(scores.shape)
        padded = scores.new_zeros(gr * self.bh, gc * self.bw)
        padded[:rows, :cols] = scores.reshape(rows, cols)
        return padded.view(gr, self.bh, gc, self.bw).sum((1, 3))

    def expand(self, unit_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        rows, cols, _, _ = self._grid(shape)
        full = unit_mask.repeat_interleave(self.bh, 0).repeat_interleave(self.bw, 1)
        return full[:rows, :cols].reshape(shape).clone()

    def __str__(self) -> str:
        return f"block:{self.bh}:{self.bw}"


@dataclass(frozen=True)
class NM:
    """At most n non-zeros in every group of m consecutive weights along the input dimension.

    Conv weights (out, in, kh, kw) are grouped along `in` at each (out, kh, kw) position, as N:M
    hardware and SR-STE do; the input-channel count must be divisible by m.
    """

    n: int
    m: int

    def groups(self, t: torch.Tensor) -> torch.Tensor:
        if t.shape[1] % self.m:
            raise SparsearchError(f"N:M {self.n}:{self.m} needs the input dimension ({t.shape[1]}) divisible by {self.m}")
        return (t.permute(0, *range(2, t.dim()), 1) if t.dim() > 2 else t).reshape(-1, self.m)

    def ungroup(self, g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if len(shape) == 2:
            return g.reshape(shape)
        permuted = (shape[0], *shape[2:], shape[1])
        return g.reshape(permuted).permute(0, len(shape) - 1, *range(1, len(shape) - 1)).contiguous()

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        g = self.groups(scores)
        order = torch.argsort(g, dim=1, descending=True, stable=True)[:, : self.n]
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, order, True)
        return self.ungroup(keep, scores.shape)

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"nm:{self.n}:{self.m}"


MaskKind = Unstructured | Channel | Block | NM


def parse_kind(text: str) -> MaskKind:
    parts = str(text).split(":")
    try:
        if parts == ["unstructured"]:
            return Unstructured()
        if parts == ["channel"]:
            return Channel()
        if parts[0] == "block" and len(parts) == 3:
            bh, bw = int(parts[1]), int(parts[2])
            if bh >= 1 and bw >= 1:
                return Block(bh, bw)
        if parts[0] == "nm" and len(parts) == 3:
            n, m = int(parts[1]), int(parts[2])
            if 0 < n < m:
                return NM(n, m)
    except ValueError:
        pass
    raise SparsearchError(f"unknown mask kind '{text}' (use unstructured, channel, block:BH:BW or nm:N:M with N < M)")


def select(scores: torch.Tensor, density: float, kind: MaskKind) -> torch.Tensor:
    """Boolean mask keeping the best units of one layer at `density` (N:M ignores density)."""
    if isinstance(kind, NM):
        return kind.select(scores)
    units = kind.units(scores)
    return kind.expand(topk_mask(units, keep_count(density, units.numel())), scores.shape)


def expected_kept(kind: MaskKind, density: float, shape: torch.Size) -> int:
    """How many weights a mask of this kind and density keeps: the invariant `check` verifies."""
    numel = math.prod(shape)
    if isinstance(kind, NM):
        return numel // kind.m * kind.n
    if isinstance(kind, Unstructured):
        return keep_count(density, numel)
    probe = torch.ones(shape)
    return int(select(probe, density, kind).sum())


# ------------------------------------------------------------------------------------------ allocation

def allocate(shapes: dict[str, torch.Size], sparsity: float, method: str) -> dict[str, float]:
    """Per-layer densities whose weighted mean is 1 - sparsity: uniform, ER or ERK (Evci et al. 2020).

    ER scores a layer by (n_in + n_out) / (n_in * n_out), ERK by sum(shape) / prod(shape). Densities are
    eps * score; layers that would exceed 1 are made dense and eps is solved again over the rest.
    """
    if not 0 <= sparsity < 1:
        raise SparsearchError(f"sparsity must be in [0, 1), got {sparsity}")
    density = 1 - sparsity
    if method == "uniform":
        return {name: density for name in shapes}
    if method not in ("er", "erk"):
        raise SparsearchError(f"unknown allocation '{method}' (use uniform, er, erk or global)")
    numel = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: (sum(s) / math.prod(s)) if method == "erk" else (s[0] + s[1]) / (s[0] * s[1]) if len(s) > 1 else 1.0
           for k, s in shapes.items()}
    dense: set[str] = set()
    eps = 0.0
    while len(dense) < len(shapes):  # all dense happens at (or within rounding of) sparsity 0
        budget = density * sum(numel.values()) - sum(numel[k] for k in dense)
        eps = budget / sum(raw[k] * numel[k] for k in shapes if k not in dense)
        over = [k for k in shapes if k not in dense and eps * raw[k] > 1]
        if not over:
            break
        top = max(raw[k] for k in over)
        dense |= {k for k in over if raw[k] == top}
    return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}


def global_select(scores: dict[str, torch.Tensor], sparsity: float, kind: MaskKind) -> dict[str, torch.Tensor]:
    """One threshold across all layers: exactly round((1 - sparsity) * total units) survive in total."""
    if isinstance(kind, NM):
        raise SparsearchError("global allocation does not apply to N:M masks (their density is fixed per group)")
    units = {k: kind.units(s) for k, s in scores.items()}
    flat = torch.cat([u.reshape(-1) for u in units.values()])
    keep = topk_mask(flat, math.floor((1 - sparsity) * flat.numel() + 0.5))
    out, start = {}, 0
    for name, u in units.items():
        part = keep[start : start + u.numel()].view_as(u)
        out[name] = kind.expand(part, scores[name].shape)
        start += u.numel()
    return out
