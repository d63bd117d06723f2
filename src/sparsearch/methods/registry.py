"""The method registry. Each method module registers its recipe with a one-line summary, the config sections it
reads beyond data, model, train and sparsity, and the checks its settings must pass; `check_config`, the CLI
(`sparsearch methods`, `sparsearch train --method M --help`), `compare` and the written config.yaml read it.
Adding a method is one module that calls `register`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..config import Config
    from .stage import MethodContext, StageResult

BASE_SECTIONS = ("data", "model", "train", "sparsity")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    recipe: Callable[[MethodContext], StageResult]
    summary: str  # one line, for `sparsearch methods`
    sections: tuple[str, ...] = ()  # config sections it reads beyond BASE_SECTIONS
    checks: tuple[Callable[[Config], None], ...] = ()  # each raises SparsearchError with a one-line reason
    starts_from_dense: bool = False  # starts from the dense training (shared between such methods in a compare)
    needs_target: bool = True  # sparsity.sparsity must lie in (0, 1)


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec
