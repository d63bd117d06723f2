"""Pruning and sparse-training methods. Each per-step method is one object (`SparseMethod`) that a user's loop
or the Trainer drives; a recipe is a function of a `MethodContext` that trains (one or more resumable stages)
with those objects and returns the final stage; `METHODS` maps `sparsity.method` to its recipe."""

from .base import MethodCallback, SparseMethod
from .checks import check_config, preflight
from .dst import SET, GraNet, RigL
from .hydra import STAGES, Hydra, HydraResult, density_map, run_hydra, stage_model, stage_parameters, train_stage
from .imp import IMP, level_densities
from .maskspar import MaskSparsity
from .nm import SRSTE, MaskDecay, NMMethod
from .pruning import GMP, OneShot, Static
from .registry import METHODS, REGISTRY, MethodSpec, register
from .schedules import Constant, CosineDecay, Cubic, FlowDecay, Periodic
from .soup import soup_data  # importing a method's module registers its recipe
from .souping import SparseSoup, average, greedy_soup, phase_densities, prune_globally, recalibrate_batchnorm
from .stage import MethodContext, StageResult, fit

__all__ = [
    "Constant", "CosineDecay", "Cubic", "FlowDecay", "GMP", "GraNet", "Hydra", "HydraResult", "IMP", "METHODS",
    "MaskDecay", "MaskSparsity", "MethodSpec", "REGISTRY", "MethodCallback", "MethodContext", "NMMethod", "OneShot", "Periodic", "RigL",
    "SET", "SRSTE", "STAGES", "SparseMethod", "SparseSoup", "StageResult", "Static", "average",
    "check_config", "density_map", "fit", "greedy_soup", "level_densities", "phase_densities", "preflight",
    "prune_globally", "recalibrate_batchnorm", "register", "soup_data", "run_hydra", "stage_model", "stage_parameters", "train_stage",
]
