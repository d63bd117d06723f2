"""`sparsearch bench sparsity`: what masks cost.

1. A masked training step (ResNet-20, CIFAR-shaped batch, 90% unstructured ERK masks, optimiser bound so
   masked entries stay zero) against the dense step of the same model; trials alternate, medians reported.
2. Global magnitude mask computation over a ResNet-50-sized set of tensors (about 25.5M weights) against
   `torch.nn.utils.prune.global_unstructured` (L1) on the same tensors.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import prune

from .. import sparsity as sp
from ..models import build_model
from .common import machine, print_table, stats, write_json


def _step_times(model, opt, x, y, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(time.perf_counter() - t0)
    return out


def masked_step(batch: int, sparsity: float, trials: int, steps: int) -> dict:
    torch.manual_seed(0)
    dense = build_model("resnet20")
    masked = copy.deepcopy(dense)
    masks, dens = sp.compute_masks(masked, sp.find_layers(masked), sparsity, "magnitude", "erk")
    sp.attach(masked, masks, densities=dens)
    models = {"dense": dense, f"masked {sparsity:.0%}": masked}
    opts = {}
    for name, m in models.items():
        opts[name] = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        if m is masked:
            sp.bind_optimizer(m, opts[name])
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {k: [] for k in models}
    for name in models:  # warm-up
        _step_times(models[name], opts[name], x, y, 2)
    for _ in range(trials):
        for name in models:
            times[name] += _step_times(models[name], opts[name], x, y, steps)
    assert not sp.check(masked), "invariants broke during the benchmark"
    return {k: stats(v) for k, v in times.items()}


def resnet50_shapes() -> list[tuple[int, ...]]:
    shapes = [(64, 3, 7, 7)]
    ch_in = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            shapes += [(width, ch_in, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if b == 0:
                shapes.append((4 * width, ch_in, 1, 1))
            ch_in = 4 * width
    return shapes + [(1000, 2048)]


class _Holder(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())


def global_masks(sparsity: float, trials: int) -> tuple[dict, int]:
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen) for s in resnet50_shapes()]
    total = sum(w.numel() for w in weights)
    times: dict[str, list[float]] = {"sparsearch global magnitude": [], "torch prune.global_unstructured": []}
    for _ in range(trials):
        ours = nn.ModuleDict({str(i): _Holder(w) for i, w in enumerate(weights)})
        t0 = time.perf_counter()
        masks, _ = sp.compute_masks(ours, dict(ours.items()), sparsity, "magnitude", "global")
        times["sparsearch global magnitude"].append(time.perf_counter() - t0)
        theirs = [_Holder(w) for w in weights]
        t0 = time.perf_counter()
        prune.global_unstructured([(m, "weight") for m in theirs], prune.L1Unstructured, amount=sparsity)
        times["torch prune.global_unstructured"].append(time.perf_counter() - t0)
        differ = _differences_off_ties(weights, [masks[str(i)] for i in range(len(weights))],
                                       [m.weight_mask.bool() for m in theirs])
    return {k: stats(v) for k, v in times.items()}, total, differ


def _differences_off_ties(weights, ours, theirs) -> int:
    """Masks may differ only where |w| ties at the threshold (the two break ties differently). Returns
    how many entries differ; raises if any of them is not such a tie."""
    kept_ours = torch.cat([w.abs()[m] for w, m in zip(weights, ours)])
    assert sum(int(m.sum()) for m in ours) == sum(int(m.sum()) for m in theirs), "kept counts differ"
    threshold = kept_ours.min()
    differ = 0
    for w, a, b in zip(weights, ours, theirs):
        d = a != b
        if d.any():
            assert torch.all(w.abs()[d] == threshold), "masks differ away from tied values"
            differ += int(d.sum())
    return differ


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sparsearch bench sparsity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per trial for the training-step comparison")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench-results/sparsity.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()

    step = masked_step(args.batch_size, args.sparsity, args.trials, args.steps)
    dense_ms = step["dense"]["median"] * 1e3
    rows = [[k, v["median"] * 1e3, v["min"] * 1e3, v["max"] * 1e3, f"{100 * (v['median'] * 1e3 / dense_ms - 1):+.1f}%"]
            for k, v in step.items()]
    print_table(f"ResNet-20 training step, batch {args.batch_size} ({info['cpu']}, {info['threads']} threads)",
                ["model", "ms/step (median)", "min", "max", "vs dense"], rows)
    step_overhead = step[f"masked {args.sparsity:.0%}"]["median"] / step["dense"]["median"] - 1

    glob, total, differ = global_masks(args.sparsity, max(3, args.trials // 2))
    ours, theirs = glob["sparsearch global magnitude"]["median"], glob["torch prune.global_unstructured"]["median"]
    print_table(f"global magnitude masks at {args.sparsity:.0%} over ResNet-50 shapes ({total / 1e6:.1f}M weights)",
                ["implementation", "s (median)", "min", "max", "vs torch"],
                [[k, v["median"], v["min"], v["max"], f"{v['median'] / theirs:.2f}x"] for k, v in glob.items()])
    print(f"masked step overhead: {100 * step_overhead:+.1f}%;  global masks: ours {ours:.3f}s vs torch "
          f"{theirs:.3f}s ({theirs / ours:.2f}x faster); masks equal torch's except {differ} entries tied at the threshold")
    path = write_json(args.out, {"benchmark": "sparsity", "sparsity": args.sparsity, "masked_step": step,
                                 "masked_step_overhead": step_overhead, "global_masks": glob,
                                 "global_weights": total, "global_entries_differing_at_ties": differ, "global_speedup_vs_torch": theirs / ours})
    print(f"wrote {path}")
    return 0
