"""How a chapter of the results book states its numbers and its verdict: the `Chapter` record, the rule helpers every
claim uses (seed ranges apart, reproduced / not / mixed per sparsity) and the number formats."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Chapter:
    title: str
    source: str  # the paper
    claim: str
    rule: str  # the verdict rule, in words, fixed before the numbers; the code below it applies it
    body: str  # our numbers, markdown
    verdict: str  # no evidence / reproduced / not reproduced / mixed, with a reason
    seconds: float | None  # the CPU time its runs recorded (None: not recorded)
    plot: str | None = None  # file name under docs/results/
    budget_note: str = ""

    @property
    def budget(self) -> str:
        spent = "not recorded" if self.seconds is None else hours(self.seconds)
        return spent + (f" ({self.budget_note})" if self.budget_note else "")


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} CPU-hours" if seconds >= 1800 else f"{seconds / 60:.0f} CPU-minutes"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def verdict(all_hold: bool, none_hold: bool, yes: str, no: str) -> str:
    return f"**reproduced**: {yes}" if all_hold else f"**not reproduced**: {no}" if none_hold else f"**mixed**: {yes}; {no}"


def where(sparsities: list[float], which: dict[float, bool]) -> str:
    return ", ".join(f"{100 * s:g}%" for s in sparsities if which[s]) or "none"


def by_rule(sparsities: list[float], holds: list[bool], fails: list[bool], yes: str, no: str) -> str:
    """Reproduced where the claim holds at every sparsity, not reproduced where it fails at every one, mixed
    otherwise; each part says where."""
    return verdict(all(holds), all(fails), f"{yes} at {where(sparsities, dict(zip(sparsities, holds)))}",
                   f"{no} at {where(sparsities, dict(zip(sparsities, fails)))}")


def apart(a: dict, b: dict) -> bool:
    """`a` above `b` beyond the seed spread: every seed of `a` above every seed of `b`, with two seeds or more. With
    three seeds each, disjoint ranges happen by chance with probability 1/20 when the two are the same (a
    permutation test over the 6 values, one-sided)."""
    return min(a.get("n", a.get("seeds", 1)), b.get("n", b.get("seeds", 1))) > 1 and a["acc_min"] > b["acc_max"]


def seeds_text(r: dict) -> str:
    """Mean ± sample std (number of seeds), in percent, from a run's per-seed summary or a comparison's table row."""
    return f"{pct(r['acc_mean'])} ± {pct(r['acc_std'])} ({r.get('n', r.get('seeds'))})"
