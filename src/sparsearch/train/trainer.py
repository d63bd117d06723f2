"""The one training loop. Pruning schedules, sparse-training updates and architecture search plug in as
callbacks; everything stateful is checkpointed, so a run killed at any step resumes to the same result."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..config import TrainConfig
from ..data import TensorLoader
from ..errors import SparsearchError
from ..files import write_json
from ..host import machine
from ..models import split_logits
from ..workers import set_threads
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .metrics import MetricsLog, Reporter
from .nhwc import nhwc_batchnorm
from .precision import autocast, mixed_precision
from .schedule import build_optimizer, lr_at, set_lr
from .sparse import sparse_kernels
from .steps import evaluate, resolve_device, save_final


class Callback:
    """Hooks into `Trainer.fit`. Override what you need; keep all state in `state_dict()` so resume is exact."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_start(self, trainer: Trainer) -> None: ...  # trainer.current_batch is set, no forward yet
    def on_before_optimizer_step(self, trainer: Trainer) -> None: ...  # gradients are ready
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...  # before evaluation
    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...  # may add entries
    def on_train_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def summary(self) -> dict[str, Any]:
        """Entries to add to the run's summary.json."""
        return {}


class Trainer:
    """Trains `model` on `train_loader` for `cfg.epochs`, evaluating on `eval_loader` after each epoch.
    `optimizer` and `loss(logits, targets)` replace the configured SGD/Adam and cross-entropy; the learning rate
    still follows `cfg`'s schedule (set on every parameter group each step).

    Writes into `out_dir`: `checkpoints/last.ckpt` (resumable state), `final.safetensors` (weights) and
    `summary.json`; metric lines go to `metrics` (the run's shared `metrics.jsonl`).
    """

    def __init__(self, model: nn.Module, train_loader: TensorLoader, eval_loader: TensorLoader | None,
                 cfg: TrainConfig, out_dir: str | Path, *, callbacks: list[Callback] | tuple = (),
                 metrics: MetricsLog | None = None, param_groups: list[dict] | None = None,
                 optimizer: torch.optim.Optimizer | None = None, loss: Callable | None = None,
                 show_progress: bool = True):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        if cfg.amp and cfg.amp_dtype == "float16" and self.device.type != "cuda":
            raise SparsearchError("train.amp_dtype float16 needs CUDA; use bfloat16 on the CPU")
        # float16 gradients underflow without scaling; bfloat16 has float32's range and needs none
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp and cfg.amp_dtype == "float16" else None
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        self.metrics = metrics or MetricsLog(self.out_dir / "metrics.jsonl")
        # a user's optimizer and loss, or the configured ones; either way `cfg`'s schedule sets the learning rate
        self.optimizer = optimizer or build_optimizer(param_groups or [p for p in model.parameters() if p.requires_grad], cfg)
        self.criterion = loss or nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise SparsearchError(f"{self.out_dir}: {len(train_loader.x)} training examples make no batch of "
                                  f"{train_loader.batch_size}, so not one step would train; lower the batch size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.reporter = Reporter(self.metrics.stage, enabled=show_progress and distributed.is_main())
        # position and epoch accumulators: all part of the checkpoint
        self.epoch, self.batch, self.step = 0, 0, 0
        self._acc = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        self.last_eval: dict[str, float] = {}
        self.best_acc = 0.0
        self.elapsed = 0.0
        # where it trained: one entry a fit() (a resumed run may finish on another sitting's CPU, whose bf16 arithmetic
        # and speed differ), each {"machine", "steps": [first, last], "seconds"}; the current one is the last
        self.sittings: list[dict[str, Any]] = []
        self.resyncs = 0  # under torchrun: steps after which a rank's masks differed and it took rank 0's state
        self.loss: torch.Tensor | None = None  # the current step's loss, for callbacks
        self.current_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------------- checkpointing
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.ckpt"

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "position": {"epoch": self.epoch, "batch": self.batch, "step": self.step},
            "accumulators": dict(self._acc),
            "last_eval": dict(self.last_eval),
            "best_acc": self.best_acc,
            "elapsed": self.elapsed,
            "sittings": self._sittings(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "rng": rng_state(),
            "metrics_offset": self.metrics.offset(),
            **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [k for k in ("model", "optimizer", "position", "accumulators", "callbacks", "rng", "metrics_offset")
                   if k not in state]
        if missing:
            raise CheckpointError(f"{self.checkpoint_path} is not a sparsearch training state (no {', '.join(missing)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        pos = state["position"]
        self.epoch, self.batch, self.step = pos["epoch"], pos["batch"], pos["step"]
        self._acc = dict(state["accumulators"])
        self.last_eval = dict(state["last_eval"])
        self.best_acc = state["best_acc"]
        self.elapsed = state["elapsed"]
        # a checkpoint from before sittings were recorded: its steps ran on a machine nobody wrote down
        unrecorded = {"machine": None, "steps": [0, self.step], "seconds": round(self.elapsed, 3)}
        self.sittings = state.get("sittings") or ([unrecorded] if self.step else [])
        if len(state["callbacks"]) != len(self.callbacks):
            raise RuntimeError("checkpoint was written with a different set of callbacks")
        for cb, cb_state in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(cb_state)
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.metrics.truncate(state["metrics_offset"])  # drop lines logged after this checkpoint

    def save(self) -> None:
        if distributed.is_main():  # under torchrun the ranks hold the same state; rank 0 writes it
            save_checkpoint(self.checkpoint_path, self.state_dict())

    # ---------------------------------------------------------------------------------------- the loop
    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.json"

    def fit(self) -> dict[str, Any]:
        set_threads(self.cfg.threads)
        if self.cfg.resume and self.summary_path.exists():
            return json.loads(self.summary_path.read_text())  # finished earlier: nothing to do
        if self.cfg.resume and self.checkpoint_path.exists():
            self.load_state_dict(load_checkpoint(self.checkpoint_path, map_location=self.device))
        if self.step == 0:  # lines an earlier attempt logged before its first checkpoint are not this run's
            self.metrics.forget_stage()
        self.sittings = [*self._sittings(), {"machine": machine(), "steps": [self.step, self.step], "seconds": 0.0,
                                             "elapsed_before": self.elapsed}]
        self._call("on_train_start")
        self.step_model = distributed.wrap(self.model)  # after callbacks that attach masks or scores
        try:
            with (nhwc_batchnorm(self.model, self.cfg.channels_last), sparse_kernels(self.model, self.cfg.sparse_kernels),
                  mixed_precision(self.device.type, self.cfg.amp, self.cfg.amp_dtype)):
                while self.epoch < self.cfg.epochs:
                    self._run_epoch()
        finally:
            self.reporter.close()
        self._call("on_train_end")
        summary = self._finish()
        distributed.barrier()  # the other ranks read what rank 0 has just written
        return summary

    def _run_epoch(self) -> None:
        cfg, model = self.cfg, self.model
        if self.batch == 0:
            self._call("on_epoch_start")
        self.train_loader.set_epoch(self.epoch)
        self.reporter.start_epoch(self.epoch, cfg.epochs, self.steps_per_epoch, self.batch)
        model.train()
        started = time.perf_counter()
        for xb, yb in self.train_loader.batches(self.batch):
            set_lr(self.optimizer, lr_at(self.step, self.total_steps, self.steps_per_epoch, cfg))
            if cfg.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            self.current_batch = (xb, yb)
            self._call("on_batch_start")
            with autocast(self.device.type, cfg.amp, cfg.amp_dtype):
                logits, aux = split_logits(self.step_model(xb))
                loss = self.criterion(logits.float(), yb)
                if aux is not None:
                    loss = loss + cfg.aux_weight * self.criterion(aux.float(), yb)
            self.optimizer.zero_grad(set_to_none=True)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            if self.scaler:
                self.scaler.unscale_(self.optimizer)  # callbacks and clipping see the true gradients
            self.loss = loss
            loss_value = loss.item()
            if not math.isfinite(loss_value):  # nothing after this step could be trusted: keep the last good checkpoint
                raise SparsearchError(f"{self.out_dir}: the loss became {loss_value} at step {self.step + 1} (epoch "
                                      f"{self.epoch + 1}); stopped, the last good checkpoint is kept. Lower train.lr "
                                      "or set train.grad_clip")
            self._call("on_before_optimizer_step")
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if self.scaler:
                self.scaler.step(self.optimizer)  # skipped where the scaled gradients overflowed
                self.scaler.update()
            else:
                self.optimizer.step()
            self.step += 1
            self.batch += 1
            self._acc["loss_sum"] += loss_value * len(yb)
            self._acc["correct"] += (logits.argmax(1) == yb).sum().item()
            self._acc["seen"] += len(yb)
            self._call("on_step_end")
            self._agree_on_masks()
            if cfg.log_every and self.step % cfg.log_every == 0:
                self.metrics.log({"kind": "step", "epoch": self.epoch, "step": self.step, "loss": loss_value,
                                  "lr": self.optimizer.param_groups[0]["lr"]})
            self.reporter.advance(f"loss {loss_value:.3f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.batch < self.steps_per_epoch:
                self.elapsed += time.perf_counter() - started
                started = time.perf_counter()
                self.save()
        self.elapsed += time.perf_counter() - started
        self._end_epoch()

    def _agree_on_masks(self) -> None:
        if distributed.active():
            self.resyncs += distributed.follow_rank0(self.model, list(sp.current_masks(self.model).values()),
                                                     self.optimizer)

    def _end_epoch(self) -> None:
        self._call("on_epoch_end")
        self._agree_on_masks()
        loss_sum, correct, seen = distributed.all_sum([self._acc[k] for k in ("loss_sum", "correct", "seen")],
                                                      self.device)
        seen = max(1, seen)
        record: dict[str, Any] = {
            "kind": "epoch", "epoch": self.epoch, "step": self.step,
            "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        last = self.epoch + 1 == self.cfg.epochs
        if self.eval_loader is not None and (last or (self.cfg.eval_every and (self.epoch + 1) % self.cfg.eval_every == 0)):
            self.last_eval = evaluate(self.model, self.eval_loader, self.cfg.amp, self.cfg.amp_dtype)
            self.best_acc = max(self.best_acc, self.last_eval["acc"])
            record.update(test_loss=self.last_eval["loss"], test_acc=self.last_eval["acc"])
        self._call("on_evaluate", record)
        self.metrics.log(record)
        self.reporter.end_epoch(
            f"epoch {self.epoch + 1}/{self.cfg.epochs}  train_loss {record['train_loss']:.4f}  "
            f"train_acc {record['train_acc']:.4f}" + (f"  test_acc {record['test_acc']:.4f}" if "test_acc" in record else "")
        )
        self.epoch += 1
        self.batch = 0
        self._acc = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        self.save()

    def _finish(self) -> dict[str, Any]:
        summary = {
            "epochs": self.cfg.epochs, "steps": self.step,
            "final_test_acc": self.last_eval.get("acc"), "final_test_loss": self.last_eval.get("loss"),
            "best_test_acc": self.best_acc, "train_seconds": round(self.elapsed, 3),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "sittings": self._sittings(),
        }
        if distributed.active():
            summary.update(world_size=distributed.world_size(), mask_resyncs=self.resyncs)
        for cb in self.callbacks:
            summary.update(cb.summary())
        if not distributed.is_main():
            return summary
        save_final(self.model, self.out_dir)
        write_json(self.summary_path, summary)
        return summary

    def _sittings(self) -> list[dict[str, Any]]:
        """The sittings so far, the current one brought up to this step."""
        if not self.sittings or "elapsed_before" not in self.sittings[-1]:
            return list(self.sittings)
        *done, now = self.sittings
        return [*done, {"machine": now["machine"], "steps": [now["steps"][0], self.step],
                        "seconds": round(self.elapsed - now["elapsed_before"], 3)}]

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)
