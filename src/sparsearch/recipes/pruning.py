"""The recipes of the mask-from-scores methods: dense, static, one-shot (train, prune, finetune) and GMP."""

from __future__ import annotations

import itertools

from ..methods import GMP, OneShot
from ..sparsity.criteria import NEEDS_BATCHES
from ..train import StageResult
from .checks import gmp_schedule, unstructured
from .context import MethodContext
from .registry import LAYERS, MethodSpec, register


def dense(ctx: MethodContext) -> StageResult:
    """The baseline: the dense training itself (shared with the train-then-prune methods in comparisons)."""
    return ctx.pretrain()


def calibration(ctx: MethodContext) -> list | None:
    """The training batches a data-dependent criterion (SNIP, Wanda) scores on; None for the others."""
    s = ctx.cfg.sparsity
    return list(itertools.islice(ctx.train_loader.batches(), s.calibration_batches)) if s.criterion in NEEDS_BATCHES else None


def static(ctx: MethodContext) -> StageResult:
    return ctx.train(OneShot.from_config(ctx.cfg, calibration(ctx)), ctx.build())


def oneshot(ctx: MethodContext) -> StageResult:
    """Train dense, prune once to the target, finetune."""
    o = ctx.cfg.oneshot
    model = ctx.from_pretrained()
    return ctx.train(OneShot.from_config(ctx.cfg, calibration(ctx)), model, ctx.out_dir / "finetune",
                     ctx.stage_cfg(o.finetune_epochs, o.finetune_lr))


def gmp(ctx: MethodContext) -> StageResult:
    return ctx.train(GMP.from_config(ctx.cfg), ctx.build())


register(MethodSpec("dense", dense, "the dense baseline (train.*)", needs_target=False, reads=()))
register(MethodSpec("static", static, "sparse from initialisation with fixed masks: random (uniform / ER / ERK) or SNIP "
                    "scores (sparsity.criterion, sparsity.allocation)", needs_target=False, takes_ift=True,
                    reads=LAYERS + ("allocation", "criterion", "kind", "calibration_batches", "overrides")))
register(MethodSpec("oneshot", oneshot, "train dense, prune once by magnitude, LAMP or Wanda (layer-wise or global), "
                    "finetune", sections=("oneshot",), starts_from_dense=True,
                    reads=LAYERS + ("allocation", "criterion", "kind", "calibration_batches", "overrides")))
register(MethodSpec("gmp", gmp, "gradual magnitude pruning along Zhu & Gupta's cubic schedule, dense start",
                    sections=("gmp",), checks=(unstructured, gmp_schedule), reads=LAYERS + ("allocation", "criterion"),
                    takes_ift=True))
