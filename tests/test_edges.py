"""Bad input through the CLI: exit code 2, one line on stderr naming the problem, no traceback, nothing written.

Each case runs `sparsearch.cli.main` in this process (the CLI's own code path, fd-level capture of stderr) in a
fresh working folder, and compares every file under it before and after.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest

from hostile import ALIAS_BOMB, compile_args, copy_run, flipped_weights, genotype_file, idx_folder, image_folder, image_tree, yaml_file
from sparsearch.cli import main

TRAIN = ["train", "--set", "data.name=digits", "--set", "model.name=mlp", "--set", "train.epochs=1",
         "--set", "train.checkpoint_every=5", "--name", "t"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and folder under root (the dataset cache aside), with file contents."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if "cache" not in p.relative_to(root).parts}


# ------------------------------------------------------------------------------- files the cases point at

class RunsACommand:
    """A pickle that, when loaded by a careless reader, runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_batches(root: Path) -> list[str]:
    batches = root / "cifar-10-batches-py"
    batches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(pickle.dumps({b"data": RunsACommand(root / "pwned"), b"labels": [0]}))
    return ["data", "info", "cifar10", "--path", str(batches)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny training (with a mid-epoch checkpoint kept aside) for the cases that damage its files."""
    root = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(TRAIN) == 0
    finally:
        os.chdir(cwd)
    return root / "runs" / "t"


def _damaged_checkpoint(how: str):
    def make(root: Path, trained: Path) -> list[str]:
        ckpt = copy_run(trained, root, unfinished=True) / "checkpoints" / "last.ckpt"
        raw = bytearray(ckpt.read_bytes())
        if how == "header bit":
            raw[30] ^= 0x80  # inside the hex checksum: no longer valid text
            ckpt.write_bytes(bytes(raw))
        else:  # a valid checkpoint file whose payload is not a training state
            from sparsearch.train import save_checkpoint

            save_checkpoint(ckpt, {"weights": [1, 2, 3]})
        return list(TRAIN)
    return make


def _damaged_summary(root: Path, trained: Path) -> list[str]:
    where = copy_run(trained, root)
    (where / "summary.json").write_text("{not json")
    return ["compile", str(where)]


def _truncated_weights(root: Path, trained: Path) -> list[str]:
    where = copy_run(trained, root)
    raw = (where / "final.safetensors").read_bytes()
    (where / "final.safetensors").write_bytes(raw[: len(raw) // 2])
    return ["compile", str(where)]


def _other_config(root: Path, trained: Path) -> list[str]:
    copy_run(trained, root)
    return [*TRAIN, "--set", "train.lr=0.5"]


CASES: list[tuple[str, object, str]] = [
    # config values
    ("unknown key", ["--set", "train.epochz=1"], "unknown config key 'train.epochz'"),
    ("wrong type", ["--set", "train.lr=fast"], "train.lr"),
    ("sparsity above 1", ["--set", "sparsity.sparsity=1.5"], "sparsity.sparsity"),
    ("zero batch", ["--set", "data.batch_size=0"], "data.batch_size"),
    ("zero epochs", ["--set", "train.epochs=0"], "train.epochs"),
    ("negative epochs", ["--set", "train.epochs=-3"], "train.epochs"),
    ("nan learning rate", ["--set", "train.lr=.nan"], "finite"),
    ("infinite learning rate", ["--set", "train.lr=.inf"], "finite"),
    ("negative learning rate", ["--set", "train.lr=-0.1"], "train.lr"),
    ("momentum above 1", ["--set", "train.momentum=1.5"], "train.momentum"),
    ("negative seed", ["--set", "seed=-1"], "seed"),
    ("unknown device", ["--set", "train.device=tpu"], "train.device"),
    ("warm-up past the end", ["--set", "train.warmup_epochs=5"], "train.warmup_epochs"),
    ("unknown method", ["--set", "sparsity.method=bogus"], "sparsity.method"),
    ("method without a target", ["--method", "gmp", "--sparsity", "0"], "needs a target"),
    ("N:M that does not divide", ["--method", "nm", "--sparsity", "0.6", "--set", "sparsity.kind=nm:2:5"],
     "divisible by 5"),
    ("N > M", ["--method", "nm", "--sparsity", "0.5", "--set", "sparsity.kind=nm:5:2"], "unknown mask kind"),
    ("no layer matches", ["--method", "static", "--sparsity", "0.5", "--set", "sparsity.include=[nomatch*]"],
     "no maskable layers"),
    ("unknown model", ["--set", "model.name=nope"], "unknown model 'nope'"),
    ("bad model kwargs", ["--set", "model.kwargs={foo: 1}"], "bad arguments for model 'mlp'"),
    ("name climbs out", ["--name", "../x"], "config key 'name'"),
    ("absolute name", ["--name", "/tmp/x"], "config key 'name'"),
    # files and folders
    ("missing config file", ["-c", "nope.yaml"], "config file not found"),
    ("YAML syntax error", yaml_file("train:\n  lr: 0.1\n  epochs: [1\n"), "line 4, column 1"),
    ("YAML not a mapping", yaml_file("- 1\n- 2\n"), "mapping at the top level"),
    ("out_dir below a file", lambda root: (root / "afile").write_text("x") and ["--set", "out_dir=afile/runs"],
     "is a file, not a folder"),
    ("out_dir under /proc", ["--set", "out_dir=/proc/sparsearch-test"], "/proc/sparsearch-test"),
    ("dataset path missing", ["--set", "data.name=cifar10", "--set", "data.path=nope"], "does not exist"),
    ("unknown dataset", ["--set", "data.name=imagenet22k"], "unknown dataset"),
    ("batch larger than the data", ["--set", "data.batch_size=5000"], "larger than the training set"),
    ("corrupt image", image_folder(corrupt=True), "train/dog/1.png"),
    ("empty class folder", image_folder(empty_class=True), "train/cow"),
    ("image declaring 100000x100000 pixels", image_folder(bomb=True), "decompression bomb"),
    ("mixed image sizes", image_folder(mixed=True), "set data.image_size"),
    ("idx: ndim byte past the file", idx_folder("ndim"), "dimensions"),
    ("idx: corrupt gzip", idx_folder("corrupt gz"), "not a readable gzip file"),
    ("idx: 2-D images file", idx_folder("2-D images"), "an idx image file has 3"),
    ("idx: 60 images, 30 labels", idx_folder("fewer labels"), "N images (N, C, H, W) and N labels"),
    ("idx: a label past the classes", idx_folder("label 10"), "outside the 10 classes"),
    # config files and values
    ("YAML alias bomb", yaml_file(ALIAS_BOMB), "aliases (*a) are not allowed"),
    ("duplicate key", yaml_file("train:\n  lr: 0.1\n  lr: 0.2\n"), "key 'lr' appears twice"),
    ("seed past 32 bits", ["--set", "seed=4294967296"], "config key 'seed'"),
    ("run name of 256 characters", ["--name", "r" * 256], "at most 200 characters"),
    ("too many threads", ["--set", "train.threads=100000"], "train.threads"),
    ("genotype concat out of range", genotype_file(normal_concat=[2, 99]), "normal_concat"),
    ("genotype concat empty", genotype_file(reduce_concat=[]), "reduce_concat"),
    ("genotype concat a string", genotype_file(normal_concat="ab"), "normal_concat"),
    ("genotype empty cell", genotype_file(normal=[]), "two edges per node"),
    ("malicious CIFAR batch", _malicious_batches, "posix.system"),
    # other commands
    ("search batch larger than a half", ["search", "--set", "data.name=digits", "--set", "search.batch_size=1000"],
     "larger than the training set"),
    ("compare unknown variant", ["compare", "--set", "data.name=digits", "--set", "compare.variants=[nosuch]"],
     "nosuch"),
    ("compare sparsity out of range", ["compare", "--set", "compare.sparsities=[1.2]"], "compare.sparsities"),
    ("run on a non-genotype model", ["run", "--set", "data.name=digits", "--set", "model.name=mlp"], "genotype"),
    ("config prints no out-of-range value", ["config", "--set", "train.epochs=0"], "train.epochs"),
    ("report of nothing", ["report", "nowhere"], "has no results.json"),
    ("compile of nothing", ["compile", "nowhere"], "no summary.json"),
    # damaged files of an earlier run
    ("checkpoint header bit flipped", _damaged_checkpoint("header bit"), "corrupt"),
    ("checkpoint not a training state", _damaged_checkpoint("payload"), "not a sparsearch training state"),
    ("compile: summary.json not JSON", _damaged_summary, "not a sparsearch training summary"),
    ("compile: truncated weights", _truncated_weights, "cannot load"),
    ("compile: a flipped bit in the weights", flipped_weights, "checksum mismatch"),
    ("compile --batch 0", compile_args("--batch", "0"), "--batch must be in"),
    ("compile --batch -1", compile_args("--batch", "-1"), "--batch must be in"),
    ("compile --batch 10000000", compile_args("--batch", "10000000"), "--batch must be in"),
    ("compile --threads -1", compile_args("--threads", "-1"), "--threads must be in"),
    ("compile --threads 100000", compile_args("--threads", "100000"), "--threads must be in"),
    ("same name, other config", _other_config, "train.lr differ"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capfd, trained):
    _, args, expected = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEARCH_CACHE", str(tmp_path / "cache"))
    if callable(args):
        args = args(tmp_path, trained) if args.__code__.co_argcount == 2 else args(tmp_path)
    argv = args if args[0] in ("train", "search", "run", "compare", "report", "compile", "data", "config") else [*TRAIN, *args]
    before = snapshot(tmp_path)
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and "BytesIO" not in err and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "pwned").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capfd):
    import sparsearch.files

    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sparsearch.files.os, "fsync", full)
    assert main(TRAIN) == 2
    err = capfd.readouterr().err.strip()
    assert err == "sparsearch: error: No space left on device", err
    assert not (tmp_path / "runs").exists()
    assert not list(tmp_path.rglob("*.part"))


# ----------------------------------------------------------------------------------- beyond one bad input

def test_cifar_batches_load_with_the_restricted_unpickler_and_a_hostile_one_runs_nothing(tmp_path, cache_dir):
    import numpy as np

    from sparsearch.data import load_dataset
    from sparsearch.errors import SparsearchError

    rng = np.random.default_rng(0)
    for protocol in (2, 5):  # the official files are protocol 2; numpy's own pickles of today use 5
        folder = tmp_path / f"p{protocol}" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"batch_label": b"x", b"labels": list(range(10)), b"filenames": [b"a.png"] * 10,
                     b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8)}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        ds = load_dataset("cifar10", path=str(folder))
        assert ds.train_x.shape == (50, 3, 32, 32) and ds.test_y.tolist() == list(range(10))
    args = _malicious_batches(tmp_path)
    with pytest.raises(SparsearchError, match="refused, not run"):
        load_dataset("cifar10", path=args[-1])
    assert not (tmp_path / "pwned").exists()


def test_a_damaged_dataset_cache_is_rebuilt_with_one_line(tmp_path, cache_dir, capfd):
    import torch

    from sparsearch.data import load_dataset

    tree = image_tree(tmp_path)
    first = load_dataset("imagefolder", path=str(tree))
    (npz,) = cache_dir.glob("*.npz")
    capfd.readouterr()
    for damage in ("flip", "truncate", "no checksum"):
        raw = bytearray(npz.read_bytes())
        if damage == "flip":
            raw[len(raw) // 2] ^= 0xFF
            npz.write_bytes(bytes(raw))
        elif damage == "truncate":
            npz.write_bytes(bytes(raw[: len(raw) // 3]))
        else:
            npz.with_name(npz.name + ".sha256").unlink()
        again = load_dataset("imagefolder", path=str(tree))
        err = capfd.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "rebuilding it from the source" in err, (damage, err)
        assert torch.equal(again.train_x, first.train_x) and torch.equal(again.test_y, first.test_y)
    load_dataset("imagefolder", path=str(tree))
    assert capfd.readouterr().err == ""  # rebuilt and intact: read silently


def test_a_loss_that_turns_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from sparsearch.config import from_dict
    from sparsearch.errors import SparsearchError
    from sparsearch.pipeline import run_train
    from sparsearch.train import load_checkpoint

    cfg = from_dict({"out_dir": str(tmp_path), "data": {"name": "digits", "batch_size": 64},
                     "model": {"name": "mlp"}, "train": {"epochs": 2, "lr": 1e30, "checkpoint_every": 1}})
    with pytest.raises(SparsearchError, match=r"the loss became (nan|inf) at step (\d+)") as info:
        run_train(cfg, show_progress=False)
    failed_at = int(info.value.args[0].split("at step ")[1].split()[0])
    dense = tmp_path / "run" / "train" / "dense"
    assert not (dense / "summary.json").exists() and not (dense / "final.safetensors").exists()
    kept = load_checkpoint(dense / "checkpoints" / "last.ckpt")
    assert kept["position"]["step"] == failed_at - 1
    assert all(bool(v.isfinite().all()) for v in kept["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------- real processes

SLOW_TRAIN = {"data": {"name": "digits", "batch_size": 32}, "model": {"name": "resnet20", "kwargs": {"width": 8}},
              "train": {"epochs": 4, "lr": 0.05, "log_every": 1, "checkpoint_every": 5, "threads": 1}}


def _cli(tmp_path: Path, out: str, *extra: str) -> list[str]:
    import json
    import sys

    (tmp_path / "c.yaml").write_text(json.dumps(SLOW_TRAIN))
    return [sys.executable, "-m", "sparsearch", "train", "-c", str(tmp_path / "c.yaml"), "--set", f"out_dir={out}", *extra]


def _start_and_wait(cmd: list[str], metrics: Path, lines: int):
    import subprocess
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before the test could act on it"
    return proc, env


@pytest.mark.slow
def test_one_writer_per_run_directory(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    out = tmp_path / "runs"
    long = ("--set", "train.epochs=40")  # still running while the others try
    first, env = _start_and_wait(_cli(tmp_path, str(out), *long), out / "run" / "metrics.jsonl", 20)
    lock = (out / "run" / ".lock").read_text()
    assert f'"pid": {first.pid}' in lock
    for second in (_cli(tmp_path, str(out), *long),  # the same training again, and another command on the same run
                   [sys.executable, "-m", "sparsearch", "search", "--set", "data.name=digits", "--set",
                    f"out_dir={out}", "--set", "search.channels=4", "--set", "search.layers=2"]):
        r = subprocess.run(second, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "in use by another sparsearch process" in r.stderr and f"pid {first.pid}" in r.stderr, r.stderr
    assert first.poll() is None  # the refused ones did not disturb it
    first.send_signal(signal.SIGKILL)  # a dead holder frees the run at once: flock, not a stale file
    first.wait()
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order
    claim = f"from sparsearch.train import exclusive\nwith exclusive({str(out / 'run')!r}): print('held')"
    r = subprocess.run([sys.executable, "-c", claim], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "held", r.stderr
    assert not (out / "run" / ".lock").exists()


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_the_run_resumes_byte_identical(tmp_path):
    import signal
    import subprocess

    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tmp_path, str(tmp_path / "a")), check=True, env=env, capture_output=True, timeout=300)
    metrics = tmp_path / "b" / "run" / "metrics.jsonl"
    proc, env = _start_and_wait(_cli(tmp_path, str(tmp_path / "b")), metrics, 70)  # inside epoch 2 of 4
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines() == [
        "sparsearch: stopped by SIGTERM (the run resumes from its last checkpoint)"], err
    dense = tmp_path / "b" / "run" / "train" / "dense"
    assert not (dense / "summary.json").exists() and (dense / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "b" / "run" / ".lock").exists()
    subprocess.run(_cli(tmp_path, str(tmp_path / "b")), check=True, env=env, capture_output=True, timeout=300)
    for name in ("final.safetensors", "masks.safetensors"):
        a, b = (tmp_path / p / "run" / "train" / "dense" / name for p in "ab")
        assert a.exists() == b.exists()
        if a.exists():
            wa, wb = load_file(a), load_file(b)
            assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)
    assert (tmp_path / "a" / "run" / "metrics.jsonl").read_bytes() == metrics.read_bytes()
