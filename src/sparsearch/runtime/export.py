"""Export a (masked) model as files any PyTorch user can load: `model.safetensors` (the squashed state_dict:
masked entries exact zeros, no mask entries) and `model.json` (the registry name and constructor arguments, or for
a model the registry does not know, a `torch.export` program beside them; per-layer densities for the reader).
`to_onnx` writes the dense-with-zeros network as ONNX (optional extra `onnx`)."""

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
from ..models import MODELS, build_model


def export(model: nn.Module, out_dir: str | Path, name: str | None = None, *, example: torch.Tensor | None = None,
           **kwargs: Any) -> Path:
    """Write `model` to `out_dir`; returns the directory. Two forms:

    - `export(model, dir, name, **kwargs)`, a registry model (`build_model(name, **kwargs)`): what `load` will do is
      done here first (build the model, load the weights into it), so an export that could not be loaded fails now,
      with the reason, rather than in the deploy process.
    - `export(model, dir, example=x)`, any model: the weights plus a `torch.export` program (`program.pt2`, traced on
      `x`, any batch size), which `load` runs without the model's code.
    """
    out = Path(out_dir)
    densities = {row["name"]: row["density"] for row in sp.report(model) if "shape" in row}
    state = sp.squash(model)
    if name is None:
        if example is None:
            raise SparsearchError("export: give the model's registry name (and constructor arguments), or an example "
                                  "input (example=x) to export any model as a torch.export program")
        _write_program(model, example, out / PROGRAM)
        spec: dict[str, Any] = {"program": PROGRAM}
    else:
        if name not in MODELS:
            raise SparsearchError(f"export: no registry model is called {name!r}, so load could not rebuild it: "
                                  "register it (sparsearch.models.register_model), or export(model, dir, example=x) "
                                  "to write a torch.export program that needs no code")
        rebuilt = build_model(name, **kwargs)  # arguments the constructor rejects: SparsearchError
        try:
            rebuilt.load_state_dict(state)
        except RuntimeError as exc:
            raise SparsearchError(f"export: build_model({name!r}, **{kwargs}) makes a model these weights do not fit, "
                                  f"so load would fail ({str(exc).splitlines()[0]}); pass the constructor's arguments") from None
        spec = {"model": name, "kwargs": kwargs}
    save_weights(out / "model.safetensors", state)
    write_json(out / "model.json", {**spec, "densities": densities})
    return out


PROGRAM = "program.pt2"


def _write_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    plain = copy.deepcopy(model).eval()
    sp.remove(plain)
    if example.shape[0] == 1:  # torch.export fixes a batch of 1 (or 0) as a constant; two rows keep it free
        example = torch.cat([example, example])
    try:
        with torch.no_grad():
            program = torch.export.export(plain, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as exc:  # noqa: BLE001 - torch.export's many failure types; the reason is what matters
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise SparsearchError(f"export: torch.export cannot trace this model ({type(exc).__name__}: {first})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))


def load(out_dir: str | Path) -> nn.Module:
    """The exported model as a plain module (no masks: the zeros are in the weights), in eval mode."""
    out = Path(out_dir)
    if not (out / "model.json").exists() or not (out / "model.safetensors").exists():
        raise SparsearchError(f"{out} holds no exported model (model.json and model.safetensors)")
    try:
        spec = json.loads((out / "model.json").read_text())
        if "program" in spec:
            name, kwargs = None, {}
            if spec["program"] != PROGRAM:
                raise TypeError(f"'program' must be {PROGRAM!r}")
        else:
            name, kwargs = spec["model"], spec["kwargs"]
            if not isinstance(name, str) or not isinstance(kwargs, dict):
                raise TypeError("'model' must be a name and 'kwargs' a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise SparsearchError(f"{out}/model.json is not a sparsearch export ({type(exc).__name__}: {exc})") from None
    weights = load_weights(out / "model.safetensors")  # checked against its checksum
    model = build_model(name, **kwargs) if name is not None else _read_program(out / PROGRAM)
    try:
        model.load_state_dict(weights)  # a program's own copy of the weights is replaced by the checked ones
    except RuntimeError as exc:
        raise SparsearchError(f"{out}/model.safetensors does not fit model {name or PROGRAM!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.eval() if name is not None else Program(model)


class Program(nn.Module):
    """A loaded torch.export program as a module. It runs as it was traced (eval mode) in either mode: the program
    itself refuses .eval() and .train()."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> Program:
        self.training = mode
        return self


def _read_program(path: Path) -> nn.Module:
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001 - a missing, truncated or foreign file
        raise SparsearchError(f"{path} is not a readable torch.export program ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0][:200]})") from None


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
