"""Pruning and sparse-training recipes on the one training loop. A method is a function of a `MethodContext`
that trains (one or more resumable stages) and returns the final stage; `METHODS` maps `sparsity.method` to it."""

from typing import Callable

from .checks import check_config, preflight
from .dst import DynamicSparsity, granet, rigl, set_
from .hydra import STAGES, HydraResult, density_map, hydra, run_hydra, stage_model, stage_parameters, train_stage
from .imp import imp, level_densities
from .maskspar import maskspar
from .nm import MaskDecay, SparseRefined, flow_factor, nm
from .pruning import GradualMagnitudePruning, cubic_sparsity, dense, gmp, oneshot, static
from .soup import phase_densities, soup
from .stage import MethodContext, StageResult, fit

METHODS: dict[str, Callable[[MethodContext], StageResult]] = {
    "dense": dense, "static": static, "oneshot": oneshot, "gmp": gmp, "hydra": hydra, "maskspar": maskspar,
    "set": set_, "rigl": rigl, "granet": granet, "nm": nm, "imp": imp, "soup": soup,
}
# methods that start from the dense training at `MethodContext.pretrain_dir` (shared between them when set)
STARTS_FROM_DENSE = {"oneshot", "hydra", "maskspar"}

__all__ = [
    "METHODS", "STAGES", "STARTS_FROM_DENSE", "DynamicSparsity", "GradualMagnitudePruning", "HydraResult", "MaskDecay", "MethodContext",
    "SparseRefined", "StageResult", "check_config", "cubic_sparsity", "density_map", "fit", "flow_factor",
    "level_densities", "phase_densities", "preflight", "run_hydra", "stage_model", "stage_parameters", "train_stage",
]
