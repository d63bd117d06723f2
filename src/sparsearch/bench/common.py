"""What every benchmark reports alongside its numbers: the machine, the load other processes put on it while the
benchmark ran, and medians with spreads."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from ..host import OtherLoad, machine

LOAD = OtherLoad()  # restarted by `bench.main` as each benchmark starts
BUSY = 0.2  # cores of other work above which a benchmark's timings are flagged as not a quiet machine's


def stats(samples: list[float]) -> dict[str, float]:
    """Median and the spread (min, max, IQR-free) of repeated measurements."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def alternated(contenders: dict[str, Any], trials: int) -> dict[str, dict[str, float]]:
    """Each contender (a callable returning the seconds it took) once to warm up, then `trials` rounds taking each
    in turn, so drifting machine load hits all alike: their `stats`."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(trials):
        for name, fn in contenders.items():
            times[name].append(fn())
    return {name: stats(samples) for name, samples in times.items()}


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    other = LOAD.cores()
    path.write_text(json.dumps({"machine": machine(), "other_cores": None if other is None else round(other, 2),
                                **payload}, indent=2))
    return path


def quiet(other_cores: float | None) -> bool:
    """Whether other processes left the machine quiet enough to time on (unknown load counts as quiet)."""
    return other_cores is None or other_cores < BUSY


def load_warning() -> str | None:
    """A line to print when other processes kept the machine busy while the benchmark ran, else None."""
    other = LOAD.cores()
    if quiet(other):
        return None
    return (f"warning: other processes kept {other:.1f} cores busy on average while this benchmark ran: its timings "
            "are not a quiet machine's (the JSON records it as other_cores)")


def wait_for_quiet(limit_s: float = 1800.0, every_s: float = 10.0) -> float | None:
    """Wait (at most `limit_s`) until other processes keep less than BUSY cores busy over `every_s`, so a long
    unattended job (the results book) does not time its benchmarks beside someone's test run; returns the last load
    seen. A machine that stays busy is timed anyway: the bench records how busy it was."""
    waited = 0.0
    while True:
        load = OtherLoad()
        time.sleep(every_s)
        other = load.cores()
        if quiet(other) or waited >= limit_s:
            break
        if not waited:
            print(f"bench: other processes keep {other:.1f} cores busy: waiting up to {limit_s / 60:.0f} min for a "
                  "quiet machine before timing", flush=True)
        waited += every_s
    if waited:
        print(f"bench: {'quiet now' if quiet(other) else 'still busy, timing anyway'} after {waited:.0f} s", flush=True)
    return other


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right" if h != header[0] else "left")
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that cells do not wrap
        console = Console(width=200)
    console.print(table)
