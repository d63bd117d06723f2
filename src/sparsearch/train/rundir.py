"""The run directory: claimed by one process at a time, created once per run, holding the resolved config every
stage reads."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import yaml

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked there
    fcntl = None

from .. import distributed
from ..config import Config, ConfigError, dump_yaml, load_config
from ..errors import SparsearchError
from ..files import write_atomic

# settings of how trials run, not of what they compute (results do not depend on them): free to change on re-runs
HOW_NOT_WHAT = {"run.executor", "run.workers", "run.retries", "run.ray_address"}
LOCK_NAME = ".lock"
_held: dict[Path, list] = {}  # directory -> [open lock file, nesting depth]: re-entrant within this process


def _check_writable(path: Path) -> None:
    """Fail before writing when `path` cannot become a folder: an ancestor that is a file, say."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise SparsearchError(f"cannot create {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SparsearchError(f"cannot create {path}: {parent} is not writable")
            return


def _command() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "sparsearch"):  # `python -m sparsearch`, torchrun's `-m sparsearch`, the script
        program = "sparsearch"
    return " ".join([program, *sys.argv[1:]])


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


@contextlib.contextmanager
def exclusive(directory: str | Path) -> Iterator[Path]:
    """Hold `directory` for this process: a second process (any command, any executor) that asks while this one
    holds it gets a one-line error naming this one. The lock is an flock, so a killed process frees it at once;
    the lock file goes when the holder lets go. Trials in worker processes write inside a claimed directory
    without claiming it: the process that started them holds it."""
    directory = Path(directory).resolve()
    if directory in _held:  # a nested claim in this process: the outer one holds the lock
        _held[directory][1] += 1
        try:
            yield directory
        finally:
            _held[directory][1] -= 1
        return
    if not distributed.is_main() or fcntl is None:  # torchrun: rank 0 holds it for all ranks
        yield directory
        return
    _check_writable(directory)
    created = [d for d in [directory, *directory.parents] if not d.exists()]  # innermost first
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    while True:
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise SparsearchError(f"{directory} is in use by another sparsearch process ({_holder(lock)}); wait "
                                  "for it to finish or use another --name") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            if os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    fh.truncate(0)
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    fh.flush()
    _held[directory] = [fh, 1]
    try:
        yield directory
    finally:
        _held[directory][1] -= 1
        if _held[directory][1] == 0:
            del _held[directory]
            lock.unlink(missing_ok=True)  # before unlocking: a waiter then locks a new file, never a removed one
            fh.close()
            for d in created:  # folders this claim made and nothing filled (a run refused at its first write)
                try:
                    d.rmdir()
                except OSError:
                    break


@contextlib.contextmanager
def claim_run_dir(cfg: Config, extendable: tuple[str, ...] = (), sections: tuple[str, ...] | None = None
                  ) -> Iterator[Path]:
    """What every command that writes a run does once its checks have passed: hold the directory, then write
    (or compare) its config. `prepare_run_dir` alone writes without holding."""
    with exclusive(cfg.run_dir):
        yield prepare_run_dir(cfg, extendable, sections)


def prepare_run_dir(cfg: Config, extendable: tuple[str, ...] = (), sections: tuple[str, ...] | None = None) -> Path:
    """Write the resolved config into the (claimed) run directory; refuse to mix two different configs.
    Sections named in `extendable` only list work to do (e.g. `compare`: more variants or seeds), so they may
    change between invocations; what was finished stays valid and is skipped. With `sections`, config.yaml
    holds only those (the ones the run reads) and only they are compared."""
    run_dir = cfg.run_dir
    if not distributed.is_main():  # under torchrun: rank 0 checks and writes, the others wait for it
        distributed.barrier()
        return run_dir
    written = run_dir / "config.yaml"
    text = dump_yaml(cfg, sections)
    previous = written.read_text() if written.exists() else None
    if previous is not None and previous != text:
        try:  # re-resolved, so settings added to sparsearch since then read as their defaults, not as changes
            before = yaml.safe_load(dump_yaml(load_config(written), sections))
        except ConfigError as exc:
            raise SparsearchError(f"{run_dir} holds a run whose config this version cannot read ({exc})") from None
        now = yaml.safe_load(text)
        shared = set(yaml.safe_load(previous) or {}) & set(now)  # a section new to this run is no conflict
        before, now = {k: v for k, v in before.items() if k in shared}, {k: v for k, v in now.items() if k in shared}
        for section in extendable:
            before.pop(section, None)
            now.pop(section, None)
        if changed := [k for k in changed_keys(before, now) if k not in HOW_NOT_WHAT]:
            raise SparsearchError(f"{run_dir} holds a run with a different config ({', '.join(changed[:3])} differ); "
                                  "pick another name or delete it")
    write_atomic(written, text)
    distributed.barrier()
    return run_dir


def changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out
