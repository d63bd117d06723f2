"""Callbacks that tie the sparsity layer to the training loop."""

from __future__ import annotations

import json
from typing import Any

from .. import distributed
from .. import sparsity as sp
from .trainer import Callback


class SparsityCallback(Callback):
    """Binds the masks to the Trainer's optimiser (masked entries stay exactly zero), checks the invariants
    after every epoch and fails loudly on a violation, and writes the per-layer report at the end."""

    def __init__(self, check: bool = True):
        self.check = check
        self._bound = False
        self._model = None

    def on_train_start(self, trainer) -> None:
        if not self._bound:
            sp.bind_optimizer(trainer.model, trainer.optimizer)
            self._bound = True
        self._model = trainer.model

    def on_epoch_end(self, trainer) -> None:
        if self.check and (problems := sp.check(trainer.model)):
            raise sp.SparsityError("sparsity invariant violated: " + "; ".join(problems[:3]))

    def on_train_end(self, trainer) -> None:
        if not distributed.is_main():
            return
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        (trainer.out_dir / "sparsity.json").write_text(json.dumps(sp.report(trainer.model), indent=2))

    def summary(self) -> dict[str, Any]:
        rows = sp.report(self._model) if self._model is not None else []
        return {"weight_density": rows[-1]["density"]} if rows else {}


class DropPathSchedule(Callback):
    """DARTS' drop-path ramp: the model's `drop_path_prob` grows linearly from 0 to `max_prob` over training."""

    def __init__(self, max_prob: float):
        self.max_prob = max_prob

    def on_batch_start(self, trainer) -> None:  # per batch, so a run resumed mid-epoch gets it too
        trainer.model.drop_path_prob = self.max_prob * trainer.epoch / trainer.cfg.epochs
