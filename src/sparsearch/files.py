"""Writing files so that a reader never sees half of one: write to a temporary file beside it, then rename."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    try:  # read, not set and reset: os.umask is process-wide, and another thread may create a file meanwhile
        status = Path("/proc/self/status").read_text()
        return int(status.split("Umask:")[1].split()[0], 8)
    except (OSError, IndexError, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_atomic(path: str | Path, data: str | bytes, mode: int | None = None) -> Path:
    """Replace `path` with `data` in one rename: a crash, a full disk or a kill leaves the old file or none. The
    file gets `mode`, or what `open` would give it (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask() if mode is None else mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: such numbers are written as null rather than as invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_atomic(path, json.dumps(_finite(obj), indent=indent, allow_nan=False))


def _data_section(raw: bytes) -> tuple[dict, bytes]:
    """A safetensors file's header (JSON) and its tensor bytes."""
    n = int.from_bytes(raw[:8], "little")
    if len(raw) < 8 + n:
        raise ValueError("truncated header")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def save_weights(path: str | Path, tensors: dict) -> Path:
    """`tensors` as a safetensors file any PyTorch user can read, written atomically, with the sha256 of its tensor
    bytes in the header's metadata, so a flipped byte is caught on load as in a checkpoint."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    digest = hashlib.sha256(_data_section(save(tensors))[1]).hexdigest()
    return write_atomic(path, save(tensors, metadata={"sha256": digest}))  # the metadata moves no tensor byte


def load_weights(path: str | Path) -> dict:
    """The tensors of a `save_weights` file, checked against their sha256; any damage is one `SparsearchError`.
    A file without a checksum (written by another program) is read as it is."""
    from safetensors.torch import load

    from .errors import SparsearchError

    try:
        raw = Path(path).read_bytes()
        header, data = _data_section(raw)
        expected = (header.get("__metadata__") or {}).get("sha256")
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ValueError("checksum mismatch")
        return load(raw)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncation, a bad header, a flipped byte: all one kind of damage
        raise SparsearchError(f"cannot load {path}: damaged weights ({str(exc).splitlines()[0] or type(exc).__name__})") from None


def read_json(path: str | Path, what: str = "a sparsearch results file") -> Any:
    """A JSON file this project wrote; damage (truncation, foreign text) is one `SparsearchError` naming it."""
    from .errors import SparsearchError

    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SparsearchError(f"{path} is not {what} ({exc}); delete it to recompute it") from None
