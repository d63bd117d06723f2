"""The training loop, its checkpoints, schedules and metric sinks, and the run directory."""

from ..models import split_logits
from .callbacks import DropPathSchedule, SparsityCallback
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .metrics import MetricsLog, Reporter
from .precision import autocast
from .rundir import claim_run_dir, exclusive, prepare_run_dir
from .schedule import build_optimizer, lr_at, set_lr
from .sparse import sparse_kernels
from .stage import STAGES, StageKind, StageResult, fit, stage_model, stage_parameters, train_stage
from .steps import evaluate, resolve_device, save_final
from .trainer import Callback, Trainer

__all__ = [
    "Callback", "CheckpointError", "autocast", "DropPathSchedule", "MetricsLog", "Reporter", "STAGES", "SparsityCallback",
    "StageKind", "StageResult", "Trainer", "fit", "sparse_kernels", "stage_model", "stage_parameters", "train_stage",
    "build_optimizer", "claim_run_dir", "evaluate", "exclusive", "load_checkpoint", "lr_at",
    "prepare_run_dir", "resolve_device", "save_checkpoint", "save_final", "set_lr", "split_logits",
]
