"""What machine a number came from, recorded beside every benchmark, every training's summary.json and the results
book's header: the CPU model, the instruction sets that decide kernel speed (ratios measured on one do not transfer
to another), threads, the torch build and the GPU."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .native import cpu_flags

ISA = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")  # x86 and Arm vector extensions


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = set(cpu_flags().split())
    return {"cpu": cpu, "isa": [f for f in ISA if f in flags], "threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (Linux /proc/stat: all but idle and iowait, steal
    included; guest time is already inside user time), None where there is no such file."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks[:8]) - sum(ticks[3:5])) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores other processes kept busy while a measurement ran: the machine's busy CPU time less this
    process's own (and its reaped children's), over the wall time. Timings taken beside other work are not a quiet
    machine's, so every benchmark records this beside its numbers."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._wall, self._busy, self._own = time.monotonic(), _busy_seconds(), sum(os.times()[:4])

    def cores(self) -> float | None:
        busy, wall = _busy_seconds(), time.monotonic() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return None
        return max(0.0, (busy - self._busy - (sum(os.times()[:4]) - self._own)) / wall)


__all__ = ["OtherLoad", "machine"]
