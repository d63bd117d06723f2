"""Per-layer overrides (`sparsity.overrides`, a method's `overrides=`): another sparsity or mask kind for the layers
whose names match, the rest at the method's own. Each layer takes the first override one of whose globs matches
its name; an override that matches no layer is an error (a misspelt name would otherwise change nothing)."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

from ..config import LayerOverride
from ..errors import SparsearchError
from .select import NM, MaskKind, parse_kind


def parse_overrides(items: Iterable, who: str, allowed: tuple[str, ...] = ("sparsity", "kind")) -> tuple[LayerOverride, ...]:
    """`items` (LayerOverride objects or mappings with the same keys) checked: one clear error for the first bad one."""
    out = []
    for i, item in enumerate(items or ()):
        where = f"{who}: override {i}"
        try:
            o = item if isinstance(item, LayerOverride) else LayerOverride(**item)
        except TypeError as exc:  # not a mapping, or keys beyond layers / sparsity / kind
            raise SparsearchError(f"{where} ({item!r}) is not {{layers: [globs], sparsity: S, kind: K}} ({exc})") from None
        if isinstance(o.layers, str):
            o = dataclasses.replace(o, layers=[o.layers])
        if not o.layers or not all(isinstance(g, str) and g for g in o.layers):
            raise SparsearchError(f"{where}: layers must be a non-empty list of name globs, got {o.layers!r}")
        s = o.sparsity
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1):
            raise SparsearchError(f"{where}: sparsity must be a number in [0, 1), got {s!r}")
        if o.kind is not None:
            parse_kind(o.kind)
        changed = [k for k in ("sparsity", "kind") if getattr(o, k) is not None]
        if not changed:
            raise SparsearchError(f"{where} changes nothing: give it a sparsity or a kind")
        if refused := [k for k in changed if k not in allowed]:
            raise SparsearchError(f"{where}: {who} cannot override {' or '.join(refused)} per layer "
                                  f"({'it can override ' + ' and '.join(allowed) if allowed else 'it takes no overrides'})")
        out.append(o)
    return tuple(out)


def group_layers(names: Iterable[str], sparsity: float, kind: str, overrides: tuple[LayerOverride, ...]
                 ) -> list[tuple[float, MaskKind, list[str]]]:
    """The layers in groups that share a sparsity and a kind: (sparsity, kind, names), the method's own first."""
    groups: dict[int, list[str]] = {}
    for name in names:
        match = next((i for i, o in enumerate(overrides) if any(fnmatch.fnmatchcase(name, g) for g in o.layers)), -1)
        groups.setdefault(match, []).append(name)
    if unused := [o.layers for i, o in enumerate(overrides) if i not in groups]:
        raise SparsearchError(f"the overrides for layers {unused} match none of the masked layers "
                              f"({', '.join(list(names)[:8])}{', ...' if len(list(names)) > 8 else ''})")
    out = []
    for i in sorted(groups):
        o = overrides[i] if i >= 0 else LayerOverride()
        mask_kind = parse_kind(o.kind or kind)
        s = o.sparsity if o.sparsity is not None else (1 - mask_kind.density if o.kind and isinstance(mask_kind, NM) else sparsity)
        out.append((s, mask_kind, groups[i]))
    return out


def layer_kinds(names: Iterable[str], kind: str, overrides: tuple[LayerOverride, ...]) -> dict[str, MaskKind]:
    """Each layer's mask kind once the overrides apply."""
    return {n: k for _, k, group in group_layers(list(names), 0.0, kind, overrides) for n in group}
