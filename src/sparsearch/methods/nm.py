"""N:M fine-grained structured sparsity trained from scratch with SR-STE (Zhou et al., ICLR 2021).

The weights stay dense; every forward pass keeps the N largest |w| of each group of M (along the input
dimension) and the gradient flows straight through to all weights. The sparse-refined term
lambda_w * (1 - mask) * W is added to the gradient of the pruned weights, pulling them towards zero so the
mask settles. The exported weights (`final.safetensors`, the squashed state) are valid N:M.
"""

from __future__ import annotations

import torch

from .. import sparsity as sp
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


def nm(ctx: MethodContext) -> StageResult:
    s = ctx.cfg.sparsity
    model = ctx.build()
    sp.attach_nm(model, sp.find_layers(model, s.include, s.exclude, s.dense_first_last), sp.parse_kind(s.kind))
    return ctx.fit(model, ctx.out_dir, ctx.cfg.train, callbacks=[SparseRefined(ctx.cfg.nm.lambda_w)])
