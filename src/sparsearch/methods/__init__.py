"""Pruning and sparse-training methods. Each per-step method is one object (`SparseMethod`) that a user's loop
or the Trainer drives; a recipe is a function of a `MethodContext` that trains (one or more resumable stages)
with those objects and returns the final stage; `METHODS` maps `sparsity.method` to its recipe."""

from typing import Callable

from .base import MethodCallback, SparseMethod
from .checks import check_config, preflight
from .dst import SET, GraNet, RigL, granet, rigl, set_
from .hydra import STAGES, Hydra, HydraResult, density_map, hydra, run_hydra, stage_model, stage_parameters, train_stage
from .imp import IMP, imp, level_densities
from .maskspar import MaskSparsity, maskspar
from .nm import SRSTE, MaskDecay, NMMethod, nm
from .pruning import GMP, OneShot, Static, dense, gmp, oneshot, static
from .schedules import Constant, CosineDecay, Cubic, FlowDecay, Periodic
from .soup import soup
from .souping import SparseSoup, average, greedy_soup, phase_densities, prune_globally, recalibrate_batchnorm
from .stage import MethodContext, StageResult, fit

METHODS: dict[str, Callable[[MethodContext], StageResult]] = {
    "dense": dense, "static": static, "oneshot": oneshot, "gmp": gmp, "hydra": hydra, "maskspar": maskspar,
    "set": set_, "rigl": rigl, "granet": granet, "nm": nm, "imp": imp, "soup": soup,
}
# methods that start from the dense training at `MethodContext.pretrain_dir` (shared between them when set)
STARTS_FROM_DENSE = {"oneshot", "hydra", "maskspar"}

__all__ = [
    "Constant", "CosineDecay", "Cubic", "FlowDecay", "GMP", "GraNet", "Hydra", "HydraResult", "IMP", "METHODS",
    "MaskDecay", "MaskSparsity", "MethodCallback", "MethodContext", "NMMethod", "OneShot", "Periodic", "RigL",
    "SET", "SRSTE", "STAGES", "STARTS_FROM_DENSE", "SparseMethod", "SparseSoup", "StageResult", "Static", "average",
    "check_config", "density_map", "fit", "greedy_soup", "level_densities", "phase_densities", "preflight",
    "prune_globally", "recalibrate_batchnorm", "run_hydra", "stage_model", "stage_parameters", "train_stage",
]
