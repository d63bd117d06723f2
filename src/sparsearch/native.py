"""The project's C++ kernels, compiled on first use for this CPU and loaded with ctypes: `load(name, source, ...)`.

A library is built with the system's C++ compiler (`CXX`, else g++ or clang++) at `-O3 -march=native -fopenmp` and
cached under `$SPARSEARCH_CACHE` (default `~/.cache/sparsearch`), keyed by its source, its generated headers, the
compiler and the CPU's instruction sets, so a new machine or a changed source builds afresh. Where no compiler is
present, or the build fails, `load` returns None after one line on stderr saying what runs instead.

A cached library is checked before it is loaded (a sha256 beside it, owner and mode, the cache folders 0700) and
rebuilt where it fails, with one line saying so: a truncated library would kill the process with SIGBUS, and one
another user planted would run its code in this process.
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

from .files import write_atomic

FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC", "-std=c++17"]


def shared_headers() -> dict[str, str]:
    """Headers more than one library includes (name -> text): the convolution tile."""
    return {"conv_tile.h": Path(__file__).with_name("conv_tile.h").read_text()}


# conv_tile.h's shapes: tile width -> the row counts compiled for it (7 and 14: 224x224 networks' 7x7 and 14x14 maps)
ROWS = {64: (1, 2, 4), 32: (1, 2, 4, 7, 8), 16: (1, 2, 4, 7, 8, 14, 16), 8: (1, 2, 4, 7, 8), 4: (1, 2, 4, 8), 1: (1,)}


@lru_cache(maxsize=1)
def tile_floats() -> int:
    """The floats a tile keeps in registers: 16 of AVX-512's 32 vector registers, 8 of AVX2's 16."""
    return 256 if "avx512f" in cpu_flags().split() else 64


def tile_shape(rows: int, cols: int) -> tuple[int, int]:
    """The (rows, width) of the conv_tile.h tile for output planes of rows x cols: the narrowest width that covers a
    row (64 for wider ones), then the most rows whose accumulators fit in registers, preferring a count that divides
    `rows` (a plane's last rows otherwise run one row at a time)."""
    tx = next(t for t in (1, 4, 8, 16, 32, 64) if t >= cols) if cols <= 64 else 64
    fit = [r for r in ROWS[tx] if r * tx <= tile_floats() and r <= rows] or [1]
    dividing = [r for r in fit if rows % r == 0]
    best = max(dividing) if dividing and 2 * max(dividing) >= max(fit) else max(fit)
    return best, tx


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEARCH_CACHE") or Path.home() / ".cache" / "sparsearch") / "native"


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
    print(f"sparsearch: {folder} is not private to this user (owner or write permission); building the native "
          "kernels in a private temporary folder", file=sys.stderr)
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


def _build(cxx: str, source: Path, headers: dict[str, str], target: Path) -> str:
    """Build `source` into `target`; the compiler's first error line where it fails."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        for name, text in headers.items():
            (Path(tmp) / name).write_text(text)
        proc = subprocess.run([cxx, *FLAGS, f"-I{tmp}", str(source), "-o", str(built)], capture_output=True, text=True)
        if proc.returncode != 0:
            return (proc.stderr.strip().splitlines() or ["no output"])[0]
        built.chmod(0o700)
        digest = _digest(built)
        os.replace(built, target)  # atomic: a concurrent build leaves one complete file
    write_atomic(target.with_name(target.name + ".sha256"), digest + "\n")  # after the library: a crash means rebuild
    return ""


def library_name(name: str, source: Path, headers: dict[str, str], cxx: str) -> str:
    """The cached library's file name, keyed by the source and headers, the compiler, the flags and the CPU."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    parts = [source.read_bytes(), *(t.encode() for t in headers.values()), version.encode(), " ".join(FLAGS).encode(),
             cpu_flags().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return f"{name}-{key}.so"


def load(name: str, source: Path, headers: dict[str, str] | None = None, instead: str = "") -> ctypes.CDLL | None:
    """The library built from `source` (with `headers` written beside it), from the cache where it is intact; None,
    after one line on stderr ending in `instead` (what runs without it), where it cannot be built or loaded."""
    headers = headers or {}

    def notice(message: str) -> None:
        print(f"sparsearch: {message}; {instead}", file=sys.stderr)

    cxx = compiler()
    if cxx is None:
        notice("no C++ compiler found (set CXX or install g++)")
        return None
    try:
        target = _library_dir() / library_name(name, source, headers, cxx)
        why = _trusted(target)
        if why and target.exists():
            print(f"sparsearch: the cached {name} library {target} {why}; rebuilding it", file=sys.stderr)
        if why and (error := _build(cxx, source, headers, target)):
            notice(f"building the {name} library failed ({error})")
            return None
        return ctypes.CDLL(str(target))
    except OSError as exc:  # an unwritable cache, a library that does not load
        notice(f"the {name} library is not usable ({exc})")
        return None
