"""The schedules methods share, each a small frozen object that is a pure function of the step, so resuming
needs nothing but the step count.

    Cubic     Zhu & Gupta's sparsity ramp and the steps it updates at (GMP, GraNet)
    Periodic  topology updates every `every` steps until `end` of training (SET, RigL, GraNet)
    Constant, CosineDecay   the fraction a topology update drops (SET: constant; RigL: cosine)
    FlowDecay how much of the pruned weights an N:M mask lets through (progressive gradient flow)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal


@dataclasses.dataclass(frozen=True)
class Cubic:
    """s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3 between `start` and `end` (fractions of training), held at
    s_i = `initial` before and at the target after; updates every `every` steps, the last landing on `end`."""

    initial: float = 0.0
    start: float = 0.0
    end: float = 0.75
    every: int = 100

    def __post_init__(self):
        if not 0 <= self.start <= self.end <= 1 or self.every < 1 or not 0 <= self.initial < 1:
            raise ValueError(f"Cubic needs 0 <= start <= end <= 1, every >= 1 and 0 <= initial < 1; got {self}")

    def at(self, step: int, total_steps: int, target: float) -> float:
        t0, t_end = round(self.start * total_steps), round(self.end * total_steps)
        if step < t0:
            return self.initial
        if step >= t_end or t_end <= t0:
            return target
        return target + (self.initial - target) * (1 - (step - t0) / (t_end - t0)) ** 3

    @functools.lru_cache(maxsize=8)  # asked at every step; a pure function of the total
    def update_steps(self, total_steps: int) -> tuple[int, ...]:
        t0, t_end = round(self.start * total_steps), round(self.end * total_steps)
        n = max(1, round((t_end - t0) / self.every))
        return tuple(sorted({t0 + round(k * (t_end - t0) / n) for k in range(n + 1)}))


@dataclasses.dataclass(frozen=True)
class Periodic:
    """An update at every `every`-th step after the first, before `end` of training."""

    every: int = 100
    end: float = 0.75

    def __post_init__(self):
        if self.every < 1 or not 0 <= self.end <= 1:
            raise ValueError(f"Periodic needs every >= 1 and 0 <= end <= 1; got {self}")

    def is_update(self, step: int, total_steps: int) -> bool:
        return step > 0 and step % self.every == 0 and step < self.end * total_steps


@dataclasses.dataclass(frozen=True)
class Constant:
    value: float = 0.3

    def at(self, step: int, t_end: float) -> float:
        return self.value if step < t_end else 0.0


@dataclasses.dataclass(frozen=True)
class CosineDecay:
    """value / 2 (1 + cos(pi t / t_end)), 0 from t_end on (RigL's drop fraction)."""

    value: float = 0.3

    def at(self, step: int, t_end: float) -> float:
        return self.value / 2 * (1 + math.cos(math.pi * step / t_end)) if step < t_end else 0.0


@dataclasses.dataclass(frozen=True)
class FlowDecay:
    """beta_t: 1 - rate t (linear) or exp(-rate t), and 0 over the last `hard_fraction` of training."""

    kind: Literal["linear", "exp"] = "linear"
    rate: float = 2e-4
    hard_fraction: float = 0.1

    def __post_init__(self):
        if self.kind not in ("linear", "exp") or self.rate <= 0 or not 0 <= self.hard_fraction < 1:
            raise ValueError(f"FlowDecay needs kind linear or exp, rate > 0 and 0 <= hard_fraction < 1; got {self}")

    def at(self, step: int, total_steps: int) -> float:
        if step >= (1 - self.hard_fraction) * total_steps:
            return 0.0
        return max(0.0, 1 - self.rate * step) if self.kind == "linear" else math.exp(-self.rate * step)
