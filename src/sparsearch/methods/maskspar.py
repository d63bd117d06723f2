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
import json

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..errors import SparsearchError
from ..models.tracing import conv_bn_pairs
from ..train import Callback
from .stage import MethodContext, StageResult


def select_channels(model: nn.Module, bns: list[str], sparsity: float, allocation: str) -> dict[str, torch.Tensor]:
    """Boolean keep-mask per BatchNorm: the channels with the largest |gamma| survive."""
    modules = dict(model.named_modules())
    scores = {name: modules[name].weight.detach().abs() for name in bns}
    if allocation == "global":
        return sp.global_select(scores, sparsity, sp.Unstructured())
    if allocation == "uniform":
        return {name: sp.select(s, 1 - sparsity, sp.Unstructured()) for name, s in scores.items()}
    raise SparsearchError(f"maskspar selects channels per layer (uniform) or globally, not by '{allocation}'")


class MaskedL1(Callback):
    """Adds the L1 subgradient reg * sign(gamma) to the scales of the channels selected for pruning only."""

    def __init__(self, bns: dict[str, nn.Module], prune: dict[str, torch.Tensor], reg: float):
        self.targets = [(bns[name].weight, prune[name].to(bns[name].weight.dtype)) for name in prune]
        self.reg = reg

    def on_before_optimizer_step(self, trainer) -> None:
        with torch.no_grad():
            for gamma, selected in self.targets:
                if gamma.grad is not None:
                    gamma.grad.add_(self.reg * torch.sign(gamma) * selected)


def maskspar(ctx: MethodContext) -> StageResult:
    cfg, m = ctx.cfg, ctx.cfg.maskspar
    s = cfg.sparsity.sparsity
    model = ctx.from_pretrained()
    example = next(iter(ctx.train_loader.batches()))[0][:2]
    pairs = conv_bn_pairs(model, example)
    bns = [n for n in pairs if any(fnmatch.fnmatchcase(n, g) for g in m.include)
           and not any(fnmatch.fnmatchcase(n, g) for g in m.exclude)]
    if not bns:
        raise SparsearchError(f"maskspar: no BatchNorm fed directly by a convolution matches include={m.include} "
                              f"exclude={m.exclude}")
    keep = select_channels(model, bns, s, cfg.sparsity.allocation)
    if distributed.is_main():
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        (ctx.out_dir / "channels.json").write_text(json.dumps(
            {bn: {"conv": pairs[bn], "kept": int(k.sum()), "channels": k.numel(), "pruned": (~k).nonzero().flatten().tolist()}
             for bn, k in keep.items()}, indent=1))

    modules = dict(model.named_modules())
    regularise = MaskedL1({n: modules[n] for n in bns}, {n: ~k for n, k in keep.items()}, m.reg)
    reg = ctx.fit(model, ctx.out_dir / "sparse-reg", ctx.stage_cfg(m.reg_epochs, cfg.train.lr), callbacks=[regularise])

    pruned = ctx.build()
    pruned.load_state_dict(reg.model.state_dict())
    sp.attach_channels(pruned, {**{pairs[bn]: k for bn, k in keep.items()}, **keep})
    return ctx.fit(pruned, ctx.out_dir / "finetune", ctx.stage_cfg(m.finetune_epochs, m.finetune_lr))
