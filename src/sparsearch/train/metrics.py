"""Where numbers go: `metrics.jsonl` (one object per line, every stage), progress on the terminal, and
TensorBoard when it is installed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .. import distributed
from ..files import write_atomic


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _stage_of(line: str) -> Any:
    try:
        return json.loads(line).get("stage")
    except (ValueError, AttributeError):  # not ours to judge: kept as it is
        return None


class MetricsLog:
    """Append-only JSON lines, a stage per training. `offset()`/`truncate()` let a resumed run drop lines logged
    after its checkpoint; `forget_stage()` lets one started afresh drop those of an earlier attempt."""

    def __init__(self, path: str | Path, stage: str = "train"):
        self.path = Path(path)
        self.stage = stage
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not distributed.is_main():  # under torchrun rank 0 logs for all
            return
        record = {"stage": self.stage, **{k: _clean(v) for k, v in record.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self._tensorboard(record)

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        # never past the end: that would pad the file with NULs (a checkpoint from a run that logged elsewhere)
        if self.path.exists() and distributed.is_main() and offset < self.offset():
            with open(self.path, "r+") as fh:
                fh.truncate(offset)

    def forget_stage(self) -> None:
        """Drop this stage's lines: a stage that starts from step 0 again (its earlier attempt killed before its
        first checkpoint, or retrained) would otherwise leave them beside the new ones. A torn last line goes too."""
        if not self.path.exists() or not distributed.is_main():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        whole = lines[:-1] if lines and not lines[-1].endswith("\n") else lines  # a write the kill tore
        kept = [line for line in whole if _stage_of(line) != self.stage]
        if len(kept) < len(lines):
            write_atomic(self.path, "".join(kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _tensorboard(self, record: dict[str, Any]) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path.parent / "tensorboard" / self.stage.replace("/", "_")))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = False
        if self._tb:
            step = record.get("step", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{record.get('kind', 'metric')}/{k}", v, step)


class Reporter:
    """A rich progress bar on a terminal; one plain line per epoch otherwise (logs, CI)."""

    def __init__(self, description: str, enabled: bool = True):
        self.description = description
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        if not self.tty:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._progress.start()
        self._task = self._progress.add_task(f"{self.description} {epoch + 1}/{epochs}", total=total,
                                             completed=done, info="")

    def advance(self, info: str = "") -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, info=info)

    def end_epoch(self, line: str) -> None:
        if self.tty and self._progress is not None:
            self._progress.update(self._task, info=line)
        elif self.enabled:
            print(f"{self.description} {line}", flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
