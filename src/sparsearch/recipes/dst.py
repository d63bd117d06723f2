"""The recipes of the dynamic sparse training methods: one stage each, the method's topology updates inside it."""

from __future__ import annotations

from ..methods import SET, GraNet, RigL
from ..train import StageResult
from .checks import gmp_schedule, unstructured
from .context import MethodContext
from .registry import LAYERS, MethodSpec, register


def _train(cls):
    def recipe(ctx: MethodContext) -> StageResult:
        return ctx.train(cls.from_config(ctx.cfg), ctx.build())

    recipe.__doc__ = cls.__doc__
    return recipe


set_, rigl, granet = _train(SET), _train(RigL), _train(GraNet)

register(MethodSpec("set", set_, "SET: random sparse start, magnitude drop, random regrowth", sections=("dst",),
                    checks=(unstructured,), takes_ift=True, reads=LAYERS + ("allocation", "overrides")))
register(MethodSpec("rigl", rigl, "RigL: random sparse start, magnitude drop, regrowth by dense gradient, cosine decay",
                    sections=("dst",), checks=(unstructured,), takes_ift=True, reads=LAYERS + ("allocation", "overrides")))
register(MethodSpec("granet", granet, "GraNet: gradual magnitude pruning from a denser start with RigL regrowth",
                    sections=("dst", "gmp"), checks=(unstructured, gmp_schedule),
                    reads=LAYERS + ("allocation", "criterion"), takes_ift=True))
