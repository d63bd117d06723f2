"""Trial executors (local, process, Ray): order, retries after an error or a dead worker, failures reported; and the
same comparison through the local and the Ray executor giving the same results."""

import json
import operator
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsearch.executors import Executor, Failed, TrialsFailed, raise_failures

KINDS = ["local", "process", "ray"]


def _flaky(item: tuple[str, int, str]) -> int:
    """Fails (`how`: raise, or kill its worker) on the first attempt for each marker file, then succeeds."""
    marker, value, how = item
    if not os.path.exists(marker):
        Path(marker).touch()
        if how == "die":
            os._exit(3)
        raise RuntimeError(f"flaky trial {value}")
    return value * 10


def _always_fails(value: int) -> int:
    raise ValueError(f"trial {value} is broken")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module; its workers import this test module, so they need tests/ on the path."""
    ray = pytest.importorskip("ray")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _executor(kind: str, request, **kwargs) -> Executor:
    if kind == "ray":
        request.getfixturevalue("ray_local")
    return Executor(kind, **{"workers": 2, **kwargs})


def _threads_after_asking_for(threads: int) -> int:
    import torch

    from sparsearch.workers import set_threads

    set_threads(threads)  # what a trial's Trainer does with a config's `train.threads`
    return torch.get_num_threads()


@pytest.mark.parametrize("kind", ["process", "ray"])
def test_a_trial_worker_keeps_its_share_of_the_cores(kind, request):
    """A trial asking for more threads than its worker's share keeps the share (two workers of 2 threads on two
    cores would run ~10x slower); in this process, the request stands."""
    import torch

    executor = _executor(kind, request)
    more = executor.threads + 1
    assert executor.map(_threads_after_asking_for, [more, more], progress=False) == [executor.threads] * 2
    before = torch.get_num_threads()
    try:
        assert _threads_after_asking_for(more) == more
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", KINDS)
def test_results_keep_the_order_of_the_items(kind, request):
    assert _executor(kind, request).map(operator.neg, [3, 1, 2], progress=False) == [-3, -1, -2]


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_trial_is_retried_then_reported(kind, request, tmp_path):
    items = [(str(tmp_path / f"m{i}"), i, "raise") for i in range(3)]
    finished = []
    results = _executor(kind, request, retries=1).map(_flaky, items, progress=False,
                                                      on_finish=lambda i, r: finished.append(i))
    assert results == [0, 10, 20] and sorted(finished) == [0, 1, 2]
    broken = _executor(kind, request, retries=2).map(_always_fails, [1, 2], progress=False)
    assert all(isinstance(r, Failed) and r.attempts == 3 and "trial" in r.error for r in broken)
    with pytest.raises(TrialsFailed, match="2 of 2 things failed after 3 attempt.*ValueError: trial 1 is broken"):
        raise_failures(broken, "things")


def _after_its_prerequisite(item: tuple[str, str | None]) -> str:
    """Writes its marker; one with a prerequisite checks that the prerequisite's marker is already there."""
    marker, needs = item
    if needs is not None and not os.path.exists(needs):
        raise AssertionError(f"{marker} started before {needs}")
    if marker.endswith("broken"):
        raise ValueError("broken dense run")
    Path(marker).touch()
    return marker


@pytest.mark.parametrize("kind", ["local", "process"])
def test_a_trial_starts_after_the_one_it_starts_from_and_fails_with_it(kind, request, tmp_path):
    dense, broken = str(tmp_path / "dense"), str(tmp_path / "broken")
    items = [(dense, None), (broken, None), (str(tmp_path / "pruned"), dense), (str(tmp_path / "orphan"), broken),
             (str(tmp_path / "static"), None)]
    results = _executor(kind, request, retries=0).map(_after_its_prerequisite, items, progress=False,
                                                      after=[None, None, 0, 1, None])
    assert results[0] == dense and results[2] == str(tmp_path / "pruned") and results[4] == str(tmp_path / "static")
    assert isinstance(results[1], Failed) and isinstance(results[3], Failed)
    assert "the trial it starts from failed" in results[3].error and not (tmp_path / "orphan").exists()


def _started(item: tuple[str, str]) -> str:
    with open(item[0], "a") as log:
        log.write(item[1] + "\n")
    return item[1]


@pytest.mark.parametrize("kind", ["local", "process"])
def test_a_free_worker_takes_the_first_ready_trial_so_a_pruning_follows_its_dense_one(kind, request, tmp_path):
    """A dense checkpoint lives under runs/, which may not outlive a sitting: its pruning trains as soon as it is
    ready, before later comparisons' trainings, not after all of them."""
    log = str(tmp_path / "order")
    items = [(log, "dense a"), (log, "pruned a"), (log, "dense b"), (log, "pruned b")]
    _executor(kind, request, retries=0, workers=1).map(_started, items, progress=False, after=[None, 0, None, 2])
    assert Path(log).read_text().split("\n")[:-1] == ["dense a", "pruned a", "dense b", "pruned b"]


@pytest.mark.parametrize("kind", ["process", "ray"])
def test_a_trial_whose_worker_dies_is_retried(kind, request, tmp_path):
    items = [(str(tmp_path / "dies"), 1, "die"), (str(tmp_path / "fine"), 2, "none")]
    (tmp_path / "fine").touch()
    assert _executor(kind, request, retries=1).map(_flaky, items, progress=False) == [10, 20]
    (tmp_path / "dies").unlink()
    [result, _] = _executor(kind, request, retries=0).map(_flaky, items, progress=False)
    assert isinstance(result, Failed)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_process_worker_ends_when_the_process_that_started_it_is_stopped(tmp_path, how):
    """Otherwise it trains on for no one, and a resumed run trains the same trial in the same directory beside it.
    SIGKILL: the worker sees its parent go. SIGTERM, with the CLI's handler: the parent stops the map and lets go
    of the run's folder, so it must stop its workers itself (it once waited for them, holding nothing, an hour)."""
    import signal

    marker = tmp_path / "started"
    code = ("import signal, sys; from sparsearch.cli import _terminate; from sparsearch.executors import Executor; "
            "from slow_trial import announce_then_sleep; signal.signal(signal.SIGTERM, _terminate)\n"
            "try:\n    Executor('process', workers=1, retries=0).map(announce_then_sleep, [sys.argv[1]], progress=False)\n"
            "except KeyboardInterrupt:\n    sys.exit(143)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "helpers"),
                                                        os.environ.get("PYTHONPATH", "")])}
    parent, workers = subprocess.Popen([sys.executable, "-c", code, str(marker)], env=env), []
    try:
        _wait_for(marker.exists, 120, "the trial never started")
        workers = [pid for pid in _children(parent.pid) if "spawn_main" in _cmdline(pid)]
        assert workers, "no worker process found"
        os.kill(parent.pid, getattr(signal, how))
        assert parent.wait(timeout=60) == (143 if how == "SIGTERM" else -signal.SIGKILL)
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 30, f"workers {workers} outlived their parent")
    finally:
        for pid in [parent.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _wait_for(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state, parent, ...); none once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*") if _stat(p.name)[1:2] == [str(pid)]]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


def test_bad_executor_settings_are_refused():
    with pytest.raises(Exception, match="unknown executor 'slurm'"):
        Executor("slurm")
    with pytest.raises(Exception, match="run.retries must be at least 0"):
        Executor("local", retries=-1)


def _compare_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["compare", "--set", f"out_dir={tmp_path}", "--name", "cmp", "--set", "data.name=digits",
            "--set", "data.train_subset=256", "--set", "model.name=cnn", "--set", "model.kwargs={width: 8}",
            "--set", "train.epochs=1", "--set", "train.log_every=0", "--set", "oneshot.finetune_epochs=1",
            "--set", "compare.variants=[static-uniform, oneshot]", "--set", "compare.sparsities=[0.8]",
            "--set", "compare.seeds=[0, 1]", *extra]


def _rows(path: Path) -> list[tuple]:
    rows = json.loads(path.read_text())["rows"]
    return sorted((r["seed"], r["variant"], r["sparsity"], r["test_acc"], r["weight_density"], r["params_nonzero"])
                  for r in rows)


@pytest.mark.slow
def test_comparison_gives_the_same_results_locally_and_on_ray(tmp_path, cache_dir):
    pytest.importorskip("ray")
    from sparsearch.cli import main

    assert main(_compare_args(tmp_path / "local")) == 0
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "sparsearch", *_compare_args(tmp_path / "ray", "--executor", "ray")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compare: 6/6 done" in done.stdout or "compare: 4/4 done" in done.stdout
    local, ray = _rows(tmp_path / "local" / "cmp" / "compare" / "results.json"), _rows(
        tmp_path / "ray" / "cmp" / "compare" / "results.json")
    assert [r[:3] for r in local] == [(0, "dense", 0.0), (0, "oneshot", 0.8), (0, "static-uniform", 0.8),
                                      (1, "dense", 0.0), (1, "oneshot", 0.8), (1, "static-uniform", 0.8)]
    assert local == ray


def test_a_failed_comparison_run_is_listed_and_raised(tmp_path, cache_dir, monkeypatch):
    from sparsearch.cli import main
    from sparsearch.pipeline import compare

    real = compare.run_job

    def broken_oneshot(job):
        if job.variant == "oneshot":
            raise RuntimeError("out of memory (simulated)")
        return real(job)

    monkeypatch.setattr(compare, "run_job", broken_oneshot)
    assert main(_compare_args(tmp_path, "--set", "compare.seeds=[0]")) == 2
    out = tmp_path / "cmp" / "compare"
    failed = json.loads((out / "results.json").read_text())["failed"]
    assert [f["trial"] for f in failed] == ["seed 0 oneshot-0.8"] and failed[0]["attempts"] == 2
    assert "seed 0 oneshot-0.8: RuntimeError: out of memory (simulated)" in (out / "table.md").read_text()
    assert {r[1] for r in _rows(out / "results.json")} == {"dense", "static-uniform"}


def test_the_parts_of_one_comparison_are_one_queue_and_must_differ_in_compare_only(tmp_path, cache_dir, monkeypatch):
    """The book's claims share a run and its dense networks: as one queue, the dense run a later part's pruning
    starts from goes first, and no worker idles between the parts."""
    from sparsearch.config import ConfigError, from_dict
    from sparsearch.pipeline import compare

    base = {"out_dir": str(tmp_path), "name": "cmp", "data": {"name": "digits", "train_subset": 256},
            "model": {"name": "cnn", "kwargs": {"width": 8}}, "train": {"epochs": 1, "log_every": 0}}
    parts = [from_dict({**base, "compare": {"variants": variants, "sparsities": [0.8], "seeds": [0]}})
             for variants in (["static-uniform"], ["oneshot", "static-uniform"])]
    ran = []

    def quick(job):
        ran.append(job.name)
        return {"variant": job.variant, "sparsity": job.cfg.sparsity.sparsity, "seed": job.cfg.seed, "test_acc": 0.5,
                "weight_density": 1.0, "params_nonzero": 1, "macs_effective": 1, "train_seconds": 0.0}

    monkeypatch.setattr(compare, "run_job", quick)
    compare.run_compare(parts, show_progress=False)
    assert ran == ["dense", "static-uniform-0.8", "oneshot-0.8"]  # each run once, the shared dense one first
    longer = from_dict({**base, "train": {"epochs": 2, "log_every": 0}})
    with pytest.raises(ConfigError, match="part 1 differs elsewhere"):
        compare.run_compare([parts[0], longer], show_progress=False)


def test_comparisons_of_other_runs_are_one_queue_each_with_its_own_results(tmp_path, cache_dir, monkeypatch):
    """The book's claim 1: four runs (other models) as one queue; each pruned network waits for its own run's dense
    one, and each run keeps its rows; runs on other executors, or one run given twice, are refused."""
    from sparsearch.config import ConfigError, from_dict
    from sparsearch.pipeline import compare

    def cfg(name, width, **run):
        return from_dict({"out_dir": str(tmp_path), "name": name, "data": {"name": "digits", "train_subset": 256},
                          "model": {"name": "cnn", "kwargs": {"width": width}}, "train": {"epochs": 1, "log_every": 0},
                          "run": run, "compare": {"variants": ["oneshot"], "sparsities": [0.8], "seeds": [0, 1]}})
    ran = []

    def quick(job):
        ran.append((Path(job.run_dir).name, job.cfg.seed, job.name))
        return {"variant": job.variant, "sparsity": job.cfg.sparsity.sparsity, "seed": job.cfg.seed,
                "test_acc": job.cfg.model.kwargs["width"] / 100, "weight_density": 1.0, "params_nonzero": 1,
                "macs_effective": 1, "train_seconds": 0.0}

    monkeypatch.setattr(compare, "run_job", quick)
    outs = compare.run_comparisons([(cfg("a", 8), {(0, "dense", 0.0), (0, "oneshot", 0.8)}), ([cfg("b", 4)], set())], show_progress=False)
    assert [o.parent.name for o in outs] == ["a", "b"]
    # a's seed 0 is recorded (the book's ledger): only its seed 1 trains
    assert sorted(ran) == [("a", 1, "dense"), ("a", 1, "oneshot-0.8"), ("b", 0, "dense"), ("b", 0, "oneshot-0.8"),
                           ("b", 1, "dense"), ("b", 1, "oneshot-0.8")]
    assert all(ran.index((run, seed, "dense")) < ran.index((run, seed, "oneshot-0.8")) for run, seed, _ in ran)
    assert {r[:3] for r in _rows(outs[0] / "results.json")} == {(1, "dense", 0.0), (1, "oneshot", 0.8)}
    assert len(_rows(outs[1] / "results.json")) == 4
    assert all(r["test_acc"] == 0.04 for r in json.loads((outs[1] / "results.json").read_text())["rows"])
    with pytest.raises(ConfigError, match="run sections must agree"):
        compare.run_comparisons([(cfg("c", 8), set()), (cfg("d", 8, workers=1), set())], show_progress=False)
    with pytest.raises(ConfigError, match="one run directory"):
        compare.run_comparisons([(cfg("e", 8), set()), (cfg("e", 8), set())], show_progress=False)


def test_a_training_process_keeps_freed_memory_unless_told_not_to():
    """allocator.py: glibc keeps large freed blocks (no page faults on every step's activations); the CLI and the
    trial workers set it; SPARSEARCH_ALLOCATOR=default leaves the allocator alone."""
    import ctypes.util
    import os
    import platform
    import subprocess
    import sys

    code = "from sparsearch.allocator import keep_freed_memory as k; print(k(), k())"
    glibc = platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c") is not None
    for env, want in (({}, f"{glibc} {glibc}"), ({"SPARSEARCH_ALLOCATOR": "default"}, "False False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}).stdout.strip()
        assert out == want


def _slow_or_quick(item: tuple[str, str]) -> str:
    """("slow", folder): says it started, then writes a heartbeat every 0.1 s for a minute. ("quick", folder):
    returns once the slow one has started, so the map is interrupted while it runs."""
    kind, folder = item
    if kind == "quick":
        deadline = time.monotonic() + 120
        while not (Path(folder) / "beat").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return kind
    for beat in range(600):
        (Path(folder) / "beat").write_text(str(beat))
        time.sleep(0.1)
    return kind


def _beating(beat: Path) -> bool:
    before = beat.read_text()
    time.sleep(1.0)
    return beat.read_text() != before


@pytest.mark.parametrize("kind", ["process", "ray"])
def test_an_interrupted_map_stops_the_trials_still_running(kind, request, tmp_path):
    """Ctrl-C or SIGTERM in the process that holds the run: its trials must not train on behind it."""
    def interrupt(i, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _executor(kind, request).map(_slow_or_quick, [("slow", str(tmp_path)), ("quick", str(tmp_path))],
                                     progress=False, on_finish=interrupt)
    # stopped within 30 s however loaded the machine is; a trial left running beats for a minute
    _wait_for(lambda: not _beating(tmp_path / "beat"), 30, "the interrupted trial went on running")
