"""`python -m torch.distributed.run --nproc-per-node N tests/helpers/ddp_dump.py COMMAND ARGS...`: runs
`sparsearch COMMAND ARGS` and has every rank save, after each training stage, its own masks, architecture
weights and parameters to $DUMP_DIR/<stage>-rank<r>.pt, so a test can compare the ranks bit for bit.
$CRASH_AT_STEP=k makes every rank stop at step k of the first stage (once: a marker file remembers)."""

import os
import sys
from pathlib import Path

import torch

from sparsearch import distributed
from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.train import Trainer

DUMP = Path(os.environ["DUMP_DIR"])
CRASH_AT = int(os.environ.get("CRASH_AT_STEP", "0"))
finish, agree = Trainer._finish, Trainer._agree_on_masks


def _finish(self):
    state = {f"mask:{k}": v.cpu() for k, v in sp.current_masks(self.model).items()}
    state.update({f"param:{k}": v.detach().cpu() for k, v in self.model.named_parameters()})
    torch.save(state, DUMP / f"{self.out_dir.name}-rank{distributed.rank()}.pt")
    return finish(self)


def _agree_on_masks(self):
    agree(self)
    marker = DUMP / f"crashed-rank{distributed.rank()}"
    if CRASH_AT and self.step == CRASH_AT and not marker.exists():
        marker.touch()
        raise SystemExit(f"simulated crash at step {self.step}")


Trainer._finish, Trainer._agree_on_masks = _finish, _agree_on_masks
sys.exit(main(sys.argv[1:]))
