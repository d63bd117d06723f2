"""Parameters and multiply-accumulates of one inference forward pass, dense and effective.

Effective counts skip zero weights: a conv weight entry contributes H_out * W_out MACs per image when it is
nonzero, a linear weight entry one. Masked layers are counted through their masked `weight`, so this
works on a model with masks attached and on a squashed one alike. Only modules the eval-mode forward pass
runs are counted (an auxiliary head is training-only). Normalisation and activations are left out of the
MACs, as is usual; their parameters are counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """`input_shape` is one example's (C, H, W) or (features,). Returns params, params_nonzero, macs, macs_effective."""
    totals = {"params": 0, "params_nonzero": 0, "macs": 0, "macs_effective": 0}
    seen: set[int] = set()

    def hook(module: nn.Module, inputs, output) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for name in ("weight", "bias"):
            t = getattr(module, name, None)
            if isinstance(t, torch.Tensor):
                totals["params"] += t.numel()
                totals["params_nonzero"] += int(torch.count_nonzero(t))
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            positions = output[0, 0].numel() if isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1
            totals["macs"] += module.weight.numel() * positions
            totals["macs_effective"] += int(torch.count_nonzero(module.weight)) * positions

    leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return totals
