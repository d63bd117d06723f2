"""What machine a number came from, recorded beside every benchmark, every training's summary.json and the results
book's header: the CPU model, the instruction sets that decide kernel speed (ratios measured on one do not transfer
to another), threads, the torch build and the GPU."""

from __future__ import annotations

import platform
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
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


__all__ = ["machine"]
