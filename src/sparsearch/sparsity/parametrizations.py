"""The three mask parametrizations (`torch.nn.utils.parametrize`): `Mask` (fixed), `LearnedMask` (HYDRA scores)
and `DynamicNM` (SR-STE N:M). Each records its kind and density in the module's extra state, so masks save
and load with the model's state_dict. `masks.py` attaches, updates and checks them."""

from __future__ import annotations

import json
import math

import torch
import torch.nn as nn

from ..errors import SparsearchError
from .select import NM, MaskKind, Unstructured, parse_kind, select


class SparsityError(SparsearchError):
    pass


def unit_density(mask: torch.Tensor, kind: MaskKind) -> float:
    """Fraction of units (weights, blocks, channels) a mask keeps: the density it was selected at."""
    if isinstance(kind, NM):
        return kind.density
    return float((kind.units(mask.float()) > 0).float().mean())


def encode_extra(info: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(info, sort_keys=True).encode()), dtype=torch.uint8)


def decode_extra(state) -> dict:
    """A mask's extra state: the tensor `get_extra_state` writes, or the dict older versions wrote."""
    return state if isinstance(state, dict) else json.loads(bytes(state.tolist()).decode())


class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor, kind: MaskKind = Unstructured(), density: float | None = None):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().float())
        self.kind = kind
        self.density = unit_density(mask, kind) if density is None else density
        self.grad_sink: tuple[dict, str] | None = None  # see track_dense_grads

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight * self.mask.to(weight.dtype)
        if self.grad_sink is not None and out.requires_grad:
            sink, key = self.grad_sink
            out.register_hook(lambda g: sink.__setitem__(key, sink[key] + g.detach() if key in sink else g.detach()))
        return out

    def current(self) -> torch.Tensor:
        return self.mask.bool()

    def get_extra_state(self) -> torch.Tensor:
        # a tensor (the JSON's bytes), so a masked model's state_dict saves with safetensors like any other
        return encode_extra({"kind": str(self.kind), "density": self.density})

    def set_extra_state(self, state) -> None:
        state = decode_extra(state)
        self.kind, self.density = parse_kind(state["kind"]), float(state["density"])


class _ScoredMask(torch.autograd.Function):
    """weight * mask, where mask = top-k(|scores|) and the gradient reaches the scores straight through the
    top-k: d/dweight = grad * mask, d/dscores = grad * weight * sign(scores)."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        d_weight = grad * mask if ctx.needs_input_grad[0] else None
        d_scores = grad * weight * scores.sgn() if ctx.needs_input_grad[1] else None
        return d_weight, d_scores, None


class LearnedMask(nn.Module):
    """Learned scores S with a top-k mask in the forward pass (HYDRA). Scaled init: S = sqrt(6/fan_in) W / max|W|."""

    def __init__(self, weight: torch.Tensor, density: float, kind: MaskKind = Unstructured()):
        super().__init__()
        self.scores = nn.Parameter(torch.empty_like(weight))
        self.kind, self.density = kind, density
        self._selected: tuple | None = None  # (the scores, density, kind and dtype it was selected from; mask)
        self.scaled_init(weight)

    @torch.no_grad()
    def scaled_init(self, weight: torch.Tensor) -> None:
        fan_in = math.prod(weight.shape[1:])
        self.scores.copy_(math.sqrt(6.0 / fan_in) * weight / weight.abs().max().clamp_min(1e-12))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # the top-k is selected anew only when the scores changed (the architect's pass and the weight step's see
        # the same ones). Compared by value: fused optimisers and writes through .data leave _version alone
        scores, setting = self.scores.detach(), (self.density, str(self.kind), weight.dtype)
        if self._selected is None or self._selected[1] != setting or not torch.equal(self._selected[0], scores):
            mask = select(scores.abs(), self.density, self.kind).to(weight.dtype)
            self._selected = (scores.clone(), setting, mask)
        return _ScoredMask.apply(weight, self.scores, self._selected[2])

    def current(self) -> torch.Tensor:
        return select(self.scores.detach().abs(), self.density, self.kind)

    get_extra_state = Mask.get_extra_state
    set_extra_state = Mask.set_extra_state


class _MaskedStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, mask):
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None  # straight through: pruned weights get the dense gradient too


class DynamicNM(nn.Module):
    """N:M sparsity trained with SR-STE (Zhou et al. 2021): the mask is recomputed from |W| in every forward pass,
    the stored weight stays dense, and the gradient passes straight through to every weight. `mask` holds the
    mask of the latest forward pass (the one the SR-STE decay term uses). `flow` > 0 lets the pruned weights
    through scaled by it in training mode (progressive gradient flow's soft mask E + (1 - E) * flow); it is
    set per step by a schedule, and evaluation always sees the hard N:M mask."""

    def __init__(self, weight: torch.Tensor, kind: NM):
        super().__init__()
        self.kind, self.density = kind, kind.density
        self.flow = 0.0
        self.register_buffer("nm_mask", kind.select(weight.detach().abs()).float())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.nm_mask.copy_(self.kind.select(weight.detach().abs()))
        mask = self.nm_mask.to(weight.dtype)
        if self.flow and self.training:
            mask = mask + (1 - mask) * self.flow
        return _MaskedStraightThrough.apply(weight, mask)

    def current(self) -> torch.Tensor:
        return self.nm_mask.bool()

    get_extra_state = Mask.get_extra_state
    set_extra_state = Mask.set_extra_state
