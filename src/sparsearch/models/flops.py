"""Parameters and multiply-accumulates of one inference forward pass, dense and effective.

Effective counts skip zero weights: a conv weight entry contributes H_out * W_out MACs per image when it is
nonzero, a linear weight entry one. Masked layers are counted through their masked `weight`, so this
works on a model with masks attached and on a squashed one alike. Only modules the eval-mode forward pass
runs are counted (an auxiliary head is training-only). Normalisation and activations are left out of the
MACs, as is usual; their parameters are counted.

Structural counts go one step further, for channel pruning: a conv/linear output channel whose weights are
all zero is removed, and so is an input channel that is exactly zero on the probe batch (random normal
inputs, eval mode, activations such as ReLU replaced by the identity so that only structure can make a
channel zero: a channel pruned with its BatchNorm, `sparsity.attach_channels`). They count every kernel entry
of the connections that remain, zero or not.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import sparsity as sp


class _ActivationsAsIdentity(TorchFunctionMode):
    """Clamping activations can zero a channel for the probe alone; without them only structure can."""

    CLAMPS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.CLAMPS:
            return args[0]
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """`input_shape` is one example's (C, H, W) or (features,). Returns params, params_nonzero, macs, macs_effective,
    params_structural and macs_structural, all per example."""
    totals = {"params": 0, "params_nonzero": 0, "macs": 0, "macs_effective": 0, "params_structural": 0,
              "macs_structural": 0}
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
                totals["params_structural"] += t.numel()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            positions = output[0, 0].numel() if isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1
            totals["macs"] += module.weight.numel() * positions
            totals["macs_effective"] += int(torch.count_nonzero(module.weight)) * positions
            kept = _structural_weights(module.weight, inputs[0])
            totals["params_structural"] -= module.weight.numel() - kept
            totals["macs_structural"] += kept * positions

    leaves = [m for m in model.modules() if sp.owns_parameters(m)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with _ActivationsAsIdentity():
            model(torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0)).to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return totals


def _structural_weights(weight: torch.Tensor, x: torch.Tensor) -> int:
    """Weight entries left once dead output channels and dead (all-zero) input channels are removed."""
    out_alive = weight.flatten(1).abs().sum(1) > 0
    in_alive = x.transpose(0, 1).flatten(1).abs().amax(1) > 0  # per input channel
    groups = in_alive.numel() // weight.shape[1]  # grouped / depthwise convolutions
    group_of_out = torch.arange(weight.shape[0], device=weight.device) // (weight.shape[0] // groups)
    connected = in_alive.view(groups, -1)[group_of_out] & out_alive[:, None]  # (out, in / groups)
    return int(connected.sum()) * weight[0, 0].numel()
