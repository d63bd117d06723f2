"""N:M fine-grained structured sparsity trained from scratch with SR-STE (Zhou et al., ICLR 2021).

The weights stay dense; every forward pass keeps the N largest |w| of each group of M (along the input
dimension) and the gradient flows straight through to all weights. The sparse-refined term
lambda_w * (1 - mask) * W is added to the gradient of the pruned weights, pulling them towards zero so the
mask settles. With `nm.decay` set, progressive gradient flow's mask decay (Bambhaniya et al. 2024) replaces the
sparse-refined term: the pruned weights take part in the forward pass scaled by a factor decaying to 0. The
exported weights (`final.safetensors`, the squashed state) are valid N:M.
"""

from __future__ import annotations

import math

import torch

from .. import sparsity as sp
from ..config import NMConfig
from ..train import Callback
from .stage import MethodContext, StageResult


class SparseRefined(Callback):
    """SR-STE's decay on the weights the current mask prunes."""

    def __init__(self, lambda_w: float):
        self.lambda_w = lambda_w

    def on_before_optimizer_step(self, trainer) -> None:
        with torch.no_grad():
            for module in sp.masked_layers(trainer.model).values():
                weight = sp.weight_param(module)
                mask = module.parametrizations.weight[0].nm_mask
                if weight.grad is not None:
                    weight.grad.add_(self.lambda_w * (1 - mask) * weight)


def flow_factor(step: int, total_steps: int, c: NMConfig) -> float:
    """beta_t of the mask decay: how much of the pruned weights the forward pass lets through at `step`."""
    if c.decay == "none" or step >= (1 - c.decay_hard_fraction) * total_steps:
        return 0.0
    return max(0.0, 1 - c.decay_rate * step) if c.decay == "linear" else math.exp(-c.decay_rate * step)


class MaskDecay(Callback):
    """Sets the soft-mask factor of every N:M layer each step; evaluation and the final weights use the hard mask."""

    def __init__(self, c: NMConfig):
        self.c = c

    def _set(self, trainer, flow: float) -> None:
        for *_, p in sp.masked_tensors(trainer.model):
            if isinstance(p, sp.DynamicNM):
                p.flow = flow

    def on_batch_start(self, trainer) -> None:
        self._set(trainer, flow_factor(trainer.step, trainer.total_steps, self.c))

    def on_epoch_end(self, trainer) -> None:
        self._set(trainer, 0.0)

    on_train_end = on_epoch_end


def nm(ctx: MethodContext) -> StageResult:
    s, c = ctx.cfg.sparsity, ctx.cfg.nm
    model = ctx.build()
    sp.attach_nm(model, sp.find_layers(model, s.include, s.exclude, s.dense_first_last), sp.parse_kind(s.kind))
    gradient_flow = SparseRefined(c.lambda_w) if c.decay == "none" else MaskDecay(c)
    return ctx.fit(model, ctx.out_dir, ctx.cfg.train, callbacks=[gradient_flow])
