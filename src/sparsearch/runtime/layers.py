"""The per-layer runtime (the engine's fallback where it cannot run a network, and the forced-kernel path):

    1. a copy of the model, masks baked in as zeros (`sparsity.remove`), in eval mode;
    2. every BatchNorm that directly follows a convolution folded into it (zeros stay zeros);
    3. per conv / linear layer, each kernel that can run it (`kernels.candidates`) timed on the layer's real
       input at the current thread count; the fastest wins, so a layer where sparse is not faster stays dense;
    4. the result checked against the masked model on `example_input`.
Each layer stays a PyTorch module, so a network pays Python overhead per layer; `runtime.compile` prefers the
whole-network engine (`plan.py`).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..errors import SparsearchError
from ..models import split_logits
from ..models.tracing import conv_bn_pairs
from .kernels import candidates


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Fold each BatchNorm that normalises a convolution's output into that convolution (eval statistics) and
    replace it by an identity. Returns the folded BatchNorms' names."""
    modules = dict(model.named_modules())
    pairs = conv_bn_pairs(model, example, affine_only=False)
    for bn_name, conv_name in pairs.items():
        bn, conv = modules[bn_name], modules[conv_name]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(scale)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter(shift + (bias - bn.running_mean) * scale)
        _replace(model, bn_name, nn.Identity())
    return list(pairs)


def logits(output) -> torch.Tensor:
    return split_logits(output)[0]


def reference_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits on x in eval mode (its mode is restored): what a compiled model must equal."""
    was_training = model.training
    model.eval()
    try:
        return logits(model(x))
    finally:
        model.train(was_training)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    # relative to the output's magnitude when that exceeds 1: summation order differs between kernels, and an
    # untrained deep network's logits can be in the thousands
    return float((got.reshape(want.shape) - want).abs().max()) / max(1.0, float(want.abs().max()))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def median_seconds(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)  # warm-up (allocations, MKL handles)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@dataclass
class LayerChoice:
    layer: str
    shape: list[int]
    density: float
    kernel: str
    dense_ms: float
    chosen_ms: float


class LayerwiseModel(nn.Module):
    """Inference only: runs under `torch.inference_mode`."""

    def __init__(self, net: nn.Module, layers: list[LayerChoice], max_abs_error: float):
        super().__init__()
        self.net, self.layers, self.max_abs_error = net, layers, max_abs_error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return logits(self.net(x))

    def table(self) -> list[dict]:
        return [asdict(c) for c in self.layers]


def _layer_inputs(net: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args[0]))
             for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        net(example)
    finally:
        for h in hooks:
            h.remove()
    return inputs


@torch.no_grad()
def compile_layers(model: nn.Module, example_input: torch.Tensor, repeats: int = 9, tolerance: float = 1e-4,
                   kernels: tuple[str, ...] | None = None) -> LayerwiseModel:
    """`model` (masked or not) as a `LayerwiseModel` tuned for `example_input`'s shape and the current thread
    count. `kernels` restricts the choice (e.g. ("csr",) forces sparse wherever it applies)."""
    reference = reference_output(model, example_input)
    net = copy.deepcopy(model).eval()
    sp.remove(net)
    fold_batchnorm(net, example_input)
    inputs = _layer_inputs(net, example_input)
    layers = []
    for name, x in inputs.items():
        layer = net.get_submodule(name)
        options = {k: v for k, v in candidates(layer).items() if k == "dense" or kernels is None or k in kernels}
        times = {k: median_seconds(m, x, repeats) for k, m in options.items()}
        forced = [k for k in options if k != "dense"] if kernels else []
        best = forced[0] if forced else min(times, key=times.get)
        if best != "dense":
            _replace(net, name, options[best])
        density = float((layer.weight != 0).float().mean())
        layers.append(LayerChoice(name, list(layer.weight.shape), round(density, 4), best,
                                  round(1e3 * times["dense"], 4), round(1e3 * times[best], 4)))
    error = relative_error(logits(net(example_input)), reference)
    if error > tolerance:
        raise SparsearchError(f"compiled model differs from the original by {error:.2e} (> {tolerance:g}), "
                              "relative to the largest output")
    return LayerwiseModel(net, layers, error)
