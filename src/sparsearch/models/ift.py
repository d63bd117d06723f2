"""Sparse Iso-FLOP Transformations (Sparse-IFT; Thangarasa et al., ICML 2023): spend sparsity on a bigger network
at the dense network's FLOPs instead of on fewer FLOPs.

    Sparse Wide      every layer's width times sqrt(k), k = 1 / (1 - s): a layer's weights grow k-fold
    Sparse Parallel  each eligible convolution (linear) becomes k = round(1 / (1 - s)) parallel ones whose outputs
                     add up; a convolution followed by a BatchNorm gets one BatchNorm per branch

The stem and the classifier stay dense (`dense_first_last`, as the authors' code leaves them), so they grow too
(Sparse Wide widens the stem's output and the classifier's input). `iso_sparsity` therefore solves for the
mask sparsity at which the whole transformed network's effective multiply-accumulates equal the dense
network's, with the allocation the method will use (the paper's optional search for an exact FLOP budget);
for uniform allocation and no dense layers it is s itself.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..errors import SparsearchError
from .flops import weight_uses
from .tracing import conv_bn_pairs

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset

FAMILIES = ("wide", "parallel")


def wide_factor(sparsity: float) -> float:
    return math.sqrt(1 / (1 - sparsity))


def branches(sparsity: float) -> int:
    return max(1, round(1 / (1 - sparsity)))


def sparse_wide(build: Callable[[float], nn.Module], sparsity: float) -> nn.Module:
    """`build(factor)` makes the model with every width times `factor` (a registry model: `WIDEN[name]`)."""
    return build(wide_factor(sparsity))


class ParallelBranches(nn.Module):
    """The sum of parallel layers (each a layer, or a layer and its BatchNorm)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def sparse_parallel(model: nn.Module, sparsity: float, example: torch.Tensor, include=("*",), exclude=(),
                    dense_first_last: bool = True) -> nn.Module:
    """`model` in place with every eligible layer (as `find_layers` selects them) replaced by `branches(sparsity)`
    parallel copies, freshly initialised, each with its own BatchNorm where the layer fed one (traced on
    `example`)."""
    k = branches(sparsity)
    bn_of = {conv: bn for bn, conv in conv_bn_pairs(model, example).items()}
    # an attention block uses its projections as weights, not as modules: it stays as it is (masked like the rest)
    attention = {id(p) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for p in (m, m.out_proj)}
    for name, layer in sp.find_layers(model, include, exclude, dense_first_last).items():
        if id(layer) in attention:
            continue
        bn = model.get_submodule(bn_of[name]) if name in bn_of else None
        parts = []
        for i in range(k):
            twin = copy.deepcopy(layer)
            if i:
                twin.reset_parameters()
            parts.append(nn.Sequential(twin, copy.deepcopy(bn)) if bn is not None else twin)
        _replace(model, name, ParallelBranches(parts))
        if bn is not None:
            _replace(model, bn_of[name], nn.Identity())
    return model


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Dense multiply-accumulates of each maskable layer for one example (eval mode)."""
    macs: dict[str, int] = {}

    def hook(name):
        def record(module, args, kwargs, output):
            this_call: dict[str, int] = {}  # a layer called twice (shared) counts once, as the engine runs it
            for suffix, weight, uses, _ in weight_uses(module, args, kwargs, output):
                this_call[name + suffix] = this_call.get(name + suffix, 0) + weight.numel() * uses
            for key, value in this_call.items():
                macs.setdefault(key, value)
        return record

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.MultiheadAttention))]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return macs


def iso_sparsity(model: nn.Module, target_macs: float, input_shape: tuple[int, ...], allocation: str = "uniform",
                 include=("*",), exclude=(), dense_first_last: bool = True) -> float:
    """The sparsity at which `model`'s effective MACs, with the selected layers masked at `allocation` densities
    and the others dense, equal `target_macs`."""
    if allocation == "global":
        raise SparsearchError("Sparse-IFT solves per-layer densities: use allocation uniform, er or erk, not global")
    macs = layer_macs(model, input_shape)
    masked = {n: sp.layer_weight(m).shape for n, m in sp.find_layers(model, include, exclude, dense_first_last).items() if n in macs}
    fixed = sum(v for n, v in macs.items() if n not in masked)

    def effective(s: float) -> float:
        densities = sp.allocate(masked, s, allocation)
        return fixed + sum(densities[n] * macs[n] for n in masked)

    if effective(0.0) <= target_macs:
        return 0.0
    low, high = 0.0, 1 - 1e-6
    if effective(high) > target_macs:
        raise SparsearchError(f"no sparsity brings this network to {target_macs:.0f} MACs: its dense layers alone "
                              f"cost {fixed:.0f}")
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if effective(mid) > target_macs else (low, mid)
    return high


def iso_config(cfg: Config, ds: Dataset) -> Config:
    """`cfg` with its Sparse-IFT s in `ift.sparsity` and `sparsity.sparsity` solved so that the transformed network
    costs the dense network's MACs; `cfg` itself where `ift.family` is none."""
    from . import model_builder

    if cfg.ift.family == "none":
        return cfg
    s = cfg.sparsity
    cfg = dataclasses.replace(cfg, ift=dataclasses.replace(cfg.ift, sparsity=transform_sparsity(cfg)))
    shape = (ds.in_channels, *ds.image_size)
    dense = model_builder(dataclasses.replace(cfg, ift=dataclasses.replace(cfg.ift, family="none")), ds)()
    solved = iso_sparsity(model_builder(cfg, ds)(), sum(layer_macs(dense, shape).values()), shape, s.allocation,
                          s.include, s.exclude, s.dense_first_last)
    return dataclasses.replace(cfg, sparsity=dataclasses.replace(s, sparsity=solved))


def transform_sparsity(cfg: Config) -> float:
    """The s that sets the transformation's k."""
    return cfg.ift.sparsity if cfg.ift.sparsity is not None else cfg.sparsity.sparsity
