"""`nn.MultiheadAttention` written out as the layers it is made of, so every engine can run it: the packed q/k/v
projection becomes one `nn.Linear` (which the per-layer engine can put on a sparse kernel, and which the ONNX
exporter takes, where it refuses torch's fused `_native_multi_head_attention`), then scaled dot-product attention,
then the output projection. `unpack_attention(net)` replaces every such module it can by `Attention`, the same
function, and turns torch's fused encoder fast path off while `net` runs, since that path reads the attention's
packed weights directly and would not see the replaced layers."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """The function of an `nn.MultiheadAttention` (eval mode) with its projections as plain layers: `in_proj` (E to
    3E: q, k and v in one product for self-attention; for cross-attention each input takes its third of it, three
    times the work of the one product it needs) and `out_proj`."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.batch_first = e, mha.num_heads, mha.batch_first
        self.in_proj = nn.Linear(e, 3 * e, bias=mha.in_proj_bias is not None)
        self.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, T, E) -> (B, H, T, E / H)
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, -1).transpose(1, 2)

    def _mask(self, attn_mask, key_padding_mask, is_causal: bool, b: int, t: int, s: int, like: torch.Tensor):
        """One additive mask (B or 1, H or 1, T, S) from MHA's masks (True / -inf: not attended), or None."""
        if attn_mask is None and is_causal:  # as nn.MultiheadAttention: is_causal is only a hint about attn_mask
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        total = None
        for mask, shape in ((attn_mask, (-1, self.num_heads, t, s) if attn_mask is not None and attn_mask.dim() == 3
                             else (1, 1, t, s)), (key_padding_mask, (b, 1, 1, s))):
            if mask is None:
                continue
            add = like.new_zeros(mask.shape).masked_fill(mask, -math.inf) if mask.dtype == torch.bool else mask.to(like.dtype)
            total = add.reshape(shape) if total is None else total + add.reshape(shape)
        return total

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e = self.embed_dim
        if query is key and key is value:
            q, k, v = self.in_proj(query).split(e, dim=-1)
        else:
            q = self.in_proj(query)[..., :e]
            k, v = self.in_proj(key)[..., e:].split(e, dim=-1) if key is value else \
                (self.in_proj(key)[..., e:2 * e], self.in_proj(value)[..., 2 * e:])
        (b, t, _), s = q.shape, k.shape[1]
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, b, t, s, q)
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.embed_dim // self.num_heads)
            attention = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = attention @ v
            weights = attention.mean(1) if average_attn_weights else attention
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out_proj(out.transpose(1, 2).reshape(b, t, e))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights


def _plain(mha: nn.MultiheadAttention) -> bool:
    """What `Attention` reproduces: one packed projection, no added key/value biases or zero attention."""
    return mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn


def _fast_path_off(net: nn.Module, args) -> None:
    net._fast_path_was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)


def _fast_path_back(net: nn.Module, args, output) -> None:
    torch.backends.mha.set_fastpath_enabled(net._fast_path_was)


def unpack_attention(net: nn.Module) -> nn.Module:
    """`net` (modified in place) with every plain `nn.MultiheadAttention` replaced by `Attention`. Where one was,
    torch's fused transformer fast path is off while `net` runs (hooks on it): that path reads the packed weights
    `Attention` replaced."""
    found = [(name, m) for name, m in net.named_modules()
             if name and isinstance(m, nn.MultiheadAttention) and _plain(m)]
    for name, mha in found:
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, Attention(mha).train(mha.training))
    if found:
        net.register_forward_pre_hook(_fast_path_off)
        net.register_forward_hook(_fast_path_back, always_call=True)
    return net
