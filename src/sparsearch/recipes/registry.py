"""The recipe registry. Each recipe module registers its recipe with a one-line summary, the config sections it
reads beyond data, model, train and sparsity, and the checks its settings must pass; `check_config`, the CLI
(`sparsearch methods`, `sparsearch train --method M --help`), `compare` and the written config.yaml read it.
Adding a method is one module that calls `register`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from ..config import Config
from ..train import StageResult

Recipe = Callable[[Any], StageResult]  # a function of a `MethodContext` (context.py, which imports this module)

BASE_SECTIONS = ("data", "model", "train", "sparsity")
LAYERS = ("sparsity", "include", "exclude", "dense_first_last")  # the target and the layers it applies to


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    recipe: Recipe
    summary: str  # one line, for `sparsearch methods`
    sections: tuple[str, ...] = ()  # config sections it reads beyond BASE_SECTIONS
    checks: tuple[Callable[[Config], None], ...] = ()  # each raises ConfigError with a one-line reason
    starts_from_dense: bool = False  # starts from the dense training (shared between such methods in a compare)
    needs_target: bool = True  # sparsity.sparsity must lie in (0, 1)
    takes_ift: bool = False  # trains from scratch, so it can train a Sparse-IFT network (`ift.family`)
    reads: tuple[str, ...] = LAYERS + ("allocation",)  # the sparsity.* settings it reads


REGISTRY: dict[str, MethodSpec] = {}


class _Recipes(Mapping):
    """`METHODS[name]`: the recipe of the registered method `name`, methods registered later included."""

    def __getitem__(self, name: str) -> Recipe:
        return REGISTRY[name].recipe

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


METHODS = _Recipes()


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec


def sections_used(methods: list[str], *extra: str) -> tuple[str, ...]:
    """The config sections a run of `methods` reads (what its config.yaml holds)."""
    used = [*BASE_SECTIONS, *extra]
    for name in methods:
        used += [s for s in REGISTRY[name].sections if s not in used] if name in REGISTRY else []
    return tuple(dict.fromkeys(used))


def describe(name: str) -> str:
    """`sparsearch train --method NAME --help`: the summary, then every option the method reads, with its
    default and help."""
    spec, cfg = REGISTRY[name], Config()
    rows = []
    for section in ("sparsity", *spec.sections):
        for f in dataclasses.fields(getattr(cfg, section)):
            if section != "sparsity" or f.name in spec.reads:
                rows.append((f"{section}.{f.name}={getattr(getattr(cfg, section), f.name)!r}", f.metadata.get("help", "")))
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join([f"{name}: {spec.summary}", "", "its settings (--set KEY=VALUE; defaults shown):",
                      *(f"  {key:<{width}}  {text}".rstrip() for key, text in rows),
                      "  train.*, data.*, model.*: as for every method (`sparsearch config` prints them all)"])
