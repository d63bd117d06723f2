"""What a training step and an evaluation need besides the loop: the device, logits from a model's output, an
evaluation, and the final weights (mixed precision: precision.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from .. import sparsity as sp
from ..data import TensorLoader
from ..errors import SparsearchError
from ..files import save_weights
from ..models import split_logits
from .precision import autocast


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():  # else torch's own error comes from deep inside .to()
        raise SparsearchError(f"train.device is {name}, but this torch ({torch.__version__}) sees no CUDA device: "
                              "set train.device=auto or cpu")
    return device


def save_final(model: nn.Module, out_dir: Path) -> None:
    """final.safetensors: vanilla weights (masked entries as exact zeros) that an unmodified model loads; and
    masks.safetensors when the model has masks."""
    save_weights(out_dir / "final.safetensors", sp.squash(model))
    if masks := sp.current_masks(model):
        save_weights(out_dir / "masks.safetensors", {k: v.to(torch.uint8) for k, v in masks.items()})


@torch.no_grad()
def evaluate(model: nn.Module, loader: TensorLoader, amp: bool = False, dtype: str = "bfloat16") -> dict[str, float]:
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    device_type = loader.device.type
    for xb, yb in loader.batches():  # under torchrun: this rank's share of each batch
        with autocast(device_type, amp, dtype):
            logits, _ = split_logits(model(xb))
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(yb)
    model.train(was_training)
    loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], loader.device)
    return {"loss": loss_sum / max(1, seen), "acc": correct / max(1, seen)}

