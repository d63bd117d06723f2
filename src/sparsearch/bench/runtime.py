"""`sparsearch bench runtime`: does sparsity make inference faster than what a user would deploy with? Side by
side in one process, per model, sparsity, batch size and thread count: the dense network in PyTorch eager, in
onnxruntime (the `onnx` extra) and in OpenVINO (where installed), and the compiled model (`runtime.compile`,
tuned for that shape and thread count; it may itself pick a dense engine where sparse does not win). Trials
alternate between them; medians and min/max are reported, with speedups over eager and over the fastest dense
engine, next to the FLOP-count ideal 1 / (1 - s). Rows where the compiled model is slower than the fastest dense
engine say so.

Models: on CIFAR input (3 x 32 x 32) a DASS genotype network of the DASS-Small shape (36 initial channels, 20 cells)
and ResNet-56; on 224 x 224 input ResNet-50, MobileNetV2 and ViT-Tiny/16 (nn.MultiheadAttention), and
EfficientNet-B0 (SiLU, squeeze-excitation), which no kernel was tuned on. Masks: magnitude on every conv and linear
layer but the first conv and the classifier, at `--allocation` (uniform: each layer at the sparsity; global: one
threshold over all of them; erk), unstructured unless `--kind` says otherwise; BatchNorm statistics are randomised so
folding is not a no-op. The dense engines run the network `compile` prepares (BatchNorms folded, attention as its
layers: the ONNX exporter refuses torch's fused attention), so they are as fast as a user could make them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..models import build_model
from ..runtime import compile
from ..runtime.common import prepare, settle
from ..runtime.engines import BUILDERS, Unavailable
from .common import machine, print_table, stats, write_json

MODELS = {  # name: (builder, input size)
    "dass-small": (lambda genotype: build_model("genotype", genotype=genotype, channels=36, layers=20), 32),
    "resnet56": (lambda genotype: build_model("resnet56"), 32),
    "resnet50": (lambda genotype: build_model("resnet50", num_classes=1000), 224),
    "mobilenetv2": (lambda genotype: build_model("mobilenetv2_imagenet", num_classes=1000), 224),
    "vit-tiny": (lambda genotype: build_model("vit_tiny", num_classes=1000), 224),
    "efficientnet-b0": (lambda genotype: build_model("efficientnet_b0", num_classes=1000), 224),
}


def masked_for_bench(model: nn.Module, sparsity: float, kind: str = "unstructured",
                     allocation: str = "uniform") -> nn.Module:
    """`model` (changed in place) as the bench and the runtime tests measure it, in eval mode: BatchNorm statistics
    randomised (seeded), so folding is not a no-op, and magnitude masks at `sparsity` on every conv and linear layer
    but the first conv and the classifier."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    if sparsity > 0:
        masks, densities = sp.compute_masks(model, sp.find_layers(model), sparsity, "magnitude", allocation, kind)
        sp.attach(model, masks, densities=densities)
    return model.eval()


def _model(name: str, genotype: str, sparsity: float, kind: str = "unstructured", allocation: str = "uniform") -> nn.Module:
    torch.manual_seed(0)
    return masked_for_bench(MODELS[name][0](genotype).eval(), sparsity, kind, allocation)


def _time(fn, x: torch.Tensor, calls: int) -> float:
    """Median seconds of `calls` calls after the previous engine's thread pool parked (`settle`) and two untimed
    calls (caches, this engine's own pool)."""
    samples = []
    settle()
    with torch.inference_mode():
        fn(x)
        fn(x)
        for _ in range(calls):
            t0 = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _dense_engines(dense: nn.Module, x: torch.Tensor) -> dict:
    engines, net = {"eager": dense}, prepare(dense, x)
    for name in ("onnxruntime", "openvino"):
        try:
            engines[name] = BUILDERS[name](net, x)
        except Unavailable:
            pass
    return engines


def measure(name: str, genotype: str, sparsity: float, batch: int, threads: int, trials: int, repeats: int,
            kind: str = "unstructured", calls: int = 9, allocation: str = "uniform") -> dict:
    torch.set_num_threads(threads)
    masked = _model(name, genotype, sparsity, kind, allocation)
    dense = _model(name, genotype, 0.0)
    if sparsity > 0:  # the dense model with the masked model's weights: same numbers, no masks
        dense.load_state_dict(sp.squash(masked))
    size = MODELS[name][1]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    compiled = compile(masked, x, repeats=repeats)
    compile_s = time.perf_counter() - t0
    variants = {**_dense_engines(dense, x), "compiled": compiled}
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for trial in range(trials):  # the order rotates, so no engine always runs right after the same other one
        for k in names[trial % len(names):] + names[: trial % len(names)]:
            times[k].append(_time(variants[k], x, calls))
    result = {k: stats(v) for k, v in times.items()}
    fastest = min((k for k in result if k != "compiled"), key=lambda k: result[k]["median"])
    ops = compiled.table()
    return {"model": name, "kind": kind, "allocation": allocation, "sparsity": sparsity, "batch": batch, "threads": threads,
            "times": result,
            "engine": compiled.engine, "fastest_dense": fastest,
            "speedup": result["eager"]["median"] / result["compiled"]["median"],
            "speedup_vs_fastest_dense": result[fastest]["median"] / result["compiled"]["median"],
            "ideal": 1 / (1 - sparsity), "compile_s": compile_s, "max_abs_error": compiled.max_abs_error,
            "compile_times_ms": compiled.times, "op_table": ops}


def speedup_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    keys = sorted({(r["model"], r["batch"], r["threads"]) for r in rows})
    colours = {mb: f"C{i}" for i, mb in enumerate(sorted({k[:2] for k in keys}))}  # per model and batch
    for model, batch, threads in keys:
        mine = sorted((r for r in rows if (r["model"], r["batch"], r["threads"]) == (model, batch, threads)),
                      key=lambda r: r["sparsity"])
        ax.plot([100 * r["sparsity"] for r in mine], [r["speedup_vs_fastest_dense"] for r in mine], "o-" if threads > 1 else "x--",
                color=colours[model, batch], label=f"{model}, batch {batch}, {threads} thr")
    s = sorted({r["sparsity"] for r in rows})
    ax.plot([100 * x for x in s], [1 / (1 - x) for x in s], "k:", label="FLOP ideal 1/(1-s)")
    ax.axhline(1, color="k", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("speedup of compiled over the fastest dense engine")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sparsearch bench runtime", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dass-small", "resnet56"], choices=list(MODELS))
    ap.add_argument("--allocation", default="uniform", choices=["uniform", "global", "erk"])
    ap.add_argument("--genotype", default="DASS_95")
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.0, 0.5, 0.9, 0.95, 0.98, 0.99])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--kind", default="unstructured", help="mask kind, e.g. block:16:16 (the bsr kernel's case)")
    ap.add_argument("--trials", type=int, default=7, help="alternating rounds; each times every engine")
    ap.add_argument("--calls", type=int, default=9, help="timed calls per engine and round (their median is the round's)")
    ap.add_argument("--repeats", type=int, default=5, help="timings per kernel and layer when compiling")
    ap.add_argument("--out", default="bench-results/runtime.json")
    args = ap.parse_args(argv)
    rows, started = [], time.perf_counter()

    def save(complete: bool) -> Path:  # as it goes, and once more at the end: only then `complete`
        return write_json(args.out, {"benchmark": "runtime", "args": vars(args), "results": rows,
                                     "seconds": time.perf_counter() - started, "complete": complete})
    ms = lambda r, k: f"{1e3 * r['times'][k]['median']:.2f}" if k in r["times"] else "-"  # noqa: E731
    for name in args.models:
        for threads in args.threads:
            for batch in args.batches:
                for s in args.sparsities:
                    r = measure(name, args.genotype, s, batch, threads, args.trials, args.repeats, args.kind, args.calls,
                                args.allocation)
                    rows.append(r)
                    save(complete=False)
                    print(f"{name} s={s:.2f} batch {batch} threads {threads}: eager {ms(r, 'eager')} ms, onnxruntime "
                          f"{ms(r, 'onnxruntime')}, openvino {ms(r, 'openvino')}, compiled {ms(r, 'compiled')} ms "
                          f"({r['engine']}; {r['speedup_vs_fastest_dense']:.2f}x {r['fastest_dense']}, {r['speedup']:.2f}x eager)",
                          flush=True)
    table = []
    for r in rows:
        c = r["times"]["compiled"]
        vs = r["speedup_vs_fastest_dense"]
        verdict = (f"slower than {r['fastest_dense']}" if vs < 0.95 else "no faster than dense" if vs < 1.05 else "")
        label = r["model"] + ("" if r["allocation"] == "uniform" else f" ({r['allocation']})")
        table.append([label, f"{100 * r['sparsity']:g}%", r["batch"], r["threads"], ms(r, "eager"), ms(r, "onnxruntime"),
                      ms(r, "openvino"), f"{1e3 * c['median']:.2f} ({1e3 * c['min']:.2f}-{1e3 * c['max']:.2f})", r["engine"],
                      f"{r['speedup']:.2f}x", f"{vs:.2f}x", f"{r['ideal']:.1f}x", verdict])
    info = machine()
    print_table(f"inference ms per batch, medians of {args.trials} alternating rounds of {args.calls} calls "
                f"({info['cpu']}, torch {info['torch']})",
                ["model", "sparsity", "batch", "threads", "eager", "onnxruntime", "openvino", "compiled (min-max)", "engine",
                 "vs eager", "vs fastest dense", "ideal", ""], table)
    for r in rows:
        if r["speedup_vs_fastest_dense"] < 0.95:
            print(f"where we lose: {r['model']} at {100 * r['sparsity']:g}%, batch {r['batch']}, {r['threads']} threads: "
                  f"compiled {r['speedup_vs_fastest_dense']:.2f}x of {r['fastest_dense']}")
    out = save(complete=True)
    speedup_plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
