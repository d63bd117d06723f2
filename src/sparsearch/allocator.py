"""The C allocator of a training process: keep freed memory for the next step instead of handing it back.

glibc serves each allocation above its mmap threshold (at most 32 MiB by default) with a fresh mmap and unmaps it
when freed, and trims the heap's free top, so every training step pays page faults on its large activations again:
ResNet-50 at 224x224, batch 16, spends ~20% of a dense NCHW step in them (2-core Zen 4: 3.37-3.54 s a step, 2.81 s
with this; separate processes, one after another). `keep_freed_memory()` raises the threshold and the trim
threshold (the memory stays with the process: its peak resident set grows, 2.4 -> 3.1 GB there). The CLI and the
trial workers call it; a user's own loop may. SPARSEARCH_ALLOCATOR=default leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's allocator to keep freed memory (once per process); False where it is not glibc, or where
    SPARSEARCH_ALLOCATOR=default asks to leave it."""
    global _done
    if _done is None:
        _done = False
        name = ctypes.util.find_library("c")
        if os.environ.get("SPARSEARCH_ALLOCATOR", "") != "default" and name:
            try:
                mallopt = ctypes.CDLL(name).mallopt
            except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _done


__all__ = ["keep_freed_memory"]
