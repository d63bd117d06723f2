"""`sparsearch bench book`: a training step of each network the CPU book trains, as its config trains it (bf16
autocast, its batch, channels-last where set, one thread: two trainings share the machine a core each), on torch's
plain layers and on the product's path, alternating; and each network's cost per training image on the product's
path relative to the ResNet-20 of claims 3, 4 and 8: the ratios behind `docs/results/pilots.md`'s budget.

The plain path: `bench/plain.py`'s plain layers (the DARTS operations' and torch's fused attention in the ViT) and
torch's BatchNorm (no `nhwc_batchnorm`); the product's path is what `sparsearch train` runs. Random images of CIFAR's
shape: a step's time does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..bench.common import alternated, machine, print_table, write_json
from ..bench.plain import plain_layers
from ..models import build_model, split_logits
from ..train.nhwc import nhwc_batchnorm
from ..train.precision import emulates_bf16, mixed_precision
from .runs import load

# label: (the book run whose config trains it, which of its invocations)
NETWORKS = {"ResNet-20 (claims 3, 4, 8)": ("cifar10-v3", 0),
            **{f"{g} cells (claim 1)": (f"cells-{g.lower().replace('_', '-')}", 0)
               for g in ("DARTS_V2", "DASS_90", "DASS_95", "DASS_99")},
            "ViT (claim 9)": ("vit-nm-cifar10", 0)}


def _step_fn(cfg, path: str):
    """path: "plain", "product" (what `sparsearch train` runs), or the product's layers with torch's own bf16
    kernels ("torch bf16") or without autocast ("float32")."""
    torch.manual_seed(0)
    model = build_model(cfg.model.name, num_classes=10, in_channels=3, **cfg.model.kwargs)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.data.batch_size, 3, 32, 32, generator=gen).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (cfg.data.batch_size,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = cfg.train.amp and path != "float32"

    def step() -> float:
        layers = plain_layers() if path == "plain" else nhwc_batchnorm(model, cfg.train.channels_last)
        t0 = time.perf_counter()
        with layers, mixed_precision("cpu", amp and path == "product", cfg.train.amp_dtype):
            with torch.autocast("cpu", getattr(torch, cfg.train.amp_dtype), enabled=amp):
                logits, _ = split_logits(model(x))
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0
    return step


def _cell(t: dict) -> str:
    return f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sparsearch bench book", description=__doc__)
    ap.add_argument("--trials", type=int, default=5, help="steps timed per path and network (alternating)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="only the networks whose label holds one of these")
    ap.add_argument("--precision", action="store_true",
                    help="also the product's layers on torch's own bf16 kernels and in float32 (train/precision.py)")
    ap.add_argument("--out", default="bench-results/book_steps.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = {label: where for label, where in NETWORKS.items()
              if label.startswith("ResNet-20") or not args.only or any(w in label for w in args.only)}
    results, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (run, part) in chosen.items():
            cfg = load(run, Path(tmp), [], None)[part]
            paths = ["plain", "product"] + (["torch bf16", "float32"] if args.precision else [])
            st = alternated({path: _step_fn(cfg, path) for path in paths}, args.trials)
            per_image = st["product"]["median"] / cfg.data.batch_size
            results.append({"network": label, "run": run, "model": cfg.model.name, "kwargs": cfg.model.kwargs,
                            "batch": cfg.data.batch_size, "times": st, "speedup": st["plain"]["median"] / st["product"]["median"],
                            "ms_per_image": 1000 * per_image})
    base = results[0]["ms_per_image"]
    for r in results:
        r["vs_resnet20"] = r["ms_per_image"] / base
        p, q = r["times"]["plain"], r["times"]["product"]
        rows.append([r["network"], r["batch"], _cell(p), _cell(q), f"{r['speedup']:.2f}x",
                     f"{r['ms_per_image']:.2f}", f"{r['vs_resnet20']:.2f}"])
    info = machine()
    print_table(f"the book's training steps, bf16, s/step medians (min-max) of {args.trials} ({info['cpu']}, "
                f"{args.threads} thread(s))", ["network", "batch", "plain", "product", "speedup", "ms / image",
                                               "x ResNet-20"], rows)
    if args.precision:
        emulated = emulates_bf16("cpu", True, "bfloat16")
        print_table(f"precision on the product's layers, s/step medians (min-max); this CPU "
                    f"{'has no bf16 units: product = bf16 products in float32' if emulated else 'has bf16 units'}",
                    ["network", "product (bf16)", "torch bf16", "float32", "torch bf16 / product"],
                    [[r["network"], *(_cell(r["times"][k]) for k in ("product", "torch bf16", "float32")),
                      f"{r['times']['torch bf16']['median'] / r['times']['product']['median']:.2f}x"] for r in results])
    print(f"wrote {write_json(args.out, {'benchmark': 'book_steps', 'args': vars(args), 'results': results})}")
    return 0
