"""Value ranges of the config, checked when a config is read, so no command starts (or writes anything) on a
value that cannot work. Types are checked while reading (`loading.py`); what depends on the model or the data
(mask kinds on real layers, batches against the dataset size) is checked by the commands before they write."""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from ..errors import ConfigError
from .schema import Config

# a run name is one folder under out_dir: no separators, nothing that climbs out of it
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
MAX_NAME = 200  # a folder name may have 255 bytes; room for the suffixes the stages add
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?|mps")


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or v >= low), f">= {low:g}"


POSITIVE = ((lambda v: v is None or v > 0), "> 0")
FRACTION = ((lambda v: 0 <= v < 1), "in [0, 1)")
OPEN_FRACTION = ((lambda v: 0 < v < 1), "in (0, 1)")
UNIT = ((lambda v: 0 <= v <= 1), "in [0, 1]")
COUNT, NONNEGATIVE = _at_least(1), _at_least(0)
SEED = ((lambda v: 0 <= v < 2**32), "in [0, 2**32)")  # numpy's and torch's seeding take 32 bits


def machine_cores() -> int:
    """The one bound on every thread and worker count: the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_threads(value: int | None, what: str) -> None:
    ok, must = THREADS
    if not ok(value):
        raise ConfigError(f"{what} must be {must}, got {value}")


THREADS = ((lambda v: v is None or 1 <= v <= machine_cores()), f"in [1, {machine_cores()}] (this machine's cores)")

# (dotted key, (predicate, what it must be)); a list value is checked item by item; None passes (optional values)
RULES: list[tuple[str, tuple[Callable[[Any], bool], str]]] = [
    ("seed", SEED),
    ("data.batch_size", COUNT), ("data.eval_batch_size", COUNT), ("data.crop_padding", NONNEGATIVE),
    ("data.train_subset", COUNT), ("data.image_size", COUNT),
    ("train.epochs", COUNT), ("train.lr", POSITIVE), ("train.momentum", FRACTION),
    ("train.weight_decay", NONNEGATIVE), ("train.warmup_epochs", NONNEGATIVE), ("train.min_lr", NONNEGATIVE),
    ("train.step_milestones", UNIT), ("train.step_gamma", POSITIVE), ("train.grad_clip", POSITIVE),
    ("train.label_smoothing", FRACTION), ("train.aux_weight", NONNEGATIVE), ("train.drop_path", FRACTION),
    ("train.threads", THREADS), ("train.log_every", NONNEGATIVE), ("train.eval_every", NONNEGATIVE),
    ("train.checkpoint_every", NONNEGATIVE),
    ("sparsity.sparsity", FRACTION), ("sparsity.calibration_batches", COUNT),
    ("ift.sparsity", ((lambda v: v is None or 0 < v < 1), "in (0, 1)")),
    ("hydra.prune_epochs", COUNT), ("hydra.finetune_epochs", COUNT), ("hydra.score_lr", POSITIVE),
    ("hydra.finetune_lr", POSITIVE),
    ("oneshot.finetune_epochs", COUNT), ("oneshot.finetune_lr", POSITIVE),
    ("gmp.initial_sparsity", FRACTION), ("gmp.start", UNIT), ("gmp.end", UNIT), ("gmp.frequency", COUNT),
    ("dst.update_every", COUNT), ("dst.drop_fraction", UNIT), ("dst.end", UNIT),
    ("imp.prune_fraction", OPEN_FRACTION), ("imp.rewind_step", NONNEGATIVE),
    ("soup.phases", COUNT), ("soup.ingredients", COUNT), ("soup.retrain_epochs", COUNT), ("soup.retrain_lr", POSITIVE),
    ("soup.val_fraction", OPEN_FRACTION), ("soup.bn_batches", COUNT), ("soup.weight_decays", NONNEGATIVE),
    ("nm.lambda_w", NONNEGATIVE), ("nm.decay_rate", POSITIVE), ("nm.decay_hard_fraction", FRACTION),
    ("maskspar.reg", NONNEGATIVE), ("maskspar.reg_epochs", COUNT), ("maskspar.finetune_epochs", COUNT),
    ("maskspar.finetune_lr", POSITIVE),
    ("search.sparsity", FRACTION), ("search.channels", COUNT), ("search.layers", COUNT),
    ("search.portion", OPEN_FRACTION), ("search.batch_size", COUNT), ("search.arch_lr", POSITIVE),
    ("search.arch_weight_decay", NONNEGATIVE), ("search.pretrain_epochs", NONNEGATIVE),
    ("search.prune_epochs", NONNEGATIVE), ("search.finetune_epochs", NONNEGATIVE), ("search.weight_lr", POSITIVE),
    ("search.score_lr", POSITIVE), ("search.min_lr", NONNEGATIVE), ("search.momentum", FRACTION),
    ("search.weight_decay", NONNEGATIVE), ("search.grad_clip", POSITIVE), ("search.random_samples", COUNT),
    ("search.random_epochs", COUNT),
    ("run.sparsities", OPEN_FRACTION), ("run.workers", COUNT), ("run.retries", NONNEGATIVE),
    ("compare.sparsities", OPEN_FRACTION), ("compare.seeds", SEED), ("run.search_seeds", SEED),
]


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def check_ranges(cfg: Config) -> None:
    """Raise a `ConfigError` naming the first key whose value is out of range."""
    if not RUN_NAME.fullmatch(cfg.name) or cfg.name.strip(".") == "" or len(cfg.name) > MAX_NAME:
        raise ConfigError(f"config key 'name' must be a plain folder name (letters, digits, . _ + = -, no '/', "
                          f"at most {MAX_NAME} characters), got {cfg.name[:80]!r}{'...' if len(cfg.name) > 80 else ''}")
    if not DEVICE.fullmatch(cfg.train.device):
        raise ConfigError(f"config key 'train.device' must be auto, cpu, cuda or cuda:N, got {cfg.train.device!r}")
    for key, (ok, must) in RULES:
        value = _get(cfg, key)
        for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            if not ok(item):
                where = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"config key '{where}' must be {must}, got {item!r}")
    if cfg.run.executor != "ray" or not cfg.run.ray_address:  # a Ray cluster has cores beyond this machine's
        check_threads(cfg.run.workers, "config key 'run.workers'")
    t = cfg.train
    on_cpu = t.device == "cpu" or (t.device == "auto" and not _cuda())
    if t.amp and t.amp_dtype == "float16" and on_cpu:
        raise ConfigError("config key 'train.amp_dtype' float16 needs CUDA (a gradient scaler on a GPU); "
                          "use bfloat16 on the CPU")
    s = cfg.search
    if s.pretrain_epochs + s.prune_epochs + s.finetune_epochs < 1:
        raise ConfigError("search.pretrain_epochs + prune_epochs + finetune_epochs must be >= 1")
    if cfg.train.warmup_epochs > cfg.train.epochs:
        raise ConfigError(f"config key 'train.warmup_epochs' ({cfg.train.warmup_epochs:g}) must not exceed "
                          f"train.epochs ({cfg.train.epochs})")


def _cuda() -> bool:
    import torch  # here: reading a config needs torch only for this question

    return torch.cuda.is_available()
