"""`sparsearch bench train`: our Trainer against a minimal hand-written PyTorch loop.

Same model (ResNet-20), same initial weights, same CIFAR-10 batches (real ones when a path is given or
the shared copy is found, otherwise random uint8 images of CIFAR's shape), same optimiser. Trials of the
two loops alternate, so drifting machine load hits both alike; throughput is reported as medians.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import DataConfig, TrainConfig
from ..data import build_loaders, load_dataset
from ..data.datasets import Dataset
from ..models import build_model
from ..train import MetricsLog, Trainer
from .common import machine, print_table, stats, write_json

SHARED_CIFAR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "cifar10-images.tar.xz"


def _dataset(path: str | None, n: int) -> tuple[Dataset, str]:
    source = path or (str(SHARED_CIFAR) if SHARED_CIFAR.exists() else None)
    if source:
        ds = load_dataset("cifar10", path=source)
        ds.train_x, ds.train_y = ds.train_x[:n], ds.train_y[:n]
        return ds, source
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Dataset("synthetic-cifar", x, y, x[:10], y[:10], [str(i) for i in range(10)]), "synthetic"


def _hand_loop(model, loader, cfg: TrainConfig) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    t0 = time.perf_counter()
    for xb, yb in loader.batches():
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def _our_loop(model, loader, cfg: TrainConfig, workdir: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=workdir))
    trainer = Trainer(model, loader, None, cfg, out, metrics=MetricsLog(out / "metrics.jsonl"), show_progress=False)
    t0 = time.perf_counter()
    trainer.fit()  # includes the end-of-epoch checkpoint, metrics and final weights: the real cost
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sparsearch bench train", description=__doc__)
    ap.add_argument("--data", help="CIFAR-10 source (default: ../shared/data copy if present, else synthetic)")
    ap.add_argument("--steps", type=int, default=40, help="training steps per trial")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--trials", type=int, default=5, help="trials per loop (alternating)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench-results/train_loop.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ds, source = _dataset(args.data, args.steps * args.batch_size)
    data_cfg = DataConfig(name="cifar10", batch_size=args.batch_size)
    loader, _ = build_loaders(ds, data_cfg, seed=0)
    cfg = TrainConfig(epochs=1, lr=0.05, schedule="constant", log_every=10, checkpoint_every=0, device="cpu")
    torch.manual_seed(0)
    init = build_model("resnet20", num_classes=10, in_channels=3)

    images = args.steps * args.batch_size
    times: dict[str, list[float]] = {"hand-written loop": [], "sparsearch Trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        _hand_loop(copy.deepcopy(init), loader, cfg)  # warm-up (allocator, kernels)
        for _ in range(args.trials):
            times["hand-written loop"].append(_hand_loop(copy.deepcopy(init), loader, cfg))
            times["sparsearch Trainer"].append(_our_loop(copy.deepcopy(init), loader, cfg, Path(tmp)))

    rows, results = [], {}
    base = stats([images / t for t in times["hand-written loop"]])["median"]
    for name, ts in times.items():
        s = stats([images / t for t in ts])
        results[name] = {"images_per_s": s, "seconds": ts}
        rows.append([name, s["median"], s["min"], s["max"], f"{100 * (base / s['median'] - 1):+.1f}%"])
    overhead = base / results["sparsearch Trainer"]["images_per_s"]["median"] - 1
    print_table(f"ResNet-20 training throughput, batch {args.batch_size}, {args.steps} steps x {args.trials} trials "
                f"({source}; {machine()['cpu']}, {torch.get_num_threads()} threads)",
                ["loop", "images/s (median)", "min", "max", "overhead"], rows)
    print(f"Trainer overhead vs hand-written loop: {100 * overhead:+.2f}% (median throughput)")
    path = write_json(args.out, {"benchmark": "train_loop", "data": source, "batch_size": args.batch_size,
                                 "steps": args.steps, "results": results, "overhead": overhead})
    print(f"wrote {path}")
    return 0
