"""Which tensors can carry a mask and which do: the layer vocabulary every other part of `sparsity` speaks.

A maskable layer is a Conv1d, Conv2d or Linear (its `weight`) or an `nn.MultiheadAttention` with packed input
projections (its `in_proj_weight`, the q, k and v projections stacked: three quarters of the block's attention
weights; its output projection is a Linear of its own). Each layer has one maskable tensor, `weight_name(layer)`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .parametrizations import DynamicNM, LearnedMask, Mask, SparsityError

MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.MultiheadAttention)


def weight_name(module: nn.Module) -> str:
    """The name of the tensor a layer's mask is on."""
    return "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The layer's maskable tensor as its forward pass sees it (masked where a mask is attached)."""
    return getattr(module, weight_name(module))


def is_maskable(module: nn.Module) -> bool:
    # an attention block with separate q / k / v weights (kdim or vdim differ) has no packed tensor to mask
    return isinstance(module, MASKABLE) and (not isinstance(module, nn.MultiheadAttention)
                                             or module._qkv_same_embed_dim)


MHA_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
                 "is_causal")


def attention_call(args: tuple, kwargs: dict) -> dict:
    """An nn.MultiheadAttention call's arguments by name (a hook sees them positional or by keyword)."""
    return {**dict(zip(MHA_ARGUMENTS, args)), **kwargs}


def _parametrization(module: nn.Module, tensor: str | None = None) -> Mask | LearnedMask | DynamicNM | None:
    tensor = tensor or weight_name(module)
    if parametrize.is_parametrized(module, tensor):
        for p in module.parametrizations[tensor]:
            if isinstance(p, (Mask, LearnedMask, DynamicNM)):
                return p
    return None


def masked_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, Mask | LearnedMask]]:
    """(module name, module, tensor name, mask) for every masked tensor: conv/linear/attention weights, and the
    BatchNorm affine parameters of pruned channels (`attach_channels`)."""
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor in module.parametrizations:
                if (p := _parametrization(module, tensor)) is not None:
                    out.append((name, module, tensor, p))
    return out


def find_layers(model: nn.Module, include: Iterable[str] = ("*",), exclude: Iterable[str] = (),
                dense_first_last: bool = True) -> dict[str, nn.Module]:
    """Maskable layers by fully-qualified-name globs, in registration order.

    By the field's convention the first convolution and the last Linear (the classifier) stay dense
    unless `dense_first_last=False`.
    """
    found = {name: m for name, m in model.named_modules() if is_maskable(m)}
    if dense_first_last and found:
        first_conv = next((n for n, m in found.items() if isinstance(m, (nn.Conv1d, nn.Conv2d))), None)
        last_linear = next((n for n, m in reversed(found.items()) if isinstance(m, nn.Linear)), None)
        found = {n: m for n, m in found.items() if n not in (first_conv, last_linear)}
    include, exclude = list(include), list(exclude)
    chosen = {n: m for n, m in found.items()
              if any(fnmatch.fnmatchcase(n, g) for g in include) and not any(fnmatch.fnmatchcase(n, g) for g in exclude)}
    if not chosen:
        raise SparsityError(f"no maskable layers match include={include} exclude={exclude}")
    return chosen


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers with a masked weight: what sparsity is measured, checked and reported over."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MASKABLE) and _parametrization(m) is not None}


def weight_param(module: nn.Module) -> nn.Parameter:
    """The stored (leaf) weight: the parametrization's `original` when masked, else the plain parameter."""
    name = weight_name(module)
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def mask_parametrization(module: nn.Module, tensor: str | None = None) -> Mask | LearnedMask | DynamicNM | None:
    """The mask object on `module`'s `tensor` (default: its maskable one), or None."""
    return _parametrization(module, tensor)


def current_mask(module: nn.Module, tensor: str | None = None) -> torch.Tensor:
    """The mask (bool) a masked layer applies to `tensor` now, whatever kind of mask it is."""
    return _parametrization(module, tensor).current()


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: _parametrization(m).current() for name, m in masked_layers(model).items()}


def owns_parameters(module: nn.Module) -> bool:
    """A layer whose parameters are its own: no children besides the masks of its parametrized tensors."""
    return all(name == "parametrizations" for name, _ in module.named_children())
