"""One run across processes: `torchrun --nproc-per-node N -m sparsearch train|search ...`.

Under torchrun (WORLD_SIZE > 1) the process group starts on first use (gloo on CPU, nccl with CUDA) and:
- each global batch of `data.batch_size` is split between the ranks (`shard`), so steps, schedule and
  augmentation are those of the one-process run; evaluation is sharded and summed (`all_sum`);
- weight gradients are averaged by DistributedDataParallel, architecture gradients by `average_`;
- masks stay identical on every rank: after every step the ranks compare a fingerprint of their masks with
  rank 0's and, where any differs (a decision taken on rank-local data, such as SNIP's batch), take rank 0's
  parameters, buffers and optimiser state (`follow_rank0`);
- rank 0 alone writes files (`is_main`), and the others wait for it where they read them (`barrier`).
Without torchrun every function here is a no-op, so the code paths are the same.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.distributed as dist
import torch.nn as nn


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return world_size() > 1


def init() -> None:
    """Join the process group torchrun describes (once); CUDA ranks take the GPU of their local rank."""
    if not active() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        init()
        dist.barrier()


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch (contiguous slices; sizes differ by at most one)."""
    return batch.tensor_split(world_size())[rank()] if active() else batch


def all_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def average_(tensors: list[torch.Tensor]) -> None:
    """Average tensors (gradients) over the ranks, in place."""
    if not active():
        return
    for t in tensors:
        dist.all_reduce(t)
        t.div_(world_size())


def wrap(model: nn.Module) -> nn.Module:
    """The module the training step calls: DistributedDataParallel under torchrun (it broadcasts rank 0's
    parameters and buffers, masks included, when built), the model itself otherwise."""
    if not active():
        return model
    init()
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    # drop-path skips whole operations, so their parameters may go unused in a step
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=hasattr(model, "drop_path_prob"))


@lru_cache(maxsize=64)
def _probe(numel: int, device: str) -> torch.Tensor:
    return torch.rand(numel, generator=torch.Generator().manual_seed(numel), dtype=torch.float64).to(device)


def _fingerprint(masks: list[torch.Tensor]) -> torch.Tensor:
    if not masks:
        return torch.zeros(1, dtype=torch.float64)
    return torch.stack([(m.detach().flatten().double() * _probe(m.numel(), str(m.device))).sum() for m in masks])


def follow_rank0(model: nn.Module, masks: list[torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> bool:
    """Make every rank hold rank 0's masks. Cheap when they already agree (one small broadcast); otherwise
    rank 0's parameters, buffers and optimiser state are broadcast to all. Returns whether that was needed."""
    if not active():
        return False
    mine = _fingerprint(masks)  # on the masks' device
    theirs = mine.clone()
    dist.broadcast(theirs, 0)
    differs = torch.tensor([float(not torch.equal(mine, theirs))], device=mine.device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if not differs.item():
        return False
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, 0)
        if optimizer is not None:
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value) and value.dim() > 0:
                        dist.broadcast(value, 0)
    return True
