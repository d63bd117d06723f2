"""The engine's C++ kernels (`engine.cpp`), compiled on first use for this CPU and loaded with ctypes.

The library is built with the system's C++ compiler (`CXX`, else g++ or clang++) at `-O3 -march=native -fopenmp`
and cached under `$SPARSEARCH_CACHE` (default `~/.cache/sparsearch`), keyed by the source, the compiler and the
CPU's instruction sets, so a new machine or a changed source builds afresh. Where no compiler is present, or the
build fails, `library()` returns None after one line on stderr and `runtime.compile` uses its slower per-layer
kernels instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("engine.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC", "-std=c++17"]


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEARCH_CACHE") or Path.home() / ".cache" / "sparsearch") / "native"


def _notice(message: str) -> None:
    print(f"sparsearch: {message}; the runtime uses its slower per-layer kernels", file=sys.stderr)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded engine library, building it if needed; None (after a one-line notice) where it cannot be built."""
    if os.environ.get("SPARSEARCH_NO_NATIVE"):
        return None
    cxx = _compiler()
    if cxx is None:
        _notice("no C++ compiler found (set CXX or install g++)")
        return None
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), version.encode(), " ".join(FLAGS).encode(),
                                     _cpu_flags().encode()])).hexdigest()[:16]
    target = cache_dir() / f"engine-{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                proc = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                    _notice(f"building the engine failed ({first})")
                    return None
                os.replace(built, target)  # atomic: a concurrent build leaves one complete file
        lib = ctypes.CDLL(str(target))
    except OSError as exc:  # an unwritable cache, a library that does not load
        _notice(f"the engine library is not usable ({exc})")
        return None
    lib.sparsearch_run.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
    lib.sparsearch_run.restype = None
    lib.sparsearch_record_size.restype = ctypes.c_int
    return lib
