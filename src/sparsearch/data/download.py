"""Fetching files over HTTP with an md5 check; nothing is left behind when a download fails."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from ..errors import SparsearchError


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: str | Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, check its md5, and only then move it into place."""
    dest = Path(dest)
    if dest.exists() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), transient=True, disable=not _is_tty(),
            ) as bar:
                task = bar.add_task(f"download {dest.name}", total=total)
                while block := resp.read(1 << 16):
                    out.write(block)
                    bar.advance(task, len(block))
        if md5 is not None and (got := md5sum(tmp)) != md5:
            raise SparsearchError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError) as exc:
        raise SparsearchError(f"download of {url} failed: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
