"""Checkpoints: state_dicts only, written atomically, checked against a sha256 on load.

File layout: one header line `sparsearch-checkpoint v1 <sha256 of payload>\n`, then the payload, which
is an ordinary `torch.save` of nested dicts/lists/tensors. The header lets a reader reject a truncated or
altered file before unpickling anything; the payload loads with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from ..errors import SparsearchError
from ..files import write_atomic

MAGIC = b"sparsearch-checkpoint v1 "


class CheckpointError(SparsearchError):
    pass


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    return write_atomic(path, header + payload)  # a reader sees the old file or the new one, never half of one


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    newline = raw.find(b"\n")
    if not raw.startswith(MAGIC) or newline < 0:
        raise CheckpointError(f"{path} is not a sparsearch checkpoint")
    expected = raw[len(MAGIC) : newline]  # bytes: a flipped bit in the header need not be valid text
    payload = raw[newline + 1 :]
    if hashlib.sha256(payload).hexdigest().encode() != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"checkpoint {path} holds something other than saved tensors ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dictionary")
    return state


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    np_state = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype("uint32"), state["numpy"]["pos"],
                        state["numpy"]["has_gauss"], state["numpy"]["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
