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

import fnmatch
import re
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .parametrizations import DynamicNM, LearnedMask, Mask, SparsityError, decode_extra, unit_density
from .select import NM, Channel, MaskKind, Unstructured, expected_kept, parse_kind

MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


# ------------------------------------------------------------------------------------------ selection

def _parametrization(module: nn.Module, tensor: str = "weight") -> Mask | LearnedMask | DynamicNM | None:
    if parametrize.is_parametrized(module, tensor):
        for p in module.parametrizations[tensor]:
            if isinstance(p, (Mask, LearnedMask, DynamicNM)):
                return p
    return None


def masked_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, Mask | LearnedMask]]:
    """(module name, module, tensor name, mask) for every masked tensor: conv/linear weights, and the BatchNorm
    affine parameters of pruned channels (`attach_channels`)."""
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor in module.parametrizations:
                if (p := _parametrization(module, tensor)) is not None:
                    out.append((name, module, tensor, p))
    return out


def find_layers(model: nn.Module, include: Iterable[str] = ("*",), exclude: Iterable[str] = (),
                dense_first_last: bool = True) -> dict[str, nn.Module]:
    """Conv1d/Conv2d/Linear layers by fully-qualified-name globs, in registration order.

    By the field's convention the first convolution and the last Linear (the classifier) stay dense
    unless `dense_first_last=False`.
    """
    found = {name: m for name, m in model.named_modules() if isinstance(m, MASKABLE)}
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
    """Conv/linear layers with a masked weight: what sparsity is measured, checked and reported over."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MASKABLE) and _parametrization(m) is not None}


def weight_param(module: nn.Module) -> nn.Parameter:
    """The stored (leaf) weight: the parametrization's `original` when masked, else `weight`."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


# ------------------------------------------------------------------------------- attach / update / remove

def attach(model: nn.Module, masks: dict[str, torch.Tensor], kind: MaskKind = Unstructured(),
           densities: dict[str, float] | None = None, tensor: str = "weight") -> None:
    """Register a fixed `Mask` on each named layer's `tensor` and zero the masked stored entries."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        if _parametrization(module, tensor) is not None:
            raise SparsityError(f"layer '{name}' already has a mask; use update() or remove() first")
        target = getattr(module, tensor)
        if mask.shape != target.shape:
            raise SparsityError(f"mask for '{name}' has shape {tuple(mask.shape)}, {tensor} has {tuple(target.shape)}")
        density = (densities or {}).get(name)
        with torch.no_grad():
            target.mul_(mask.to(target.dtype))
        parametrize.register_parametrization(module, tensor, Mask(mask.to(target.device), kind, density), unsafe=True)


def attach_channels(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    """Prune whole output channels: `keep` maps a conv/linear layer or a BatchNorm to a boolean per channel.
    Conv/linear weights get a channel mask; a BatchNorm gets masks on its scale and shift, so a pruned
    channel is exactly zero after it and can be removed from the network."""
    modules = dict(model.named_modules())
    for name, channels in keep.items():
        module = modules[name]
        if isinstance(module, MASKABLE):
            attach(model, {name: Channel().expand(channels, module.weight.shape)}, Channel())
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
        parametrize.register_parametrization(module, "weight", LearnedMask(module.weight.detach(), density, kind),
                                             unsafe=True)


def attach_nm(model: nn.Module, layers: Iterable[str], kind: NM) -> None:
    """Register SR-STE N:M masks (recomputed from the weights every forward pass) on the named layers."""
    modules = dict(model.named_modules())
    for name in layers:
        module = modules[name]
        if _parametrization(module) is not None:
            raise SparsityError(f"layer '{name}' already has a mask")
        kind.groups(module.weight)  # fails with a clear message when the input dimension does not divide by M
        parametrize.register_parametrization(module, "weight", DynamicNM(module.weight, kind), unsafe=True)


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
        plist = module.parametrizations.weight
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
        prefix = f"{name}.parametrizations.{tensor}."
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]
        state[f"{name}.{tensor}"] = getattr(module, tensor).detach().clone()
    return state


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: _parametrization(m).current() for name, m in masked_layers(model).items()}


def mask_parametrization(module: nn.Module, tensor: str = "weight") -> Mask | LearnedMask | DynamicNM | None:
    """The mask object on `module`'s `tensor` (a fixed `Mask`, a `LearnedMask` or a `DynamicNM`), or None."""
    return _parametrization(module, tensor)


def current_mask(module: nn.Module, tensor: str = "weight") -> torch.Tensor:
    """The mask (bool) a masked layer applies to `tensor` now, whatever kind of mask it is."""
    return _parametrization(module, tensor).current()


def state_masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fixed masks among a masked model's state_dict entries (by key), for code that holds only the state."""
    return {k: v for k, v in state.items() if k.endswith(".mask")}


def owns_parameters(module: nn.Module) -> bool:
    """A layer whose parameters are its own: no children besides the masks of its parametrized tensors."""
    return all(name == "parametrizations" for name, _ in module.named_children())


def load_masked_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state_dict saved from a masked model into a fresh (unmasked) model of the same architecture."""
    modules = dict(model.named_modules())
    for key in state:
        found = re.fullmatch(r"(.*)\.parametrizations\.(\w+)\.0\.(mask|scores)", key)
        if found is None:
            continue
        name, tensor, what = found.groups()
        if _parametrization(modules[name], tensor) is None:
            extra = decode_extra(state.get(f"{name}.parametrizations.{tensor}.0._extra_state", {}))
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
