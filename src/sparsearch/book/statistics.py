"""The book's statistics, as its rules file (docs/results/RULES.md, dated and committed before the runs it judges)
states them: an effect is a difference of accuracies in points with a 95% confidence interval, paired by seed
where the runs share their seed (same initialisation and data order), Welch's otherwise; a claim names in advance
the smallest effect that would matter (`smallest`), and its verdict is one of three:

- superiority ("A beats B"): reproduced when the interval lies above 0; not reproduced when it lies below the
  smallest effect (an effect that large is ruled out); inconclusive when it holds both 0 and the smallest effect.
- no better ("A is no better than B"): the upper half of a TOST at 5% (the 90% interval): reproduced when that
  interval lies below the smallest effect; not reproduced when the 95% interval lies above 0 (A is better, and not
  by a provably negligible margin); inconclusive otherwise.
- equivalence ("A matches B"): TOST at 5%: reproduced when the 90% interval lies within +-smallest; not reproduced
  when the 95% interval excludes 0; inconclusive otherwise.

Comparisons that are not independent (one claim at several sparsities, on one set of seeds) count as one:
`pooled` averages each seed's differences before the interval is taken.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal, Sequence

from scipy import stats as _stats

Kind = Literal["superiority", "no better", "equivalence"]
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Effect:
    """A - B with its interval at `confidence`, from n seeds (pairs where `paired`)."""

    estimate: float
    low: float
    high: float
    n: int
    paired: bool
    confidence: float

    def text(self, scale: float = 100.0) -> str:
        how = "paired" if self.paired else "Welch"
        return (f"{scale * self.estimate:+.2f} [{scale * self.low:+.2f}, {scale * self.high:+.2f}] "
                f"({self.confidence:.0%}, {how}, n={self.n})")


def difference(a: Sequence[float], b: Sequence[float], paired: bool = True, confidence: float = 0.95) -> Effect:
    """mean(A) - mean(B) with a t interval: over the per-seed differences where `paired` (A[i] and B[i] share seed
    i), Welch's otherwise. With fewer than two values a side the interval is unbounded: nothing can be concluded."""
    if paired and len(a) != len(b):
        raise ValueError(f"paired seeds need as many runs on each side, got {len(a)} and {len(b)}")
    q = (1 + confidence) / 2
    if paired:
        d = [x - y for x, y in zip(a, b)]
        n, est = len(d), statistics.fmean(d) if d else math.nan
        if n < 2:
            return Effect(est, -math.inf, math.inf, n, True, confidence)
        half = float(_stats.t.ppf(q, n - 1)) * statistics.stdev(d) / math.sqrt(n)
        return Effect(est, est - half, est + half, n, True, confidence)
    n = min(len(a), len(b))
    est = statistics.fmean(a) - statistics.fmean(b) if n else math.nan
    if n < 2:
        return Effect(est, -math.inf, math.inf, n, False, confidence)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Effect(est, est, est, n, False, confidence)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(_stats.t.ppf(q, dof)) * se
    return Effect(est, est - half, est + half, n, False, confidence)


def seed_means(per_comparison: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[list[float], list[float]]:
    """Several comparisons on the same seeds (a claim at several sparsities) as one: each seed's A and B averaged
    over the comparisons, so a test on them counts seeds, not comparisons."""
    seeds = {len(a) for a, _ in per_comparison} | {len(b) for _, b in per_comparison}
    if len(seeds) != 1:
        raise ValueError("pooled comparisons must share their seeds")
    n = seeds.pop()
    return ([statistics.fmean(c[0][i] for c in per_comparison) for i in range(n)],
            [statistics.fmean(c[1][i] for c in per_comparison) for i in range(n)])


def pooled(per_comparison: Sequence[tuple[Sequence[float], Sequence[float]]], confidence: float = 0.95) -> Effect:
    """One paired effect for several comparisons on the same seeds: `seed_means`' difference."""
    return difference(*seed_means(per_comparison), paired=True, confidence=confidence)


@dataclass(frozen=True)
class Judgement:
    """One test of a claim: what it compares (`label`, "A - B over ..."), its verdict and reason, and the interval its
    rule read (the 95% one; a TOST's 90%) against the smallest effect of interest."""

    label: str
    kind: Kind
    word: str
    reason: str
    effect: Effect
    smallest: float

    @property
    def text(self) -> str:
        return f"**{self.word}**: {self.label}, {self.reason}"


def judge(label: str, kind: Kind, a: Sequence[float], b: Sequence[float], smallest: float,
          paired: bool = True) -> Judgement:
    """The test of a claim of `kind` about A against B, by the module's rules; `smallest` > 0 is the smallest effect
    of interest, in the values' units. A paired reason ends with `power_note` for its seeds, which RULES.md reads to
    decide whether a claim needs five."""
    word, reason, effect = _verdict(kind, a, b, smallest, paired)
    if paired and len(a) >= 2:
        reason += "; power: " + power_note(len(a), statistics.stdev(x - y for x, y in zip(a, b)), smallest)
    return Judgement(label, kind, word, reason, effect, smallest)


def verdict(kind: Kind, a: Sequence[float], b: Sequence[float], smallest: float, paired: bool = True) -> tuple[str, str]:
    """`judge`'s (verdict, reason)."""
    j = judge("", kind, a, b, smallest, paired)
    return j.word, j.reason


def _verdict(kind: Kind, a: Sequence[float], b: Sequence[float], smallest: float, paired: bool) -> tuple[str, str, Effect]:
    if smallest <= 0:
        raise ValueError(f"the smallest effect of interest must be positive, got {smallest}")
    e95 = difference(a, b, paired, 0.95)
    e90 = difference(a, b, paired, 0.90)
    if kind == "superiority":
        if e95.low > 0:
            return "reproduced", f"A - B = {e95.text()}: above 0", e95
        if e95.high < smallest:
            return "not reproduced", f"A - B = {e95.text()}: an effect of {100 * smallest:g} points is ruled out", e95
        return "inconclusive", f"A - B = {e95.text()}: holds both 0 and {100 * smallest:g} points", e95
    if kind == "no better":
        if e90.high < smallest:
            return "reproduced", f"A - B = {e90.text()}: below {100 * smallest:g} points (TOST, 5%)", e90
        if e95.low > 0:
            return "not reproduced", f"A - B = {e95.text()}: A is better", e95
        return "inconclusive", f"A - B = {e90.text()}: neither below {100 * smallest:g} points nor above 0", e90
    if kind == "equivalence":
        if -smallest < e90.low and e90.high < smallest:
            return "reproduced", f"A - B = {e90.text()}: within +-{100 * smallest:g} points (TOST, 5%)", e90
        if e95.low > 0 or e95.high < 0:
            return "not reproduced", f"A - B = {e95.text()}: excludes 0", e95
        return "inconclusive", f"A - B = {e90.text()}: not within +-{100 * smallest:g} points, not apart from 0", e90
    raise ValueError(f"unknown claim kind {kind!r}; one of superiority, no better, equivalence")


def power_note(n: int, sigma: float, smallest: float) -> str:
    """What n paired seeds with per-seed difference spread `sigma` can show: the interval's expected half-width
    against the smallest effect (a design check printed beside a verdict)."""
    if n < 2:
        return "one seed: no interval"
    half = float(_stats.t.ppf(0.975, n - 1)) * sigma / math.sqrt(n)
    enough = "enough" if half < smallest / 2 else "too few"
    return (f"n={n}: expected half-width {100 * half:.2f} points, against the {100 * smallest / 2:g} (half the smallest"
            f" effect) it should stay below: {enough} seeds")


__all__ = ["Effect", "Judgement", "VERDICTS", "difference", "judge", "pooled", "power_note", "seed_means", "verdict"]
