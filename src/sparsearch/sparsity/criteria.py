"""Scores that say which weights matter: higher is kept. Each criterion maps {layer name: module} to
{layer name: score tensor shaped like the weight}. Scores are taken on the effective (masked) weights,
so already-pruned weights score zero and iterative pruning only tightens a mask."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import SparsearchError
from .layers import attention_call, layer_weight, weight_param


def magnitude(layers: dict[str, nn.Module], **_) -> dict[str, torch.Tensor]:
    return {name: layer_weight(m).detach().abs() for name, m in layers.items()}


def random(layers: dict[str, nn.Module], seed: int = 0, **_) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weights = {name: layer_weight(m) for name, m in layers.items()}
    return {name: torch.rand(w.shape, generator=gen).to(w.device) for name, w in weights.items()}


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): w_u^2 / sum_{v >= u} w_v^2 over the layer's weights sorted by magnitude."""
    sq = weight.detach().reshape(-1).double() ** 2
    ordered, idx = torch.sort(sq, stable=True)
    suffix = ordered.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(sq)
    out[idx] = ordered / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    return out.view_as(weight).float()


def lamp(layers: dict[str, nn.Module], **_) -> dict[str, torch.Tensor]:
    return {name: lamp_scores(layer_weight(m)) for name, m in layers.items()}


def snip(layers: dict[str, nn.Module], model: nn.Module | None = None,
         batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, **_) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2019): connection sensitivity |w * dL/dw|, summed over the given batches."""
    if model is None or batches is None:
        raise SparsearchError("the snip criterion needs the model and at least one batch of training data")
    params = {name: weight_param(m) for name, m in layers.items()}
    scores = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.train()
    n = 0
    for xb, yb in batches:
        model.zero_grad(set_to_none=True)
        out = model(xb)
        F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, yb).backward()
        for name, m in layers.items():
            scores[name] += (layer_weight(m).detach() * params[name].grad).abs()
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise SparsearchError("the snip criterion got no batches")
    return scores


def _input_norms(model: nn.Module, layers: dict[str, nn.Module], batches) -> dict[str, list[torch.Tensor]]:
    """Per layer, the squared L2 norm of each input feature (channel) over the batches; an attention block's three
    (query, key, value)."""
    sums: dict[str, list[torch.Tensor]] = {}
    names = {id(m): n for n, m in model.named_modules() if n in layers}

    def add(name: str, inputs: list[torch.Tensor], axis: int) -> None:
        sq = [x.detach().float().movedim(axis, -1).pow(2).reshape(-1, x.shape[axis]).sum(0) for x in inputs]
        sums[name] = [a + b for a, b in zip(sums[name], sq)] if name in sums else sq

    def record(module, args, kwargs):
        if not isinstance(module, nn.MultiheadAttention):  # features: channels (dim 1) of a conv, last of a linear
            add(names[id(module)], [args[0]], 1 if isinstance(module, (nn.Conv1d, nn.Conv2d)) else -1)
            return
        call = attention_call(args, kwargs)
        qkv = [call["query"], call["key"], call["value"]]
        if id(module) in names:
            add(names[id(module)], qkv, -1)
        if id(module.out_proj) in names:  # the block calls its output projection's weight, not the module
            add(names[id(module.out_proj)], [_attention_values(module, qkv, call)], -1)

    handles = [m.register_forward_pre_hook(record, with_kwargs=True)
               for m in model.modules() if id(m) in names or id(getattr(m, "out_proj", None)) in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for xb, _ in batches:
                model(xb)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums


def _attention_values(mha: nn.MultiheadAttention, qkv: list[torch.Tensor], call: dict) -> torch.Tensor:
    """What an attention block feeds its output projection: its own forward with that projection as the identity."""
    if mha.batch_first:
        qkv = [x.transpose(0, 1) for x in qkv]
    dim = mha.embed_dim
    values, _ = F.multi_head_attention_forward(
        *qkv, dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias, mha.bias_k, mha.bias_v, mha.add_zero_attn, 0.0,
        torch.eye(dim, dtype=qkv[0].dtype, device=qkv[0].device), None, training=False, need_weights=False,
        key_padding_mask=call.get("key_padding_mask"), attn_mask=call.get("attn_mask"), is_causal=call.get("is_causal", False))
    return values.transpose(0, 1) if mha.batch_first else values


def _per_input(module: nn.Module, norms: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The input norms laid out like the weight (shape (out, in_per_group, *kernel)): each weight gets the norm of
    the input feature it multiplies."""
    if isinstance(module, nn.MultiheadAttention):  # rows: q, k and v projections in turn
        return torch.cat([n.expand(shape[0] // 3, -1) for n in norms])
    (norm,), groups = norms, getattr(module, "groups", 1)
    per_row = norm.view(groups, 1, -1).expand(-1, shape[0] // groups, -1).reshape(shape[0], -1)  # (out, in / groups)
    return per_row.view(*per_row.shape, *([1] * (len(shape) - 2))).expand(shape)


def wanda(layers: dict[str, nn.Module], model: nn.Module | None = None,
          batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, **_) -> dict[str, torch.Tensor]:
    """Wanda (Sun et al. 2024): |W_ij| * ||X_j||_2, the weight's magnitude times the L2 norm of the input feature it
    multiplies over calibration batches (a convolution's: its input channel over all positions), compared within
    each output row. The returned scores are ranks within the row scaled to (0, 1], so a layer's top-k keeps the same
    number in every row (to within one) and N:M groups choose as by the raw products."""
    if model is None or batches is None:
        raise SparsearchError("the wanda criterion needs the model and at least one calibration batch")
    norms = _input_norms(model, layers, batches)
    if not norms:
        raise SparsearchError("the wanda criterion got no batches")
    if idle := [n for n in layers if n not in norms]:
        raise SparsearchError(f"wanda: layers {idle[:4]} did not run in the eval-mode forward pass of the calibration "
                              "batches, so they have no input norms; exclude them")
    scores = {}
    for name, m in layers.items():
        w = layer_weight(m).detach()
        products = (w.abs() * _per_input(m, [n.sqrt() for n in norms[name]], w.shape).to(w.device)).reshape(w.shape[0], -1)
        order = torch.argsort(products, dim=1, descending=True, stable=True)  # ties: the lower index ranks first
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(products.shape[1]).expand_as(order))
        scores[name] = (1 - ranks.float() / products.shape[1]).view(w.shape)
    return scores


CRITERIA: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "magnitude": magnitude, "random": random, "lamp": lamp, "snip": snip, "wanda": wanda,
}
# criteria whose scores depend on data: they need the model and calibration batches
NEEDS_BATCHES = ("snip", "wanda")
