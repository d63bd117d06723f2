"""The decoded-dataset cache: `.npz` arrays under the cache directory, keyed by the source's path, size and
modification time, each with a sha256 beside it. A cache file that fails its checksum (flipped bytes, a truncated
write, a missing checksum) is rebuilt from the source, with one line saying so; it is never trusted."""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import write_atomic


def default_cache_dir() -> Path:
    root = os.environ.get("SPARSEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sparsearch")
    return Path(root)


def _source_key(path: Path) -> str:
    """Identity of a source: its path plus size and mtime of every file in it (cheap, no reading)."""
    digest = hashlib.sha1(str(path.resolve()).encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path) if f != path else ''}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _read(file: Path) -> dict | None:
    """The cached arrays, or None (with a line on stderr) when the file is damaged."""
    checksum = file.with_name(file.name + ".sha256")
    raw = file.read_bytes()
    try:
        intact, why = checksum.read_text().strip() == hashlib.sha256(raw).hexdigest(), "is damaged"
    except OSError:
        intact, why = False, "has no checksum (an older sparsearch wrote it)"
    if intact:
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # noqa: BLE001 - a file that passes its checksum but not np.load is damaged all the same
            why = "is damaged"
    print(f"sparsearch: the dataset cache {file} {why}; rebuilding it from the source", file=sys.stderr)
    file.unlink(missing_ok=True)
    checksum.unlink(missing_ok=True)
    return None


def cached(name: str, path: Path, cache_dir: str | None, build: Callable[[], dict]) -> dict:
    """`build()`'s arrays, from the cache when an intact copy for this source is there."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    file = cache / f"{name}-{_source_key(path)}.npz"
    if file.exists() and (arrays := _read(file)) is not None:
        return arrays
    arrays = build()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    write_atomic(file, raw)  # the data first, then its checksum: a crash between them means "rebuild", never "trust"
    write_atomic(file.with_name(file.name + ".sha256"), hashlib.sha256(raw).hexdigest() + "\n")
    return arrays
