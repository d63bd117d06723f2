"""N:M fine-grained structured sparsity trained from scratch with SR-STE (Zhou et al., ICLR 2021).

The weights stay dense; every forward pass keeps the N largest |w| of each group of M (along the input
dimension) and the gradient flows straight through to all weights. SR-STE's sparse-refined term
lambda_w * (1 - mask) * W is added to the gradient of the pruned weights, pulling them towards zero so the
mask settles. `MaskDecay` (progressive gradient flow, Bambhaniya et al. 2024) replaces that term: in training
the pruned weights take part in the forward pass scaled by a factor decaying to 0; evaluation and export use
the hard mask. The exported weights (`squash()`, `final.safetensors`) are valid N:M.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..config import Config
from ..errors import SparsearchError
from .base import SparseMethod
from .schedules import FlowDecay


class NMMethod(SparseMethod):
    """`nm` ("2:4", or nm:2:4) masks, recomputed from the weights in every forward pass, on the selected layers."""

    def __init__(self, nm: str = "2:4", **common):
        if not isinstance(nm, str):
            raise SparsearchError(f"{type(self).__name__}'s first argument is an N:M pattern such as \"2:4\" (the "
                                  f"sparsity follows from it), got {nm!r}")
        self.kind = sp.parse_kind(nm if nm.startswith("nm:") else f"nm:{nm}")
        if not isinstance(self.kind, sp.NM):
            raise SparsearchError(f"{type(self).__name__} needs an N:M pattern such as 2:4, got '{nm}'")
        super().__init__(1 - self.kind.density, **common)

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        sp.attach_nm(model, self.layers, self.kind)


class SRSTE(NMMethod):
    """SR-STE: straight-through N:M training with the sparse-refined decay `lambda_w` on the pruned weights."""

    def __init__(self, nm: str = "2:4", *, lambda_w: float = 2e-4, **common):
        super().__init__(nm, **common)
        self.lambda_w = lambda_w

    @classmethod
    def from_config(cls, cfg: Config) -> SRSTE:
        return cls(cfg.sparsity.kind, lambda_w=cfg.nm.lambda_w, **cls.common(cfg))

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        for module in sp.masked_layers(self.model).values():
            weight = sp.weight_param(module)
            pruned = (~sp.current_mask(module)).to(weight.dtype)
            if weight.grad is not None:
                weight.grad.add_(self.lambda_w * pruned * weight)


class MaskDecay(NMMethod):
    """Progressive gradient flow: in training, pruned weights pass at the `decay` factor of the step."""

    def __init__(self, nm: str = "2:4", *, decay: FlowDecay = FlowDecay(), **common):
        super().__init__(nm, **common)
        self.decay = decay

    @classmethod
    def from_config(cls, cfg: Config) -> MaskDecay:
        c = cfg.nm
        return cls(cfg.sparsity.kind, decay=FlowDecay(c.decay, c.decay_rate, c.decay_hard_fraction), **cls.common(cfg))

    def set_flow(self, flow: float) -> None:
        for *_, p in sp.masked_tensors(self.model):
            if isinstance(p, sp.DynamicNM):
                p.flow = flow

    def on_step_start(self) -> None:
        self.set_flow(self.decay.at(self.step_count, self.steps))

    def finish(self) -> None:
        self.set_flow(0.0)
