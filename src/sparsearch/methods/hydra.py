"""HYDRA (Sehwag et al., NeurIPS 2020) as a method object for a user's loop: importance scores learned with the
weights frozen, then the masks fixed at the scores' top-k and the survivors finetuned. The CLI's recipe runs the
same phases as resumable stages (`recipes.hydra`, on `train.stage`)."""

from __future__ import annotations

import torch.nn as nn

from .. import sparsity as sp
from ..errors import SparsearchError
from ..train import stage_parameters
from .base import SparseMethod


class Hydra(SparseMethod):
    """HYDRA on a (pretrained) model in two phases. `prepare(model)` attaches importance scores at the per-layer
    densities of `allocation` (initialised from the scaled weights) and freezes the masked weights, so an
    optimizer over `trainable()` trains the scores (and BatchNorm, biases); `finetune(optimizer)` fixes each
    mask at its scores' top-k, lets the surviving weights train again and binds `optimizer` to the masks."""

    def __init__(self, sparsity: float, *, allocation: str = "erk", **common):
        super().__init__(sparsity, **common)
        self.allocation = allocation

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        sp.attach_learned(model, density_map(self.layers, self.sparsity, self.allocation))
        self.params = stage_parameters(model, "prune", list(model.parameters()))

    def prepare(self, model: nn.Module, optimizer=None) -> nn.Module:
        super().prepare(model, optimizer)
        held = {id(p) for group in (optimizer.param_groups if optimizer is not None else []) for p in group["params"]}
        if optimizer is not None and any(id(p) not in held for p in self.trainable()):
            raise SparsearchError("Hydra: the optimizer does not hold the importance scores prepare() creates, so "
                                  "nothing would train: build it over hydra.trainable() after hydra.prepare(model)")
        return model

    def trainable(self) -> list[nn.Parameter]:
        return self.params

    def finetune(self, optimizer=None) -> None:
        sp.freeze(self.model)
        for module in sp.masked_layers(self.model).values():
            sp.weight_param(module).requires_grad_(True)
        if optimizer is not None:
            self.optimizer = optimizer
            sp.bind_optimizer(self.model, optimizer)


def density_map(layers: dict[str, nn.Module], sparsity: float, allocation: str) -> dict[str, float]:
    """Per-layer densities for learned masks at overall `sparsity` (global allocation is not defined for HYDRA)."""
    if allocation == "global":
        raise sp.SparsityError("HYDRA needs a per-layer allocation (uniform, er or erk), not global")
    return sp.allocate({n: sp.layer_weight(m).shape for n, m in layers.items()}, sparsity, allocation)
