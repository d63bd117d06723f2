"""What every engine and `compile` share: the network an engine runs (masks baked in, BatchNorms folded), the
reference it must equal, the error measure, and one timer."""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..models import split_logits
from ..models.tracing import conv_bn_pairs
from .attention import unpack_attention


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
        replace_module(model, bn_name, nn.Identity())
    return list(pairs)


def prepare(model: nn.Module, example: torch.Tensor, fold: bool = True) -> nn.Module:
    """The network every engine runs: a copy in eval mode, masks baked in as zeros, BatchNorms folded (unless not
    `fold`), `nn.MultiheadAttention` as the layers it is made of (`attention.py`)."""
    net = copy.deepcopy(model).eval()
    sp.remove(net)
    if fold:
        fold_batchnorm(net, example)
    return unpack_attention(net)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


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


SETTLE_S = 0.1


def settle() -> None:
    """Wait until other engines' worker threads park: after its last call an engine's pool spins for a while
    (OpenMP's, onnxruntime's) and, on a 2-core machine, takes a core from whichever engine is timed next (an
    onnxruntime session measured 3.8 or 6.6-8 ms for MobileNetV2 at 2 threads by what ran just before it)."""
    time.sleep(SETTLE_S)


def median_seconds(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)  # warm-up (allocations, MKL handles)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def lower_quartile(samples: list[float]) -> float:
    """A race's score: robust to foreign load, which lengthens some samples and shortens none."""
    ordered = sorted(samples)
    return ordered[(len(ordered) - 1) // 4]


HOPELESS = 3.0  # a kernel this many times slower than the quickest on its second call is not raced


def quick_race(fns: dict, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Seconds per call of each of `fns` on x (lower quartile of `rounds` calls, one per round, the order rotating
    between rounds): a choice between kernels that a cold cache or one busy moment does not decide. A candidate
    whose second call took over `HOPELESS` times the quickest one's is not raced (that call's time stands): at
    224x224 an im2col kernel can take a second where the winner takes milliseconds."""
    names = list(fns)
    warm: dict[str, float] = {}
    for k in names:
        fns[k](x)  # first calls build what a kernel caches (its layout for this shape, a compiled function)
        t0 = time.perf_counter()
        fns[k](x)
        warm[k] = time.perf_counter() - t0
    racing = [k for k in names if warm[k] <= HOPELESS * min(warm.values())]
    samples: dict[str, list[float]] = {k: [] for k in racing}
    for r in range(rounds):
        for k in racing[r % len(racing):] + racing[: r % len(racing)]:
            t0 = time.perf_counter()
            fns[k](x)
            samples[k].append(time.perf_counter() - t0)
    return {k: lower_quartile(samples[k]) if k in samples else warm[k] for k in names}

