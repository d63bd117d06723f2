"""Mixed precision: `autocast(device_type, enabled, dtype)`, and the same bf16 numbers at float32 speed on CPUs that
have no bf16 instructions.

torch's bf16 matrix products and convolutions on an AVX2-only CPU (AMD Zen 3, Intel before Cooper Lake) run about
10x slower than float32 (the book's ResNet-20 training step, batch 64, on Zen 3: 3.15 s against 0.27 s), so a config with
`train.amp: true` written on one machine would silently train ten times slower on another. A bf16 matrix unit
multiplies bf16 operands exactly, sums in float32 and rounds the sum to bf16; float32 kernels given the same bf16
operands compute that same function (two 8-bit significands multiply exactly within float32's 24), differing only
in summation order. So `float32_products` runs those ops in float32 on their bf16 operands and rounds the results to
bf16: what autocast computes, at about float32 speed (0.30 s that step; the ViT of claim 9 0.27 s against torch's 1.56
and float32's 0.19: `sparsearch bench book --precision`). It is on only where it pays: bf16 on a CPU without
avx512_bf16, amx_bf16 or Arm's bf16.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from functools import lru_cache

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from ..native import cpu_flags

log = logging.getLogger(__name__)
aten = torch.ops.aten
PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
            aten.convolution.default, aten.convolution_backward.default}
_active = threading.local()  # one mode at a time: nested contexts (a fit's loop, its evaluation) add nothing


@lru_cache(maxsize=None)
def has_bf16_units() -> bool:
    flags = set(cpu_flags().split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _up(t):
    return t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 else t


def _down(t):
    return t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t


class _Float32Products(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            if tensors and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors):
                up_args, up_kwargs = tree_map(_up, (args, kwargs))
                return tree_map(_down, func(*up_args, **up_kwargs))
        return func(*args, **kwargs)


@contextlib.contextmanager
def float32_products(force: bool = False):
    """Inside: CPU matrix products and convolutions whose operands are all bf16 (forward and backward) run in
    float32 and round their results to bf16. Entered only where `has_bf16_units()` is False, unless forced."""
    if getattr(_active, "on", False) or (has_bf16_units() and not force):
        yield
        return
    _active.on = True
    try:
        with _Float32Products():
            yield
    finally:
        _active.on = False


def emulates_bf16(device_type: str, enabled: bool, dtype: str) -> bool:
    return enabled and device_type == "cpu" and dtype == "bfloat16" and not has_bf16_units()


def mixed_precision(device_type: str, enabled: bool, dtype: str = "bfloat16"):
    """Around a whole training loop, backward passes included: `float32_products` where bf16 autocast would run
    the slow kernels, nothing elsewhere."""
    if not emulates_bf16(device_type, enabled, dtype):
        return contextlib.nullcontext()
    log.info("this CPU has no bf16 instructions: bf16 products run in float32 on bf16 operands (same numbers)")
    return float32_products()


def autocast(device_type: str, enabled: bool, dtype: str = "bfloat16"):
    if not enabled:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type=device_type, dtype=getattr(torch, dtype)))
    if emulates_bf16(device_type, enabled, dtype):
        stack.enter_context(float32_products())
    return stack
