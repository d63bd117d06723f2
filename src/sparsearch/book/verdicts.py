"""How a chapter of the results book states its numbers and its verdict: the `Chapter` record, the rule helpers the
claims use (RULES.md's paired effects, intervals and three verdicts, behind a dense anchor) and the number formats."""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..bench.common import quiet
from . import statistics as stats
from .statistics import Kind


@dataclass(frozen=True)
class Figure:
    """What a chapter's figure draws from its comparison's rows: `paired`, each seed under each variant at the highest
    sparsity they share (the pairs its test compares; it names them), or `sparsity`, accuracy over sparsity; of
    `variants` (None: all)."""

    kind: Literal["paired", "sparsity"] = "sparsity"
    variants: tuple[str, ...] | None = None


@dataclass
class Chapter:
    title: str
    source: str  # the paper
    claim: str
    rule: str  # the verdict rule, in words, fixed before the numbers; the code below it applies it
    body: str  # our numbers, markdown
    verdict: str  # reproduced / not reproduced / inconclusive / no verdict / no evidence, with a reason
    seconds: float | None  # the CPU time its runs recorded (None: not recorded)
    plot: str | None = None  # file name under docs/results/
    budget_note: str = ""
    figure: Figure = Figure()  # what `plot` shows, where it is drawn from a comparison
    judgements: list[stats.Judgement] = field(default_factory=list)  # its tests, for the book's effects figure

    @property
    def tested(self) -> list[stats.Judgement]:
        """Its tests where its verdict rests on them (not where a weak dense anchor or a frozen search voids them)."""
        word = self.verdict.split("**")[1] if self.verdict.startswith("**") else ""
        return self.judgements if word in (*stats.VERDICTS, "mixed") else []

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


def seeds_text(r: dict) -> str:
    """Mean ± sample std (number of seeds), in percent, from a run's per-seed summary or a comparison's table row."""
    return f"{pct(r['acc_mean'])} ± {pct(r['acc_std'])} ({r.get('n', r.get('seeds'))})"


ANCHOR = 0.85  # a CIFAR-10 chapter whose dense network is below this gives no verdict
RULES = Path(__file__).resolve().parents[3] / "docs" / "results" / "RULES.md"  # in a checkout; not package data


def rules_citation() -> str:
    """The rules file and the sha256 of the text the verdicts were judged under, for the book's header."""
    if not RULES.exists():
        return "docs/results/RULES.md, not found beside this installation"
    return f"docs/results/RULES.md, sha256 {hashlib.sha256(RULES.read_bytes()).hexdigest()[:16]}"


def per_seed(results: dict, variant: str, sparsity: float) -> dict[int, float]:
    """A comparison's test accuracy per seed for one variant and sparsity."""
    return {r["seed"]: r["test_acc"] for r in results["rows"]
            if r["variant"] == variant and r.get("sparsity") == sparsity and "test_acc" in r}


def proxy_budget(results: dict) -> str | None:
    """The verdict of a chapter whose dense anchor is missing or below `ANCHOR` (RULES.md), None where it holds."""
    dense = [r["test_acc"] for r in results["rows"] if r["variant"] == "dense" and "test_acc" in r]
    if not dense:
        return "**no verdict**: no dense network was trained beside it, so nothing says what its budget can show"
    if (mean := statistics.fmean(dense)) < ANCHOR:
        return (f"**no verdict**: proxy budget (the dense network reaches {pct(mean)}% < {100 * ANCHOR:g}%), which "
                "says nothing about the paper")
    return None


STAGES = (3, 5)  # RULES.md: the seeds a claim is judged on, and on how many after an inconclusive first look


def shared_seeds(*per: dict[int, float]) -> list[int]:
    """The seeds every run of a comparison has, in order, as a verdict reads them: the first stage's until the
    second stage has all its seeds, never the ones between (an interim look would judge on seeds no rule names, and
    a verdict it made conclusive would end the second stage early)."""
    seeds = sorted(set.intersection(*(set(d) for d in per)))
    return seeds if len(seeds) >= STAGES[1] else seeds[:STAGES[0]]


def common_seeds(a: dict[int, float], b: dict[int, float]) -> tuple[list[float], list[float]]:
    """Two runs' accuracies on their `shared_seeds`: pairs that share initialisation and data order."""
    seeds = shared_seeds(a, b)
    return [a[k] for k in seeds], [b[k] for k in seeds]


def paired(results: dict, a: str, b: str, sparsities: list[float]) -> tuple[list[float], list[float]]:
    """A's and B's accuracies on the seeds both ran at every sparsity, each seed averaged over the sparsities (one
    test for comparisons that are not independent)."""
    by = {(v, s): per_seed(results, v, s) for v in (a, b) for s in sparsities}
    seeds = shared_seeds(*by.values())
    mean = lambda v: [statistics.fmean(by[v, s][seed] for s in sparsities) for seed in seeds]  # noqa: E731
    return mean(a), mean(b)


def judged(kind: Kind, results: dict, a: str, b: str, sparsities: list[float], smallest: float) -> stats.Judgement:
    """RULES.md's test of "A vs B" over `sparsities` (pooled); its `text` is the chapter's verdict."""
    where_ = ", ".join(f"{100 * s:g}%" for s in sparsities)
    return stats.judge(f"{a} - {b} over {where_}", kind, *paired(results, a, b, sparsities), smallest)


def effect_text(results: dict, a: str, b: str, s: float) -> str:
    """One sparsity's paired effect A - B in points with its 95% interval, for a chapter's table."""
    return stats.difference(*paired(results, a, b, [s])).text()


def load_text(other_cores: float | None) -> str:
    """What else ran on the machine while a bench timed (its `other_cores`, the most of several), as a sentence."""
    if other_cores is None:
        return " The load of other processes while it timed was not recorded."
    return (f" Other processes kept {other_cores:.2f} cores busy on average while it timed"
            + ("." if quiet(other_cores) else ": not a quiet machine, so these timings are suspect."))
