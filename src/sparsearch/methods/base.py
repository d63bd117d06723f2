"""A pruning or sparse-training method as one object that any training loop drives.

    method = sparsearch.RigL(0.9, total_steps=epochs * len(loader))
    method.prepare(model, optimizer)          # layers selected, masks attached, the optimizer bound to them
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        method.step()                         # in place of optimizer.step()
    state = method.squash()                   # a plain state_dict, masked entries exact zeros

A step has two points where methods act: before the forward pass (`on_step_start`: GMP prunes, RigL starts
collecting dense gradients, N:M mask decay sets its factor) and between backward and the optimizer step
(`before_optimizer_step`: topology updates, SR-STE's gradient term). A user's loop gets the first from a
forward pre-hook (training mode only) and the second from `step()`; the Trainer calls both through
`MethodCallback`, so `sparsearch train` and a user's loop run the same code in the same order.
`state_dict()` holds the step count and the method's own records; the masks live in the model's state_dict.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..config import Config
from ..errors import SparsearchError
from ..files import write_json
from ..train import Callback, sparse_kernels


class SparseMethod:
    """The shared part: which layers (`include` / `exclude` name globs; the first conv and the classifier stay
    dense unless `dense_first_last` is False), the step count, the optimizer binding, squash and state. `overrides`
    give named layers another sparsity or kind (`sparsity.overrides`), where a method says it can (`overridable`)."""

    overridable: tuple[str, ...] = ()  # what a per-layer override may change for this method: "sparsity", "kind"

    def __init__(self, sparsity: float, *, total_steps: int | None = None, include: Iterable[str] = ("*",),
                 exclude: Iterable[str] = (), dense_first_last: bool = True, seed: int = 0, overrides: Iterable = ()):
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise SparsearchError(f"{type(self).__name__}: sparsity is the fraction of weights pruned, a number in "
                                  f"[0, 1); got {sparsity!r}")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1):
            raise SparsearchError(f"{type(self).__name__}: total_steps is the number of optimizer steps the loop will "
                                  f"take, an int >= 1; got {total_steps!r}")
        self.sparsity, self.total_steps, self.seed = sparsity, total_steps, seed
        self.overrides = sp.parse_overrides(overrides, type(self).__name__, self.overridable)
        self.include, self.exclude, self.dense_first_last = tuple(include), tuple(exclude), dense_first_last
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.layers: dict[str, nn.Module] = {}
        self.step_count = 0
        self._started: int | None = None  # the step whose start hook has run
        self._stepping = False  # inside step(): the optimizer's step is the method's own
        self._kernels = contextlib.ExitStack()  # the sparse training kernels, where prepare() switched them on
        self.log: Callable[[dict], None] = lambda record: None  # the Trainer points this at metrics.jsonl

    @staticmethod
    def common(cfg: Config) -> dict[str, Any]:
        """The constructor arguments every method takes, from a run's config."""
        s = cfg.sparsity
        return {"include": s.include, "exclude": s.exclude, "dense_first_last": s.dense_first_last, "seed": cfg.seed,
                "overrides": s.overrides}

    # ------------------------------------------------------------------------------------ a user's loop
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, kernels: str = "off") -> nn.Module:
        """Attach the masks to `model` and bind `optimizer` (built before or after: the parameters are the same
        objects) so masked entries stay exactly zero through its steps. `kernels` "on" (or "auto") trains the masked
        layers on the sparse training kernels (`train.sparse_kernels`) until `squash()`."""
        self.attach(model)
        if kernels != "off":
            self._kernels.enter_context(sparse_kernels(model, kernels))
        if optimizer is not None:
            self.optimizer = optimizer
            sp.bind_optimizer(model, optimizer)
            if self.acts_every_step():  # optimizer.step() in place of step() would skip the method silently
                optimizer.register_step_pre_hook(self._only_through_step)
        model.register_forward_pre_hook(self._before_forward)
        return model

    def acts_every_step(self) -> bool:
        """Whether the method acts within steps (GMP prunes, RigL regrows, SR-STE adds a gradient term)."""
        cls = type(self)
        return (cls.on_step_start is not SparseMethod.on_step_start
                or cls.before_optimizer_step is not SparseMethod.before_optimizer_step)

    def _only_through_step(self, optimizer, args, kwargs) -> None:
        if not self._stepping:
            raise SparsearchError(f"optimizer.step() was called directly: with {type(self).__name__}, call "
                                  "method.step() in its place (it runs the method's update, then optimizer.step(); "
                                  "calling both would step the optimizer twice)")

    def _before_forward(self, module: nn.Module, args) -> None:
        if module.training:
            self.start_step()

    def step(self) -> None:
        """After `loss.backward()`, in place of `optimizer.step()`."""
        if self.optimizer is None:  # the weights would never change, and nothing would say so
            raise SparsearchError(f"{type(self).__name__}.step() steps the optimizer it was prepared with: call "
                                  "prepare(model, optimizer) first")
        self.before_optimizer_step()
        self._stepping = True
        try:
            self.optimizer.step()
        finally:
            self._stepping = False
        self.step_count += 1

    def squash(self) -> dict[str, torch.Tensor]:
        """The final weights as a state_dict an unmodified model loads."""
        if self.model is None:
            raise SparsearchError(f"{type(self).__name__}.squash(): nothing to squash before prepare(model)")
        self._kernels.close()
        self.finish()
        return sp.squash(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "total_steps": self.total_steps, **self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        required = {"step", *self.extra_state()}
        if not isinstance(state, dict) or not required <= set(state) <= required | {"total_steps"}:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise SparsearchError(f"{type(self).__name__}.load_state_dict: not this method's state (keys {found}, "
                                  f"expected {sorted(required)}); was it saved by another method?")
        saved = state.get("total_steps")
        if None not in (saved, self.total_steps) and saved != self.total_steps:  # its schedules would shift mid-run
            raise SparsearchError(f"{type(self).__name__}: the state was saved by a run of {saved} steps; this one has "
                                  f"total_steps={self.total_steps}")
        self.step_count, self._started = state["step"], None  # the start hook runs again at the next forward
        self.load_extra_state(state)

    # ------------------------------------------------------------------------ what the algorithms override
    def attach(self, model: nn.Module) -> None:
        """Select the layers; subclasses then attach their masks."""
        self.model = model
        self.layers = sp.find_layers(model, self.include, self.exclude, self.dense_first_last)
        if unmasked := [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
                        and not m._qkv_same_embed_dim]:
            warnings.warn(f"{type(self).__name__}: the input projections of {', '.join(unmasked)} "
                          "(nn.MultiheadAttention with kdim / vdim of their own: three separate bare parameters) are "
                          "not masked: the sparsity holds for the other layers only", stacklevel=3)

    def start_step(self) -> None:
        if self._started != self.step_count:
            self._started = self.step_count
            self.on_step_start()

    def on_step_start(self) -> None: ...
    def before_optimizer_step(self) -> None: ...
    def finish(self) -> None: ...  # the end of training (evaluation and export see the final masks)
    def extra_state(self) -> dict[str, Any]:
        return {}
    def load_extra_state(self, state: dict[str, Any]) -> None: ...
    def artifacts(self) -> dict[str, Any]:
        """JSON files the Trainer writes into the run directory at the end (name -> content)."""
        return {}
    def summary(self) -> dict[str, Any]:
        return {}

    @property
    def steps(self) -> int:
        if self.total_steps is None:
            raise SparsearchError(f"{type(self).__name__} follows a schedule over training: pass total_steps "
                                  "(the number of optimizer steps the loop will take)")
        return self.total_steps


class MethodCallback(Callback):
    """The Trainer's side of a method: the same hooks at the same points of the step. The optimizer is bound
    to the masks by `SparsityCallback`, as every masked model's is."""

    def __init__(self, method: SparseMethod):
        self.method = method

    def on_train_start(self, trainer) -> None:
        m = self.method
        m.optimizer, m.total_steps, m.log = trainer.optimizer, trainer.total_steps, trainer.metrics.log

    def on_batch_start(self, trainer) -> None:
        self.method.step_count = trainer.step
        self.method.start_step()

    def on_before_optimizer_step(self, trainer) -> None:
        self.method.before_optimizer_step()

    def on_train_end(self, trainer) -> None:
        self.method.finish()
        if distributed.is_main():
            for name, content in self.method.artifacts().items():
                write_json(trainer.out_dir / name, content)

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        return self.method.summary()
