"""The engine's C++ kernels (`engine.cpp`), compiled on first use for this CPU and loaded with ctypes.

The library is built with the system's C++ compiler (`CXX`, else g++ or clang++) at `-O3 -march=native -fopenmp`
and cached under `$SPARSEARCH_CACHE` (default `~/.cache/sparsearch`), keyed by the source, the compiler and the
CPU's instruction sets, so a new machine or a changed source builds afresh. Where no compiler is present, or the
build fails, `library()` returns None after one line on stderr and `runtime.compile` uses its slower per-layer
kernels instead.

The cached library is checked before it is loaded (a sha256 beside it, owner and mode, the cache folders 0700) and
rebuilt where it fails, with one line saying so; after loading, its record layout (`layout.py`) must be the planner's.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from ..files import write_atomic
from .layout import DIGEST, header

SOURCE = Path(__file__).with_name("engine.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC", "-std=c++17"]


def compiler() -> str | None:
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


def _private(path: Path) -> bool:
    """Ours and writable by nobody else: only then may a file in it, or it, be trusted."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _library_dir() -> Path:
    """The cache folder, created 0700. One that another user owns or may write to is not used: a library
    planted there would run its code in this process, so this process builds in a private folder instead."""
    folder = cache_dir()
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for created in missing:
        created.chmod(0o700)
    if _private(folder):
        return folder
    print(f"sparsearch: {folder} is not private to this user (owner or write permission); building the engine "
          "in a private temporary folder", file=sys.stderr)
    return Path(tempfile.mkdtemp(prefix="sparsearch-native-"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trusted(target: Path) -> str:
    """Why the cached library `target` must not be loaded ("" where it may): it is checked before dlopen, since a
    truncated library crashes the process (SIGBUS) and a foreign one runs its code."""
    checksum = target.with_name(target.name + ".sha256")
    if not target.exists():
        return "is missing"
    if not checksum.exists():
        return "has no checksum"
    if not (_private(target) and _private(checksum)):
        return "is not owned by this user or is writable by others"
    if checksum.read_text().strip() != _digest(target):
        return "is damaged (checksum mismatch)"
    return ""


def _build(cxx: str, target: Path) -> bool:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        (Path(tmp) / "sparsearch_layout.h").write_text(header())
        proc = subprocess.run([cxx, *FLAGS, f"-I{tmp}", str(SOURCE), "-o", str(built)], capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no output"])[0]
            _notice(f"building the engine failed ({first})")
            return False
        built.chmod(0o700)
        digest = _digest(built)
        os.replace(built, target)  # atomic: a concurrent build leaves one complete file
    write_atomic(target.with_name(target.name + ".sha256"), digest + "\n")  # after the library: a crash means rebuild
    return True


def library_name(cxx: str) -> str:
    """The cached library's file name, keyed by the source, the compiler, the flags and the CPU's instruction sets."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), header().encode(), version.encode(), " ".join(FLAGS).encode(),
                                     _cpu_flags().encode()])).hexdigest()[:16]
    return f"engine-{key}.so"


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded engine library, building it if needed; None (after a one-line notice) where it cannot be built."""
    if os.environ.get("SPARSEARCH_NO_NATIVE"):
        return None
    cxx = compiler()
    if cxx is None:
        _notice("no C++ compiler found (set CXX or install g++)")
        return None
    try:
        target = _library_dir() / library_name(cxx)
        why = _trusted(target)
        if why and target.exists():
            print(f"sparsearch: the cached engine library {target} {why}; rebuilding it", file=sys.stderr)
        if why and not _build(cxx, target):
            return None
        lib = ctypes.CDLL(str(target))
        lib.sparsearch_run.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
        lib.sparsearch_run.restype = None
        lib.sparsearch_layout.restype = ctypes.c_char_p
    except OSError as exc:  # an unwritable cache, a library that does not load
        _notice(f"the engine library is not usable ({exc})")
        return None
    except AttributeError as exc:  # loaded, but not the engine: its symbols are missing
        _notice(f"{target} is not the engine library ({exc})")
        return None
    if lib.sparsearch_layout().decode() != DIGEST:  # a library built from another record table
        _notice(f"the engine library {target} reads another record layout than the planner writes")
        return None
    return lib
