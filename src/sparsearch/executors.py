"""Executors run independent trials (random-search samples now; sweeps later). Anything with
`map(fn, items) -> list` is one: results come back in the order of `items`. `fn` must be a module-level
function and the items picklable, so the same trial code runs in this process, in worker processes, or
(issue 8) on a Ray cluster. Trials write into their own directories and skip work that is already
finished, so a re-run after a crash only runs what is missing."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

from .errors import SparsearchError

T = TypeVar("T")
R = TypeVar("R")


class LocalExecutor:
    """One trial after another, in this process."""

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [fn(item) for item in items]


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


class ProcessExecutor:
    """`workers` spawned processes (spawn, not fork: safe with torch's thread pools); the cores are split
    between them so parallel trials do not oversubscribe the machine."""

    def __init__(self, workers: int):
        if workers < 1:
            raise SparsearchError(f"run.workers must be at least 1, got {workers}")
        self.workers = workers

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_limit_threads, initargs=(threads,)) as pool:
            return list(pool.map(fn, items))


def make_executor(kind: str, workers: int = 1):
    if kind == "local":
        return LocalExecutor()
    if kind == "process":
        return ProcessExecutor(workers)
    raise SparsearchError(f"unknown executor '{kind}' (use local or process)")
