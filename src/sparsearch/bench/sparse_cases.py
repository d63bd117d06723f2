"""Two more of the sparse-training targets, for `sparsearch bench train --sparse --case NAME`, dense and sparse side by
side in one process:

- `mlp`: a ViT-Tiny-sized MLP block stack (4 x Linear 192->768, GELU, Linear 768->192) on 64 x 197 tokens, 90%
  uniform masks; a training step (forward, backward, SGD with momentum), medians of alternating trials.
- `rigl`: RigL at 90% on ResNet-20 (batch 128, an update every 100 steps, its dense gradient on update steps only):
  the total time of `--rigl-steps` steps, dense kernels against `prepare(kernels="on")`, runs alternating.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import sparsity as sp
from ..methods import Periodic, RigL, Static
from ..models import build_model
from ..train.sparse import sparse_kernels
from .common import print_table


def _mlp_stepper(kernels: str, sparsity: float):
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Sequential(nn.Linear(192, 768), nn.GELU(), nn.Linear(768, 192)) for _ in range(4)))
    Static(sparsity, allocation="uniform", dense_first_last=False).prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sp.bind_optimizer(model, opt)
    x = torch.randn(64, 197, 192, generator=torch.Generator().manual_seed(0))
    context = sparse_kernels(model, kernels)
    context.__enter__()  # entered for the step's life: the step holds it (a dropped one would close, undoing it)

    def step() -> float:
        t0 = time.perf_counter()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    step.context = context
    return step


def mlp(args) -> dict:
    fns = {"dense": _mlp_stepper("off", 0.9), "sparse (on)": _mlp_stepper("on", 0.9)}
    for fn in fns.values():
        fn(), fn()
    times = {k: [] for k in fns}
    for trial in range(args.trials):
        for k in list(fns)[::1 if trial % 2 == 0 else -1]:
            times[k].append(statistics.median(fns[k]() for _ in range(args.steps)))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    speedup = ms["dense"] / ms["sparse (on)"]
    print_table("MLP block stack (4 x 192-768-192, 64 x 197 tokens), 90% uniform: a training step, ms",
                ["configuration", "median", "min-max"],
                [[k, f"{ms[k]:.1f}", f"{1e3 * min(v):.1f}-{1e3 * max(v):.1f}"] for k, v in times.items()])
    print(f"  sparse over dense: {speedup:.2f}x")
    return {"case": "mlp", "ms": ms, "samples_s": times, "speedup": speedup}


def _rigl_run(kernels: str, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    method = RigL(0.9, updates=Periodic(every=100, end=0.75), total_steps=steps)
    method.prepare(model, opt, kernels=kernels)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    total = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        method.step()
        total += time.perf_counter() - t0
    method.squash()
    return total, len(method.churn)


def rigl(args) -> dict:
    totals: dict[str, list[float]] = {"off": [], "on": []}
    updates = 0
    for _ in range(args.trials):
        for kernels in totals:
            seconds, updates = _rigl_run(kernels, args.rigl_steps)
            totals[kernels].append(seconds)
    speedup = statistics.median(totals["off"]) / statistics.median(totals["on"])
    print_table(f"RigL 90%, ResNet-20, batch 128, an update every 100 steps ({updates} in {args.rigl_steps} steps): "
                "seconds for the run", ["kernels", "median", "runs"],
                [[k, f"{statistics.median(v):.1f}", ", ".join(f"{s:.1f}" for s in v)] for k, v in totals.items()])
    print(f"  amortised speedup: {speedup:.2f}x")
    return {"case": "rigl", "seconds": totals, "updates": updates, "speedup": speedup}


CASES = {"mlp": mlp, "rigl": rigl}
