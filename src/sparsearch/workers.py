"""A trial worker process (`executors`' process and Ray backends): its share of the cores, which a config's
`train.threads` does not raise, the allocator of a training process, and, for spawned workers, an end with the
process that started them."""

from __future__ import annotations

import os
import threading
import time

import torch

from .allocator import keep_freed_memory

_worker_threads: int | None = None  # in a trial worker: its share of the cores, fixed for the process


def limit_threads(threads: int) -> None:
    """A trial worker's setup: its share of the cores, and the allocator of a training process (allocator.py)."""
    global _worker_threads
    _worker_threads = threads
    torch.set_num_threads(threads)
    keep_freed_memory()


def start_worker(threads: int) -> None:
    """A process worker's setup (Ray ends the tasks of a driver that died itself)."""
    limit_threads(threads)
    exit_with_parent()


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """A worker whose parent died (even by kill -9, which no handler sees) would finish its trial for no one, and
    a resumed run would train the same trial in the same directory beside it: the worker ends within a second."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)  # checkpoints are written atomically: the resumed run starts from the last whole one

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def set_threads(threads: int | None) -> None:
    """Use `threads` intra-op threads (None: leave torch's), except in a trial worker, whose share of the cores
    stands: a config's `train.threads: 2` in each of two workers would put four threads on two cores."""
    if threads and _worker_threads is None:
        torch.set_num_threads(threads)
