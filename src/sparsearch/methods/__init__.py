"""Pruning and sparse-training methods. Each per-step method is one object (`SparseMethod`) that a user's loop
or the Trainer drives; a recipe is a function of a `MethodContext` that trains (one or more resumable stages)
with those objects and returns the final stage; `METHODS` maps `sparsity.method` to its recipe."""

from typing import Callable

from .base import MethodCallback, SparseMethod
from .checks import check_config, preflight
from .dst import SET, GraNet, RigL, granet, rigl, set_
from .hydra import STAGES, HydraResult, density_map, hydra, run_hydra, stage_model, stage_parameters, train_stage
from .imp import imp, level_densities
from .maskspar import maskspar
from .nm import SRSTE, MaskDecay, NMMethod, nm
from .pruning import GMP, OneShot, Static, dense, gmp, oneshot, static
from .schedules import Constant, CosineDecay, Cubic, FlowDecay, Periodic
from .soup import phase_densities, soup
from .stage import MethodContext, StageResult, fit

METHODS: dict[str, Callable[[MethodContext], StageResult]] = {
    "dense": dense, "static": static, "oneshot": oneshot, "gmp": gmp, "hydra": hydra, "maskspar": maskspar,
    "set": set_, "rigl": rigl, "granet": granet, "nm": nm, "imp": imp, "soup": soup,
}
# methods that start from the dense training at `MethodContext.pretrain_dir` (shared between them when set)
STARTS_FROM_DENSE = {"oneshot", "hydra", "maskspar"}

__all__ = [
    "GMP", "METHODS", "SET", "SRSTE", "STAGES", "STARTS_FROM_DENSE", "Constant", "CosineDecay", "Cubic", "FlowDecay",
    "GraNet", "HydraResult", "MaskDecay", "MethodCallback", "MethodContext", "NMMethod", "OneShot", "Periodic", "RigL",
    "SparseMethod", "StageResult", "Static", "check_config", "density_map", "fit", "level_densities",
    "phase_densities", "preflight", "run_hydra", "stage_model", "stage_parameters", "train_stage",
]
