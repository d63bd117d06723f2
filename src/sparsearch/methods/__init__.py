"""Pruning and sparse-training recipes on the one training loop."""

from .hydra import STAGES, HydraResult, StageResult, density_map, run_hydra, stage_model, stage_parameters, train_stage

__all__ = ["STAGES", "HydraResult", "StageResult", "density_map", "run_hydra", "stage_model", "stage_parameters", "train_stage"]
