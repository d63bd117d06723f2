"""Export a (masked) model as files any PyTorch user can load: `model.safetensors` (the squashed state_dict:
masked entries exact zeros, no mask entries) and `model.json` (the registry name and constructor arguments,
plus per-layer densities for the reader). Loading needs only the model constructor. `to_onnx` writes the
dense-with-zeros network as ONNX (optional extra `onnx`)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..errors import SparsearchError
from ..files import load_weights, save_weights, write_json
from ..models import build_model


def export(model: nn.Module, out_dir: str | Path, name: str, **kwargs: Any) -> Path:
    """Write `model` (built as `build_model(name, **kwargs)`) to `out_dir`; returns the directory. What `load` will
    do is done here first (build the model from `name` and `kwargs`, load the weights into it), so an export that
    could not be loaded fails now, with the reason, rather than in the deploy process."""
    out = Path(out_dir)
    densities = {row["name"]: row["density"] for row in sp.report(model) if "shape" in row}
    state = sp.squash(model)
    rebuilt = build_model(name, **kwargs)  # a name no registry knows, or arguments it rejects: SparsearchError
    try:
        rebuilt.load_state_dict(state)
    except RuntimeError as exc:
        raise SparsearchError(f"export: build_model({name!r}, **{kwargs}) makes a model these weights do not fit, so "
                              f"load would fail ({str(exc).splitlines()[0]}); pass the constructor's arguments") from None
    save_weights(out / "model.safetensors", state)
    write_json(out / "model.json", {"model": name, "kwargs": kwargs, "densities": densities})
    return out


def load(out_dir: str | Path) -> nn.Module:
    """The exported model as a plain module (no masks: the zeros are in the weights), in eval mode."""
    out = Path(out_dir)
    if not (out / "model.json").exists() or not (out / "model.safetensors").exists():
        raise SparsearchError(f"{out} holds no exported model (model.json and model.safetensors)")
    try:
        spec = json.loads((out / "model.json").read_text())
        name, kwargs = spec["model"], spec["kwargs"]
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise TypeError("'model' must be a name and 'kwargs' a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise SparsearchError(f"{out}/model.json is not a sparsearch export ({type(exc).__name__}: {exc})") from None
    model = build_model(name, **kwargs)
    weights = load_weights(out / "model.safetensors")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise SparsearchError(f"{out}/model.safetensors does not fit model {name!r}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """The dense-with-zeros network as ONNX with a dynamic batch axis, input "input", output "logits". Uses the
    TorchScript exporter: torch calls it legacy, but it needs no package beyond torch and exports ResNet-20 in
    under a second, where the torch.export-based one needs onnxscript and took 12 s here."""
    plain = copy.deepcopy(model).eval()
    sp.remove(plain)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the legacy notice, and constant-folding notes about slices it leaves alone
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(plain, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path
