import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from floats import assert_same_sum
from sparsearch.config import Config, TrainConfig, from_dict
from sparsearch.pipeline import build_for, run_train
from sparsearch.train import Callback, CheckpointError, Trainer, load_checkpoint, lr_at, save_checkpoint

TINY = {"data": {"name": "digits", "batch_size": 64}, "model": {"name": "cnn", "kwargs": {"width": 8}},
        "train": {"epochs": 3, "lr": 0.05, "log_every": 5, "checkpoint_every": 7, "warmup_epochs": 0.5}}


def tiny_cfg(tmp_path, **train) -> Config:
    cfg = from_dict({**TINY, "out_dir": str(tmp_path)})
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_training_learns_digits(tmp_path):
    summary = run_train(tiny_cfg(tmp_path, epochs=4, lr=0.1), show_progress=False)
    assert summary["final_test_acc"] > 0.7
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "train/dense/final.safetensors").exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [0, 1, 2, 3]


class Crash(Callback):
    """Raises at one step, after the trainer has checkpointed past it (a crash between checkpoints)."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, trainer):
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


class Counter(Callback):
    """A stateful callback: its state must survive resume."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]

    def summary(self):
        return {"counted_steps": self.steps}


def _fit(cfg, out, callbacks):
    _, model, train_loader, test_loader = build_for(cfg)
    trainer = Trainer(model, train_loader, test_loader, cfg.train, out, callbacks=callbacks, show_progress=False)
    return trainer.fit(), trainer


def test_resume_in_process_is_exact(tmp_path):
    cfg = tiny_cfg(tmp_path)
    ref, ref_trainer = _fit(cfg, tmp_path / "ref", [Counter()])
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, tmp_path / "resumed", [Counter(), Crash(at_step=30)])  # mid-epoch 2, 2 steps after a checkpoint
    got, trainer = _fit(cfg, tmp_path / "resumed", [Counter(), Crash(at_step=-1)])
    for k in ("final_test_acc", "final_test_loss", "steps", "counted_steps"):
        assert got[k] == ref[k], k
    for name, tensor in ref_trainer.model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name]), name
    assert (tmp_path / "ref/metrics.jsonl").read_text() == (tmp_path / "resumed/metrics.jsonl").read_text()
    # where each part trained: the killed sitting up to its last checkpoint (step 28), then the resumed one
    total = ref["steps"]
    assert [s["steps"] for s in ref["sittings"]] == [[0, total]]
    assert [s["steps"] for s in got["sittings"]] == [[0, 28], [28, total]]
    assert all(s["machine"]["torch"] == torch.__version__ and s["seconds"] >= 0 for s in got["sittings"])
    assert got["train_seconds"] == pytest.approx(sum(s["seconds"] for s in got["sittings"]), abs=0.01)


def test_an_attempt_killed_before_its_first_checkpoint_leaves_no_lines(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=1)
    _fit(cfg, tmp_path / "ref", [])
    log = tmp_path / "run/metrics.jsonl"
    log.parent.mkdir()
    log.write_text('{"stage": "other", "kind": "note"}\n')  # another stage's line, which stays
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, tmp_path / "run", [Crash(at_step=6)])  # the first checkpoint comes at step 7
    assert not (tmp_path / "run/checkpoints").exists() and '"step": 5' in log.read_text()
    with open(log, "a") as fh:
        fh.write('{"stage": "train", "kind": "st')  # a line the kill tore
    _fit(cfg, tmp_path / "run", [])
    assert log.read_text() == '{"stage": "other", "kind": "note"}\n' + (tmp_path / "ref/metrics.jsonl").read_text()


def test_checkpoint_from_before_sittings_names_no_machine_for_its_steps(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=1)
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, tmp_path / "run", [Crash(at_step=9)])  # after the checkpoint at step 7
    path = tmp_path / "run/checkpoints/last.ckpt"
    state = load_checkpoint(path)
    del state["sittings"]  # as an older version wrote it
    save_checkpoint(path, state)
    got, _ = _fit(cfg, tmp_path / "run", [Crash(at_step=-1)])
    first, now = got["sittings"]
    assert first["machine"] is None and first["steps"] == [0, state["position"]["step"]]
    assert now["machine"]["cpu"] and now["steps"] == [state["position"]["step"], got["steps"]]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """A real SIGKILL of a training subprocess, then the same command again."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({**TINY, "model": {"name": "resnet20", "kwargs": {"width": 8}},
                                    "data": {"name": "digits", "batch_size": 32},
                                    "train": {**TINY["train"], "epochs": 4, "log_every": 1, "checkpoint_every": 5}}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def cmd(out):
        return [sys.executable, "-m", "sparsearch", "train", "-c", str(cfg_file), "--set", f"out_dir={out}",
                "--set", "train.threads=1"]

    subprocess.run(cmd(tmp_path / "a"), check=True, env=env, capture_output=True)

    metrics = tmp_path / "b/run/metrics.jsonl"
    proc = subprocess.Popen(cmd(tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 70:  # inside epoch 2 of 4
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b/run/train/dense/summary.json").exists()
    assert (tmp_path / "b/run/train/dense/checkpoints/last.ckpt").exists()

    subprocess.run(cmd(tmp_path / "b"), check=True, env=env, capture_output=True)
    wa = load_file(tmp_path / "a/run/train/dense/final.safetensors")
    wb = load_file(tmp_path / "b/run/train/dense/final.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert (tmp_path / "a/run/metrics.jsonl").read_text() == metrics.read_text()
    sa, sb = (json.loads((tmp_path / p / "run/train/dense/summary.json").read_text()) for p in "ab")
    for k in ("final_test_acc", "final_test_loss", "best_test_acc", "steps"):
        assert sa[k] == sb[k]


def test_checkpoint_rejects_corruption(tmp_path):
    path = save_checkpoint(tmp_path / "x.ckpt", {"w": torch.arange(10.0), "meta": {"epoch": 3}})
    assert load_checkpoint(path)["meta"]["epoch"] == 3
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)
    (tmp_path / "y.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a sparsearch checkpoint"):
        load_checkpoint(tmp_path / "y.ckpt")
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.part"))


def test_schedules():
    cfg = TrainConfig(lr=0.1, warmup_epochs=1, min_lr=0.0)
    lrs = [lr_at(s, 100, 10, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # cosine decays monotonically after warm-up
    assert lrs[-1] < 0.001
    step = TrainConfig(lr=1.0, schedule="step", step_milestones=[0.5, 0.75], step_gamma=0.1)
    assert [lr_at(s, 100, 10, step) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_gradient_clipping_and_label_smoothing_run(tmp_path):
    summary = run_train(tiny_cfg(tmp_path, epochs=1, grad_clip=1.0, label_smoothing=0.1, optimizer="adamw",
                                 lr=1e-3), show_progress=False)
    assert summary["steps"] == 22


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "sparsearch", *args], capture_output=True, text=True,
                              cwd=tmp_path)

    r = run("train", "--set", "train.epochz=1")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "unknown config key 'train.epochz'" in r.stderr
    r = run("train", "--set", "data.name=cifar10", "--set", f"data.path={tmp_path}/nope")
    assert r.returncode == 2 and "does not exist" in r.stderr and not (tmp_path / "runs").exists()
    r = run("--help")
    assert r.returncode == 0 and "train" in r.stdout


def test_run_dir_accepts_settings_added_since_and_names_real_changes(tmp_path):
    import yaml

    from sparsearch.config import load_config
    from sparsearch.errors import SparsearchError
    from sparsearch.train import prepare_run_dir

    cfg = load_config(None, [f"out_dir={tmp_path}"])
    written = prepare_run_dir(cfg) / "config.yaml"
    older = yaml.safe_load(written.read_text())
    del older["nm"]["decay"]  # as written by a version that did not have this setting yet
    written.write_text(yaml.safe_dump(older))
    prepare_run_dir(cfg)  # the same run: accepted
    with pytest.raises(SparsearchError, match=r"train\.lr differ"):
        prepare_run_dir(load_config(None, [f"out_dir={tmp_path}", "train.lr=0.5"]))


def test_channels_last_trains_the_same_function_and_float16_needs_cuda(tmp_path):
    plain = run_train(tiny_cfg(tmp_path / "a", epochs=1), show_progress=False)
    nhwc = run_train(tiny_cfg(tmp_path / "b", epochs=1, channels_last=True), show_progress=False)
    assert nhwc["final_test_loss"] == pytest.approx(plain["final_test_loss"], rel=1e-3)
    bf16 = run_train(tiny_cfg(tmp_path / "c", epochs=1, amp=True, channels_last=True), show_progress=False)
    assert bf16["final_test_loss"] == pytest.approx(plain["final_test_loss"], rel=0.1)  # bfloat16: 8 mantissa bits
    if not torch.cuda.is_available():  # refused when the config is read, before anything is written
        from sparsearch.config import ConfigError

        with pytest.raises(ConfigError, match="float16 needs CUDA"):
            from_dict({**TINY, "out_dir": str(tmp_path / "d"), "train": {**TINY["train"], "amp": True, "amp_dtype": "float16"}})


def test_a_cuda_device_without_cuda_is_refused_with_what_to_set(monkeypatch):
    from sparsearch.errors import SparsearchError
    from sparsearch.train.steps import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SparsearchError, match="train.device is cuda:1, but .* sees no CUDA device: set train.device=auto"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_nhwc_batchnorm_is_torchs_function_and_leaves_plain_layers_behind(momentum):
    """Same outputs, gradients and running statistics as nn.BatchNorm2d (8 channels: the NCHW backward; 16:
    torch's, handed a dense gradient, here a channel slice's), and outside the block plain nn.BatchNorm2d again."""
    import copy

    from sparsearch.train.nhwc import NHWCBatchNorm2d, nhwc_batchnorm

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8, momentum=momentum), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 1, bias=False), torch.nn.BatchNorm2d(16, affine=False, momentum=momentum))
    plain = plain.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    x = torch.randn(4, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    # a random probe, not a sum of squares: that of a BatchNorm's output is constant, so its gradient is pure
    # cancellation, noise whose float error has no scale to be measured against
    probe = torch.randn(4, 8, 8, 8)
    for _ in range(3):
        (plain(x)[:, :8] * probe).sum().backward()
    with nhwc_batchnorm(fast):
        assert type(fast[1]) is NHWCBatchNorm2d and type(fast[4]) is NHWCBatchNorm2d
        for _ in range(3):
            out = fast(x)
            (out[:, :8] * probe).sum().backward()
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert type(fast[1]) is type(fast[4]) is torch.nn.BatchNorm2d
    # per step: the 3x3 conv (27 terms), the 1x1 (8), BatchNorm's statistics over 4 x 8 x 8 positions; 3 steps
    step = 27 + 8 + 2 * 4 * 8 * 8
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        if a.is_floating_point():
            assert_same_sum(b, a, n_terms=3 * step)
        else:
            assert torch.equal(a, b), name
    for a, b in zip(plain.parameters(), fast.parameters()):  # gradients summed over 3 steps, forward and back
        assert_same_sum(b.grad, a.grad, n_terms=3 * 2 * step)


@pytest.mark.parametrize("channels", [16, 24])
def test_the_nhwc_batchnorm_in_bf16_is_torchs_kernel_handed_a_dense_gradient(channels):
    """bf16 (autocast's activations): torch's forward, and torch's backward kernel on a channels-last copy of a
    channel slice's gradient (20-50x faster than on the slice), bit for bit what it gives on that dense gradient."""
    import copy

    from sparsearch.train.nhwc import nhwc_batchnorm

    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(channels)
    fast = copy.deepcopy(plain)
    x = torch.randn(4, channels, 6, 6).contiguous(memory_format=torch.channels_last).to(torch.bfloat16)
    wide = torch.randn(4, 3 * channels, 6, 6).contiguous(memory_format=torch.channels_last).to(torch.bfloat16)
    grad = wide[:, channels:2 * channels]  # what torch.cat's backward hands each input
    xs = [x.clone().requires_grad_() for _ in range(2)]
    want = plain(xs[0])
    want.backward(grad.contiguous(memory_format=torch.channels_last))
    with nhwc_batchnorm(fast):
        got = fast(xs[1])
        got.backward(grad)
    assert torch.equal(got, want) and torch.equal(xs[1].grad, xs[0].grad)
    for a, b in zip(plain.parameters(), fast.parameters()):
        assert torch.equal(a.grad, b.grad)
    for a, b in zip(plain.buffers(), fast.buffers()):  # running statistics
        assert torch.equal(a, b)


def test_the_trainer_takes_a_users_optimizer_and_loss(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=1, lr=0.01)
    _, model, train_loader, test_loader = build_for(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    calls = []

    def loss(logits, targets):
        calls.append(len(targets))
        return torch.nn.functional.nll_loss(logits.log_softmax(1), targets)

    trainer = Trainer(model, train_loader, test_loader, cfg.train, tmp_path / "t", optimizer=optimizer, loss=loss,
                      show_progress=False)
    summary = trainer.fit()
    assert trainer.optimizer is optimizer and len(calls) == summary["steps"] == len(train_loader)
    assert optimizer.param_groups[0]["lr"] < 1.0  # the configured schedule drives it
    assert "exp_avg" in optimizer.state[next(iter(model.parameters()))]  # Adam's own state: it did the steps


def test_the_sparsity_module_example_runs():
    import textwrap

    from sparsearch import sparsity as sp
    from sparsearch.models import build_model

    lines = [line for line in sp.__doc__.splitlines() if line.startswith("    ")]
    model = build_model("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    exec(textwrap.dedent("\n".join(lines)), {"model": model, "optimizer": optimizer})  # noqa: S102 - our own docstring
    assert sp.masked_layers(model)
