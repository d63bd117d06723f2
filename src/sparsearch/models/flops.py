"""Parameters and multiply-accumulates of one inference forward pass, dense and effective.

Effective counts skip zero weights: a conv weight entry contributes H_out * W_out MACs per image when it is
nonzero, a linear weight entry one per token (`weight_uses`). Masked layers are counted through their masked
weight, so this works on a model with masks attached and on a squashed one alike. Only modules the eval-mode forward pass
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


def weight_uses(module: nn.Module, args: tuple, kwargs: dict, output) -> list[tuple[str, torch.Tensor, int, torch.Tensor | None]]:
    """The weights one forward call of `module` multiplies, as (name suffix, weight, uses, input): `uses` is how often
    each entry is multiplied per example (a convolution's output positions, a linear layer's tokens); `input` the
    tensor it multiplies, features on the last axis. An attention block's packed projection is three weights (q, k
    and v rows, each used once per token of its own input), and its output projection, which the block calls as a
    weight rather than as a module, is counted here under ".out_proj". Attention's activation-by-activation products
    are not weight MACs and are left out, like normalisation."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return [("", module.weight, output[0, 0].numel(), args[0].movedim(1, -1))]
    if isinstance(module, nn.Linear):
        return [("", module.weight, output[0].numel() // module.out_features, args[0])]
    if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
        call = sp.attention_call(args, kwargs)
        qkv = [call[k] for k in ("query", "key", "value")]
        tokens = [x.shape[1 if module.batch_first and x.dim() == 3 else 0] for x in qkv]
        rows = module.in_proj_weight.chunk(3)
        return [*(("", w, t, x) for w, t, x in zip(rows, tokens, qkv)), (".out_proj", module.out_proj.weight, tokens[0], None)]
    return []


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """`input_shape` is one example's (C, H, W) or (features,). Returns params, params_nonzero, macs, macs_effective,
    params_structural and macs_structural, all per example."""
    totals = {"params": 0, "params_nonzero": 0, "macs": 0, "macs_effective": 0, "params_structural": 0,
              "macs_structural": 0}
    seen: set[int] = set()

    def count_params(t: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor):
            totals["params"] += t.numel()
            totals["params_nonzero"] += int(torch.count_nonzero(t))
            totals["params_structural"] += t.numel()

    def hook(module: nn.Module, args, kwargs, output) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, nn.MultiheadAttention):  # its parameters, its output projection's included
            for t in (module.in_proj_weight, module.in_proj_bias, module.out_proj.weight, module.out_proj.bias):
                count_params(t)
        else:
            for name in ("weight", "bias"):
                count_params(getattr(module, name, None))
        for _, weight, uses, x in weight_uses(module, args, kwargs, output):
            totals["macs"] += weight.numel() * uses
            totals["macs_effective"] += int(torch.count_nonzero(weight)) * uses
            kept = _structural_weights(weight, x)
            totals["params_structural"] -= weight.numel() - kept
            totals["macs_structural"] += kept * uses

    counted = [m for m in model.modules() if sp.owns_parameters(m) or isinstance(m, nn.MultiheadAttention)]
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in counted]
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


def _structural_weights(weight: torch.Tensor, x: torch.Tensor | None) -> int:
    """Weight entries left once dead output channels and dead (all-zero) input features are removed (`x`: the
    input, features last; None where it is not observed, so every input counts as alive)."""
    out_alive = weight.flatten(1).abs().sum(1) > 0
    if x is None:
        return int(out_alive.sum()) * weight[0].numel()
    in_alive = x.reshape(-1, x.shape[-1]).abs().amax(0) > 0  # per input channel / feature
    groups = in_alive.numel() // weight.shape[1]  # grouped / depthwise convolutions
    group_of_out = torch.arange(weight.shape[0], device=weight.device) // (weight.shape[0] // groups)
    connected = in_alive.view(groups, -1)[group_of_out] & out_alive[:, None]  # (out, in / groups)
    return int(connected.sum()) * weight[0, 0].numel()
