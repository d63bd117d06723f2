"""Pruning and sparse-training methods as the objects a user's loop or the Trainer drives. A per-step method
(`SparseMethod`) acts before the forward pass and between backward and the optimizer step; a multi-run method (IMP,
sparse soups) is a driver around a user's `train(model, ...)`. The CLI's recipes, built from these objects, are in
`sparsearch.recipes`."""

from .base import MethodCallback, SparseMethod
from .dst import SET, GraNet, RigL
from .hydra import Hydra, density_map
from .imp import IMP, level_densities
from .maskspar import MaskSparsity
from .nm import SRSTE, MaskDecay, NMMethod
from .pruning import GMP, OneShot, Static
from .schedules import Constant, CosineDecay, Cubic, FlowDecay, Periodic
from .soup import SparseSoup, average, greedy_soup, phase_densities, prune_globally, recalibrate_batchnorm

__all__ = [
    "Constant", "CosineDecay", "Cubic", "FlowDecay", "GMP", "GraNet", "Hydra", "IMP", "MaskDecay", "MaskSparsity",
    "MethodCallback", "NMMethod", "OneShot", "Periodic", "RigL", "SET", "SRSTE", "SparseMethod", "SparseSoup", "Static",
    "average", "density_map", "greedy_soup", "level_densities", "phase_densities", "prune_globally",
    "recalibrate_batchnorm",
]
