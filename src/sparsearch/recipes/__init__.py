"""The recipes the CLI runs: `METHODS[name](ctx) -> StageResult`, one module per method family, each a function of a
`MethodContext` that trains one or more resumable stages with the method objects of `sparsearch.methods`. The
registry (`registry.py`) holds each recipe with its summary, config sections and checks (`checks.py`); importing
this package registers them all."""

from . import dst, hydra, imp, maskspar, nm, pruning, soup  # noqa: F401 - each registers its recipes
from .checks import check_config, preflight
from .context import MethodContext
from .hydra import HydraResult, run_hydra
from .registry import METHODS, REGISTRY, MethodSpec, describe, register, sections_used
from .soup import soup_data

__all__ = ["METHODS", "REGISTRY", "HydraResult", "MethodContext", "MethodSpec", "check_config", "describe", "preflight",
           "register", "run_hydra", "sections_used", "soup_data"]
