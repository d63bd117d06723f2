"""The CUDA path in a few minutes: a short DASS search, HYDRA training, RigL and a compare, each run through the
ordinary commands with the device settings under test, then step times and the sparsity invariants.

    python scripts/device_check.py                       # cuda, bf16 autocast, channels_last, cudnn autotuning
    python scripts/device_check.py --device cpu --quick  # the same path on the CPU (a smoke test)

Each line: what ran, seconds per training step (from its summary.json), and whether the masks kept their
density (sparsity.json: every masked layer at its target, masked weights exactly zero). Exit code 1 if any
check fails. Runs write under --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from sparsearch.cli import main as sparsearch


def _invariants(run: Path, density: float) -> tuple[bool, str]:
    """Every masked stage under `run` ended at `density` (its sparsity.json); the per-epoch invariant check
    (masked weights exactly zero, mask counts unchanged) already failed the run if it was violated."""
    worst, files = 0.0, sorted(run.rglob("sparsity.json"))
    for f in files:
        total = next(r for r in json.loads(f.read_text()) if r["name"] == "(masked layers)")
        worst = max(worst, abs(total["density"] - density))
    return bool(files) and worst < 0.01, f"{len(files)} masked stages, worst density error {worst:.1e}"


def _step_seconds(run: Path) -> str:
    rates = []
    for f in sorted(run.rglob("summary.json")):
        s = json.loads(f.read_text())
        if s.get("steps") and s.get("train_seconds"):
            rates.append(s["train_seconds"] / s["steps"])
    return ", ".join(f"{1e3 * r:.1f}" for r in rates) + " ms/step" if rates else "no step times"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--quick", action="store_true", help="smaller budgets (the CPU smoke test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu for the CPU path", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="sparsearch-device-"))
    device = [f"train.device={args.device}", "train.amp=true", f"train.amp_dtype={args.amp_dtype}",
              "train.channels_last=true", "train.cudnn_benchmark=true", f"out_dir={out}"]
    epochs = 1 if args.quick else 3
    small = ["--set", "data.name=digits", "--set", f"train.epochs={epochs}", "--set", "train.log_every=0"]
    checks = {
        "DASS search (supernet C=8, 5 cells)": ["search", "-c", "configs/search-digits.yaml", "--name", "dass", "--set",
                                               f"search.pretrain_epochs={epochs}", "--set", "search.prune_epochs=1",
                                               "--set", "search.finetune_epochs=1"],
        "HYDRA (ResNet-20 width 16, 90%)": ["train", "--method", "hydra", "--sparsity", "0.9", "--model", "resnet20",
                                            "--name", "hydra", *small, "--set", "hydra.prune_epochs=1",
                                            "--set", "hydra.finetune_epochs=1"],
        "RigL (cnn, 90%)": ["train", "--method", "rigl", "--sparsity", "0.9", "--model", "cnn", "--name", "rigl", *small,
                            "--set", "dst.update_every=10"],
        "compare (static-erk, gmp; cnn, 90%)": ["compare", "--model", "cnn", "--name", "compare", *small,
                                                "--set", "compare.variants=[static-erk, gmp]", "--set",
                                                "compare.sparsities=[0.9]", "--set", "compare.seeds=[0]"],
    }
    failed = 0
    for label, command in checks.items():
        flags = [a for d in device for a in ("--set", d)]
        t0 = time.perf_counter()
        rc = sparsearch([*command, *flags])
        seconds = time.perf_counter() - t0
        run = out / command[command.index("--name") + 1]
        ok, words = _invariants(run, 0.1) if rc == 0 else (False, f"exit code {rc}")
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {label}: {seconds:.1f} s, {_step_seconds(run)}; {words}", flush=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{len(checks) - failed}/{len(checks)} checks passed on {name} ({args.amp_dtype} autocast, channels_last)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
