"""MaskSparsity (Jiang et al. 2022, "Pruning-aware Sparse Regularization for Network Pruning"): channel pruning
by BatchNorm scales where the L1 penalty falls only on the channels chosen for pruning.

    pretrain   dense (shared with the other train-then-prune methods)
    select     per BatchNorm layer (uniform) or over all of them (global), the `sparsity.sparsity` fraction of
               channels with the smallest |gamma|; only BatchNorms fed directly by a convolution qualify
    sparse-reg train with grad(gamma) += reg * sign(gamma) on the selected channels only
    finetune   the selected channels removed (conv filter and BatchNorm scale and shift masked, so the channel is
               exactly zero and the next layer's input channel can go too), the rest trained
"""

from __future__ import annotations

import fnmatch

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..errors import SparsearchError
from ..models.tracing import conv_bn_pairs
from .base import SparseMethod


def select_channels(model: nn.Module, bns: list[str], sparsity: float, allocation: str) -> dict[str, torch.Tensor]:
    """Boolean keep-mask per BatchNorm: the channels with the largest |gamma| survive."""
    modules = dict(model.named_modules())
    scores = {name: modules[name].weight.detach().abs() for name in bns}
    if allocation == "global":
        return sp.global_select(scores, sparsity, sp.Unstructured())
    if allocation == "uniform":
        return {name: sp.select(s, 1 - sparsity, sp.Unstructured()) for name, s in scores.items()}
    raise SparsearchError(f"maskspar selects channels per layer (uniform) or globally, not by '{allocation}'")


class MaskSparsity(SparseMethod):
    """On a trained model: `prepare` selects the `sparsity` fraction of channels with the smallest |gamma| among
    the BatchNorms fed directly by a convolution (traced on `example`, an input batch; `include` / `exclude`
    are BatchNorm name globs), per layer (`uniform`) or over all of them (`global`); `step()` adds
    reg * sign(gamma) to the gradient of the selected scales only; `prune()` then removes the selected
    channels (filter, scale and shift masked) for finetuning."""

    def __init__(self, sparsity: float, example: torch.Tensor, *, allocation: str = "uniform", reg: float = 5e-4,
                 include=("*",), exclude=(), seed: int = 0):
        super().__init__(sparsity, include=include, exclude=exclude, seed=seed)
        self.example, self.allocation, self.reg = example, allocation, reg

    @classmethod
    def from_config(cls, cfg, example: torch.Tensor) -> MaskSparsity:
        m = cfg.maskspar
        return cls(cfg.sparsity.sparsity, example, allocation=cfg.sparsity.allocation, reg=m.reg, include=m.include,
                   exclude=m.exclude, seed=cfg.seed)

    def attach(self, model: nn.Module) -> None:
        self.model = model
        self.pairs = conv_bn_pairs(model, self.example)
        bns = [n for n in self.pairs if any(fnmatch.fnmatchcase(n, g) for g in self.include)
               and not any(fnmatch.fnmatchcase(n, g) for g in self.exclude)]
        if not bns:
            raise SparsearchError(f"maskspar: no BatchNorm fed directly by a convolution matches include="
                                  f"{list(self.include)} exclude={list(self.exclude)}")
        self.keep = select_channels(model, bns, self.sparsity, self.allocation)
        modules = dict(model.named_modules())
        self.targets = [(modules[n].weight, (~k).to(modules[n].weight.dtype)) for n, k in self.keep.items()]

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        for gamma, selected in self.targets:
            if gamma.grad is not None:
                gamma.grad.add_(self.reg * torch.sign(gamma) * selected)

    def prune(self, model: nn.Module | None = None) -> nn.Module:
        """Mask the selected channels of `model` (default: the prepared one, holding the regularised weights)."""
        model = model if model is not None else self.model
        sp.attach_channels(model, {**{self.pairs[bn]: k for bn, k in self.keep.items()}, **self.keep})
        return model

    def channels(self) -> dict:
        return {bn: {"conv": self.pairs[bn], "kept": int(k.sum()), "channels": k.numel(),
                     "pruned": (~k).nonzero().flatten().tolist()} for bn, k in self.keep.items()}
