"""What every benchmark reports alongside its numbers: the machine, and medians with spreads."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..host import machine


def stats(samples: list[float]) -> dict[str, float]:
    """Median and the spread (min, max, IQR-free) of repeated measurements."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


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
