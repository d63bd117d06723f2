"""Masks on weights, as `torch.nn.utils.parametrize` parametrizations (`parametrizations.py`): selecting the
layers, attaching, updating, removing, squashing and checking them. The only place a mask is stored.

Three parametrizations:
- `Mask`: a fixed binary mask (buffer). The stored weight is kept exactly zero where the mask is zero, and
  `bind_optimizer` keeps it so through every optimiser step (gradients and optimiser state are masked too).
- `LearnedMask`: HYDRA / edge-popup scores. The forward pass keeps the top-k |scores| (straight-through
  gradient to the scores); the stored weight stays dense, because the chosen entries change while scores train.
- `DynamicNM`: SR-STE N:M masks, recomputed from |W| in every forward pass; the stored weight stays dense.

Each records its kind and density in the module's extra state, so masks save and load with the model's
state_dict and `check` can verify the exact counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..errors import SparsearchError
from .layers import _parametrization, is_maskable, layer_weight, masked_layers, masked_tensors, weight_name, weight_param
from .parametrizations import DynamicNM, LearnedMask, Mask, SparsityError, decode_extra, unit_density
from .select import NM, Channel, MaskKind, Unstructured, expected_kept, parse_kind

# ------------------------------------------------------------------------------- attach / update / remove

def attach(model: nn.Module, masks: dict[str, torch.Tensor], kind: MaskKind | dict[str, MaskKind] = Unstructured(),
           densities: dict[str, float] | None = None, tensor: str | None = None) -> None:
    """Register a fixed `Mask` on each named layer's `tensor` (default: its maskable one, `weight_name`) and zero
    the masked stored entries. `kind` is one for all layers, or one per layer (`layer_kinds`)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        name_of = tensor or weight_name(module)
        if _parametrization(module, name_of) is not None:
            raise SparsityError(f"layer '{name}' already has a mask; use update() or remove() first")
        target = getattr(module, name_of)
        if mask.shape != target.shape:
            raise SparsityError(f"mask for '{name}' has shape {tuple(mask.shape)}, {name_of} has {tuple(target.shape)}")
        density = (densities or {}).get(name)
        with torch.no_grad():
            target.mul_(mask.to(target.dtype))
        layer_kind = kind[name] if isinstance(kind, dict) else kind
        parametrize.register_parametrization(module, name_of, Mask(mask.to(target.device), layer_kind, density), unsafe=True)


def attach_channels(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    """Prune whole output channels: `keep` maps a conv/linear layer or a BatchNorm to a boolean per channel.
    Conv/linear weights get a channel mask; a BatchNorm gets masks on its scale and shift, so a pruned
    channel is exactly zero after it and can be removed from the network."""
    modules = dict(model.named_modules())
    for name, channels in keep.items():
        module = modules[name]
        if is_maskable(module):
            attach(model, {name: Channel().expand(channels, layer_weight(module).shape)}, Channel())
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            for tensor in ("weight", "bias"):
                attach(model, {name: channels}, Channel(), tensor=tensor)
        else:
            raise SparsityError(f"'{name}' is neither a conv/linear layer nor an affine BatchNorm; cannot prune its channels")


def attach_learned(model: nn.Module, densities: dict[str, float], kind: MaskKind = Unstructured()) -> None:
    """Register HYDRA score masks (scaled score initialisation from the current weights)."""
    modules = dict(model.named_modules())
    for name, density in densities.items():
        module = modules[name]
        if _parametrization(module) is not None:
            raise SparsityError(f"layer '{name}' already has a mask")
        tensor = weight_name(module)
        parametrize.register_parametrization(module, tensor, LearnedMask(getattr(module, tensor).detach(), density, kind),
                                             unsafe=True)


def attach_nm(model: nn.Module, layers: Iterable[str], kind: NM) -> None:
    """Register SR-STE N:M masks (recomputed from the weights every forward pass) on the named layers."""
    modules = dict(model.named_modules())
    for name in layers:
        module = modules[name]
        if _parametrization(module) is not None:
            raise SparsityError(f"layer '{name}' already has a mask")
        tensor = weight_name(module)
        try:
            kind.groups(getattr(module, tensor))
        except SparsearchError as exc:
            raise SparsityError(f"layer '{name}': {exc}; exclude it (sparsity.exclude / exclude=[...])") from None
        parametrize.register_parametrization(module, tensor, DynamicNM(getattr(module, tensor), kind), unsafe=True)


@torch.no_grad()
def update(model: nn.Module, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None,
           densities: dict[str, float] | None = None) -> None:
    """Replace fixed masks in place (pruning schedules, DST). Newly masked weights and their optimiser
    state are zeroed, so nothing stale can revive them; newly unmasked weights start at zero."""
    modules = dict(model.named_modules())
    for name, new in masks.items():
        p = _parametrization(modules[name])
        if not isinstance(p, Mask):
            raise SparsityError(f"layer '{name}' has no fixed mask to update")
        p.mask.copy_(new)
        p.density = (densities or {}).get(name, unit_density(new, p.kind))
    _enforce(model, optimizer)


@torch.no_grad()
def freeze(model: nn.Module) -> None:
    """Turn learned score masks into fixed masks at their current top-k (HYDRA: prune -> finetune).
    The parametrization is swapped in place: the stored weight and its optimiser entry stay the same."""
    for module in masked_layers(model).values():
        plist = module.parametrizations[weight_name(module)]
        for i, p in enumerate(plist):
            if isinstance(p, LearnedMask):
                mask = p.current()
                plist[i] = Mask(mask, p.kind, p.density)
                plist.original.mul_(mask.to(plist.original.dtype))


def track_dense_grads(model: nn.Module, sink: dict[str, torch.Tensor] | None) -> None:
    """While `sink` is a dict, every backward pass adds dL/d(masked weight) of each fixed-mask layer into it under
    the layer's name: the gradient a dense layer would have had, also where the mask is zero (RigL's regrowth
    signal). The stored weight's own gradient is masked. `None` stops tracking."""
    for name, module in masked_layers(model).items():
        if isinstance(p := _parametrization(module), Mask):
            p.grad_sink = None if sink is None else (sink, name)


def remove(model: nn.Module) -> None:
    """Remove every mask in place, leaving plain layers whose tensors hold the zeros."""
    for _, module, tensor, _ in masked_tensors(model):
        # torch deletes the property from the module's parametrized class, which a deep copy of the
        # model shares; a private copy of the class keeps other copies intact
        cls = module.__class__
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)


def squash(model: nn.Module) -> dict[str, torch.Tensor]:
    """A vanilla state_dict (masked entries as exact zeros, no mask entries) that an unmodified model loads."""
    state = model.state_dict()
    for name, module, tensor, _ in masked_tensors(model):
        owner = f"{name}." if name else ""  # the model itself may be the masked layer
        for key in [k for k in state if k.startswith(f"{owner}parametrizations.{tensor}.")]:
            del state[key]
        state[f"{owner}{tensor}"] = getattr(module, tensor).detach().clone()
    return state


def state_masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fixed masks among a masked model's state_dict entries (by key), for code that holds only the state."""
    return {k: v for k, v in state.items() if k.endswith(".mask")}


def load_masked_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state_dict saved from a masked model into a fresh (unmasked) model of the same architecture."""
    modules = dict(model.named_modules())
    for key in state:
        found = re.fullmatch(r"(?:(.*)\.)?parametrizations\.(\w+)\.0\.(mask|scores)", key)
        if found is None:
            continue
        name, tensor, what = found.groups()
        name = name or ""
        if _parametrization(modules[name], tensor) is None:
            extra = decode_extra(state.get(key.rsplit(".", 1)[0] + "._extra_state", {}))
            kind = parse_kind(extra.get("kind", "unstructured"))
            if what == "mask":
                attach(model, {name: state[key].bool()}, kind, tensor=tensor)
            else:
                attach_learned(model, {name: extra.get("density", 1.0)}, kind)
    model.load_state_dict(state)


# --------------------------------------------------------------------------------- the optimiser's side

def _fixed(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    return [(module.parametrizations[tensor].original, p.mask) for _, module, tensor, p in masked_tensors(model)
            if isinstance(p, Mask)]


@torch.no_grad()
def _enforce(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    for param, mask in _fixed(model):
        mask = mask.to(param.dtype)
        param.mul_(mask)
        if optimizer is not None:
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(mask)


def bind_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Keep masked entries exactly zero through every step: grads masked before, weights and state after.

    Returns the two hook handles (call `.remove()` on them to unbind).
    """
    def before(opt, args, kwargs):
        with torch.no_grad():
            for param, mask in _fixed(model):
                if param.grad is not None:
                    param.grad.mul_(mask.to(param.grad.dtype))

    def after(opt, args, kwargs):
        _enforce(model, opt)

    return optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)


# ------------------------------------------------------------------------------------------------ check

@torch.no_grad()
def check(model: nn.Module) -> list[str]:
    """Every violated invariant, as readable lines (empty when all hold)."""
    problems = []
    for name, module in masked_layers(model).items():
        p = _parametrization(module)
        mask = p.current()
        if isinstance(p, Mask):
            if not torch.all((p.mask == 0) | (p.mask == 1)):
                problems.append(f"{name}: mask is not binary")
            stored = weight_param(module)
            if torch.any(stored[~mask] != 0):
                problems.append(f"{name}: {int((stored[~mask] != 0).sum())} masked stored weights are non-zero")
        want = expected_kept(p.kind, p.density, mask.shape)
        if int(mask.sum()) != want:
            problems.append(f"{name}: keeps {int(mask.sum())} weights, expected {want} ({p.kind}, density {p.density:.4f})")
        kind = p.kind
        if isinstance(kind, NM):
            per_group = kind.groups(mask.to(torch.int64)).sum(1)
            if int(per_group.max()) > kind.n:
                problems.append(f"{name}: an N:M group has {int(per_group.max())} non-zeros (> {kind.n})")
    return problems
