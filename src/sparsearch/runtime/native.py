"""The whole-network engine's library (`engine.cpp`, with the record header generated from `layout.py`), built and
checked by `sparsearch.native`. After loading, its symbols and its record layout must be the planner's."""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache
from pathlib import Path

from ..native import compiler, library_name, load, shared_headers
from .layout import DIGEST, header

SOURCE = Path(__file__).with_name("engine.cpp")
INSTEAD = "the runtime uses its slower per-layer kernels"
__all__ = ["DIGEST", "SOURCE", "compiler", "library", "library_file"]


def library_file(cxx: str) -> str:
    """The engine library's file name in the cache (tests plant files there)."""
    return library_name("engine", SOURCE, _headers(), cxx)


def _headers() -> dict[str, str]:
    return {"sparsearch_layout.h": header(), **shared_headers()}


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded engine library, building it if needed; None (after a one-line notice) where it cannot be built."""
    if os.environ.get("SPARSEARCH_NO_NATIVE"):
        return None
    lib = load("engine", SOURCE, _headers(), INSTEAD)
    if lib is None:
        return None
    try:
        lib.sparsearch_run.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
        lib.sparsearch_run.restype = None
        lib.sparsearch_layout.restype = ctypes.c_char_p
    except AttributeError as exc:  # loaded, but not the engine: its symbols are missing
        print(f"sparsearch: {lib._name} is not the engine library ({exc}); {INSTEAD}", file=sys.stderr)
        return None
    if lib.sparsearch_layout().decode() != DIGEST:  # a library built from another record table
        print(f"sparsearch: the engine library {lib._name} reads another record layout than the planner writes; "
              f"{INSTEAD}", file=sys.stderr)
        return None
    return lib
