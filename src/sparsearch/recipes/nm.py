"""The N:M recipe: SR-STE, or progressive mask decay, from scratch."""

from __future__ import annotations

from .. import sparsity as sp
from ..config import Config
from ..errors import ConfigError
from ..methods import SRSTE, MaskDecay
from ..train import StageResult
from .context import MethodContext
from .registry import LAYERS, MethodSpec, register


def nm(ctx: MethodContext) -> StageResult:
    method = SRSTE if ctx.cfg.nm.decay == "none" else MaskDecay
    return ctx.train(method.from_config(ctx.cfg), ctx.build())


def _check(cfg: Config) -> None:
    kind = sp.parse_kind(cfg.sparsity.kind)
    if not isinstance(kind, sp.NM):
        raise ConfigError(f"sparsity.method nm needs sparsity.kind nm:N:M (e.g. nm:2:4), got '{cfg.sparsity.kind}'")
    if abs(cfg.sparsity.sparsity - (1 - kind.density)) > 1e-9:
        raise ConfigError(f"{kind} fixes sparsity at {1 - kind.density:g}; got sparsity.sparsity {cfg.sparsity.sparsity:g}")


register(MethodSpec("nm", nm, "N:M from scratch (sparsity.kind nm:N:M): SR-STE, or progressive mask decay (nm.decay)",
                    sections=("nm",), checks=(_check,), reads=LAYERS + ("kind",)))
