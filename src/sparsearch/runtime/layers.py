"""The per-layer engine ("layers"), a mixed plan: the network stays PyTorch modules, and each conv / linear layer
runs on the kernel that is fastest for it (`kernels.candidates`: dense, which is oneDNN / MKL, or a sparse kernel),
timed on the layer's real input at the current thread count. A layer with more than `DENSEST` of its weights kept
stays dense untimed: no sparse kernel wins there, and a dense model costs no timing. It runs any model PyTorch runs
(transformers, depthwise networks, operations the whole-network engine cannot lower), and where layers are large
(224x224 maps, a transformer's tokens) its Python overhead per layer is small beside their work; on small networks
the whole-network engine (`plan.py`) is faster, and `compile` times both. Its plan is the kernel of each layer, so a
saved one reloads without timing."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .common import quick_race, replace_module
from .kernels import candidates

DENSEST = 0.7  # a layer keeping more of its weights than this is not timed on sparse kernels


def _layer_inputs(net: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args[0]))
             for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d))]
    try:
        net(example)
    finally:
        for h in hooks:
            h.remove()
    return inputs


class Layers:
    """`kernels` (layer -> kernel name): a saved choice, built without timing. `only`: the sparse kernels allowed
    (e.g. ("csr",)); when given, a layer takes the first of them that applies to it even where dense is faster."""

    name = "layers"

    @torch.no_grad()
    def __init__(self, net: nn.Module, example: torch.Tensor, kernels: dict[str, str] | None = None,
                 only: tuple[str, ...] | None = None, rounds: int = 7):
        self.net, self.rows = copy.deepcopy(net), []
        for name, x in _layer_inputs(self.net, example).items():
            layer = self.net.get_submodule(name)
            density = float((layer.weight != 0).float().mean()) if hasattr(layer, "weight") else 0.0  # a pool: raced
            sparse_enough = density <= DENSEST or only is not None or kernels is not None
            allowed = (kernels.get(name, "dense"),) if kernels is not None else only
            options = candidates(layer, allowed) if sparse_enough else {"dense": layer}
            if kernels is not None:
                best, times = kernels.get(name, "dense"), {}
                if best not in options:
                    best = "dense"  # a kernel this machine lacks (numba): the layer runs dense
            elif only is not None or len(options) == 1:  # forced (not timed), or nothing to choose
                best, times = next((k for k in options if k != "dense"), "dense"), {}
            else:
                times = quick_race(options, x, rounds)
                best = min(times, key=times.get)
            if best != "dense":
                replace_module(self.net, name, options[best])
            self.rows.append({"op": name, "kind": best, "ms": round(1e3 * times[best], 4) if times else None,
                              "dense_ms": round(1e3 * times["dense"], 4) if times else None,
                              **({"shape": list(layer.weight.shape), "density": round(density, 4)} if hasattr(layer, "weight")
                                 else {})})

    def __call__(self, x: torch.Tensor):
        with torch.inference_mode():
            return self.net(x)

    def profile(self, x: torch.Tensor, repeats: int) -> list[dict]:
        """Per layer: its kernel and the times measured when it was chosen."""
        return self.rows

    def options(self) -> dict:
        return {"kernels": {row["op"]: row["kind"] for row in self.rows}}
