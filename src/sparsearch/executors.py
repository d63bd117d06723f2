"""Executors run independent trials (comparison runs, random-search samples, soup ingredients):
`executor.map(fn, items)` returns one entry per item, in the order of `items`: `fn(item)`, or `Failed` for a
trial that raised (or whose worker died) on every one of its `1 + retries` attempts. `fn` must be a
module-level function and the items picklable, so the same trial code runs in this process (`local`), in
worker processes on this machine (`process`) or on a Ray cluster (`ray`). Trials write into their own
directories and resume from their last checkpoint, so a retry, or a re-run after a crash, only redoes what
is missing. Callers report failures (`raise_failures`); none is dropped silently.

One retry loop serves all three: a backend only submits a trial, waits for the first finished one and
hands back its result (or raises its error).
"""

from __future__ import annotations

import bisect
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import SparsearchError
from .workers import limit_threads, start_worker


@dataclass
class Failed:
    """A trial that failed on every attempt."""

    trial: str  # the item's repr, shortened
    error: str  # the last attempt's error, one line
    attempts: int


class TrialsFailed(SparsearchError):
    pass


def raise_failures(results: Sequence[Any], what: str = "trials") -> None:
    """One-line error naming the failed trials, if any (after all others have finished and been saved)."""
    failed = [r for r in results if isinstance(r, Failed)]
    if failed:
        first = failed[0]
        raise TrialsFailed(f"{len(failed)} of {len(results)} {what} failed after {first.attempts} attempt(s); "
                           f"first: {first.trial}: {first.error}")


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return text[0][:300] if text else type(error).__name__


class TrialProgress:
    """One display for all trials: done / running / queued / failed (a rich bar on a terminal, a line per change
    otherwise). `slots`: how many trials run at once; the rest of those submitted wait."""

    def __init__(self, total: int, label: str, enabled: bool, slots: int = 1):
        self.total, self.label, self.enabled, self.slots = total, label, enabled and total > 0, slots
        self.done = self.failed = 0
        self._bar = None
        if self.enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[info]}"))
            self._task = self._bar.add_task(label, total=total, info="")
            self._bar.start()

    def update(self, *, in_flight: int, finished: bool = False, failed: bool = False, retried: str = "") -> None:
        self.done += finished
        self.failed += failed
        running = min(in_flight, self.slots)
        info = f"{running} running, {in_flight - running} queued, {self.failed} failed"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, info=info)
        elif self.enabled:
            extra = f" (retrying {retried})" if retried else ""
            print(f"{self.label}: {self.done}/{self.total} done, {info}{extra}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class _Backend:
    def submit(self, fn: Callable, item: Any) -> Any: ...
    def first_finished(self, handles: list) -> list: ...
    def result(self, handle: Any) -> Any: ...
    def close(self, running: Sequence = ()) -> None:
        """Let go of the workers; `running`: the handles of trials still in flight (an interrupted map): stop them."""


class _LocalBackend(_Backend):
    """Runs a trial when it is waited for, so progress is drawn between trials."""

    def submit(self, fn, item):
        future = Future()
        future.call = (fn, item)
        return future

    def first_finished(self, handles):
        future = handles[0]
        fn, item = future.call
        try:
            future.set_result(fn(item))
        except Exception as e:  # reported through result(), like a worker's error
            future.set_exception(e)
        return [future]

    def result(self, handle):
        return handle.result()


class _ProcessBackend(_Backend):
    """Spawned processes (spawn, not fork: safe with torch's thread pools). A worker that dies breaks the pool;
    the next submit starts a new one."""

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads, self.pool = workers, threads, None

    def submit(self, fn, item):
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=start_worker, initargs=(self.threads,))
        try:
            return self.pool.submit(fn, item)
        except BrokenProcessPool:
            self.close()
            return self.submit(fn, item)

    def first_finished(self, handles):
        return list(wait(handles, return_when=FIRST_COMPLETED).done)

    def result(self, handle):
        try:
            return handle.result()
        except BrokenProcessPool:
            self.close()  # every trial still in this pool fails with it and is resubmitted to a new one
            raise

    def close(self, running: Sequence = ()):
        if self.pool is not None:
            workers = list((self.pool._processes or {}).values()) if running else []
            self.pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:  # a trial left running would train on, in a folder its run no longer holds
                process.terminate()
            for process in workers:
                process.join(10)
            self.pool = None


def _ray_trial(fn: Callable, item: Any, threads: int) -> Any:
    limit_threads(threads)
    return fn(item)


class _RayBackend(_Backend):
    """Ray tasks, each asking for `threads` CPUs: a local instance by default, or the cluster at `address`
    (the run directory and the data must then lie on a file system every node sees at the same path)."""

    def __init__(self, threads: int, address: str | None):
        try:
            import ray
        except ImportError:
            raise SparsearchError("run.executor=ray needs Ray: pip install 'sparsearch[ray]'") from None
        self.ray, self.threads = ray, threads
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance; clusters bring their own
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     num_cpus=None if address else os.cpu_count())
        self.task = ray.remote(num_cpus=threads, max_retries=0)(_ray_trial)  # retries are ours: one loop for all

    def submit(self, fn, item):
        return self.task.remote(fn, item, self.threads)

    def first_finished(self, handles):
        return self.ray.wait(handles, num_returns=1)[0]

    def result(self, handle):
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:  # the trial's own error, not Ray's wrapper around it
            raise (e.cause if isinstance(e.cause, Exception) else e) from None

    def close(self, running: Sequence = ()):
        for handle in running:  # on a cluster a task outlives this driver: it would train on in a folder no one holds
            self.ray.cancel(handle, force=True)


class Executor:
    def __init__(self, kind: str, workers: int = 1, retries: int = 1, ray_address: str | None = None):
        if kind not in ("local", "process", "ray"):
            raise SparsearchError(f"unknown executor '{kind}' (use local, process or ray)")
        if workers < 1:
            raise SparsearchError(f"run.workers must be at least 1, got {workers}")
        if retries < 0:
            raise SparsearchError(f"run.retries must be at least 0, got {retries}")
        self.kind, self.workers, self.retries, self.ray_address = kind, workers, retries, ray_address
        # cores split between parallel trials so they do not oversubscribe the machine
        self.threads = max(1, (os.cpu_count() or 1) // workers) if kind != "local" else None

    def trial_bars(self, progress: bool) -> bool:
        """Whether trials draw their own training bars: only when they run one at a time in this process, where
        those bars stay readable; otherwise the one trial display (`map(progress=...)`) stands for them."""
        return progress and self.kind == "local"

    def _backend(self) -> _Backend:
        if self.kind == "process":
            return _ProcessBackend(self.workers, self.threads)
        if self.kind == "ray":
            return _RayBackend(self.threads, self.ray_address)
        return _LocalBackend()

    def map(self, fn: Callable, items: Sequence[Any], label: str = "trials", progress: bool = True,
            on_finish: Callable[[int, Any], None] | None = None, after: Sequence[int | None] | None = None) -> list[Any]:
        """`on_finish(index, result)` is called in this process as each trial ends (result or `Failed`), so
        callers can save as they go. `after[i]`, where given, is the index of the trial item i starts from: it is
        submitted once that one has finished, and fails with it (a pruned network waits for its own dense one only,
        so no worker idles at a phase's end). A free worker takes the first ready item in `items`' order, so a
        trial that waited goes before later items (a pruned network soon after its dense one: the checkpoint it
        starts from is needed no longer than that); Ray takes every ready trial at once (its cluster sizes it)."""
        backend = self._backend()
        results: list[Any] = [None] * len(items)
        attempts = [1] * len(items)
        after = list(after) if after is not None else [None] * len(items)
        if len(after) != len(items) or any(a is not None and not 0 <= a < len(items) or a == i for i, a in enumerate(after)):
            raise ValueError(f"`after` must give, per item, None or another item's index; got {after}")
        waiting = {i for i, a in enumerate(after) if a is not None}
        slots = {"local": 1, "process": self.workers}.get(self.kind, len(items))
        bar = TrialProgress(len(items), label, progress, 1 if self.kind == "local" else self.workers)
        index_of: dict[Any, int] = {}
        pending: list[Any] = []  # submission order: the local backend runs trials in it
        ready = [i for i in range(len(items)) if i not in waiting]  # kept sorted: the first goes next

        def submit(i: int) -> None:
            handle = backend.submit(fn, items[i])
            index_of[handle] = i
            pending.append(handle)

        def fill() -> None:
            while ready and len(pending) < slots:
                submit(ready.pop(0))

        def finish(i: int, result: Any) -> None:
            results[i] = result
            bar.update(in_flight=len(pending) + len(ready), finished=True, failed=isinstance(result, Failed))
            if on_finish is not None:
                on_finish(i, result)
            for j in sorted(j for j in waiting if after[j] == i):
                waiting.discard(j)
                if isinstance(result, Failed):
                    finish(j, Failed(repr(items[j])[:200], f"the trial it starts from failed: {result.error}", 0))
                else:
                    bisect.insort(ready, j)

        try:
            fill()
            while pending:
                for handle in backend.first_finished(pending):
                    pending.remove(handle)
                    i = index_of.pop(handle)
                    try:
                        result = backend.result(handle)
                    except Exception as e:  # the trial raised, or its worker died
                        if attempts[i] <= self.retries:
                            attempts[i] += 1
                            submit(i)
                            bar.update(in_flight=len(pending) + len(ready), retried=f"trial {i + 1}: {_one_line(e)}")
                            continue
                        result = Failed(repr(items[i])[:200], _one_line(e), attempts[i])
                    finish(i, result)
                fill()
        finally:
            bar.close()
            backend.close(running=pending)
        return results


def stop_ray() -> None:
    """Shut down the Ray instance this process started or joined (idle Ray processes would disturb timings)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def make_executor(run) -> Executor:
    """The executor the `run` config section describes (`executor`, `workers`, `retries`, `ray_address`)."""
    return Executor(run.executor, run.workers, run.retries, run.ray_address)
