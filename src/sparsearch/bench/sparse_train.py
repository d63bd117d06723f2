"""`sparsearch bench train --sparse`: a training step (forward, backward, SGD with momentum) of a sparse network on
the sparse kernels (`train.sparse`) against the dense step, side by side in one process.

Full-width ResNet-20 on CIFAR-shaped batches of 128 with static ERK masks at each sparsity (`--model resnet50
--image-size 224 --batch-size 16 --allocation uniform`: the ImageNet-size case; first and last layers stay dense
with uniform allocation, as ERK keeps them nearly so). Contenders, alternating within every trial: the masked
network on PyTorch's dense kernels in fp32 (NCHW and channels-last: what every method paid before), and, where the
CPU has bfloat16 units, with bf16 autocast; the sparse kernels ("on") and the per-layer choice ("auto"), on an NCHW
model and on a channels-last one. Every process the CLI starts keeps freed memory (`sparsearch.allocator`), the
contenders alike. Ratios are over the fastest dense fp32 configuration and over the fastest dense one in any
precision.
`--layers S` instead prints, at sparsity S, each convolution's forward, input-gradient and weight-gradient times,
sparse against dense: where the step's time goes. `--memory` instead measures each configuration's peak memory: in
a process of its own, the peak resident set over three steps less the resident set before the first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from .. import sparsity as sp
from ..models import build_model
from ..runtime.common import median_seconds
from ..train.precision import has_bf16_units
from ..train.sparse import Pattern, sparse_conv2d, sparse_kernels
from .common import machine, print_table, stats, write_json
from .sparse_cases import CASES


def _net(args) -> dict:
    """The benchmarked network, as plain values (a subprocess gets it as JSON)."""
    return {"model": args.model, "width": args.width, "image": args.image_size, "allocation": args.allocation,
            "classes": 1000 if args.model == "resnet50" else 10}


def _describe(net: dict) -> str:
    width = f", width {net['width']}" if net["width"] else ""
    return f"{net['model']}{width} at {net['image']}x{net['image']}, {net['allocation']}"


def _model(sparsity: float, net: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(net["model"], num_classes=net["classes"], in_channels=3,
                        **({"width": net["width"]} if net["width"] else {}))
    if sparsity > 0:
        masks, densities = sp.compute_masks(model, sp.find_layers(model), sparsity, "random", net["allocation"])
        sp.attach(model, masks, densities=densities)
    return model


def _stepper(sparsity: float, net: dict, batch: int, kernels: str, channels_last: bool, bf16: bool):
    model = _model(sparsity, net)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, net["image"], net["image"], generator=gen)
    y = torch.randint(0, net["classes"], (batch,), generator=gen)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if sparsity > 0:
        sp.bind_optimizer(model, opt)
    stack = contextlib.ExitStack()
    stack.enter_context(sparse_kernels(model, kernels))

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    step.close = stack.close
    return step


def _contenders(sparsity: float) -> dict[str, tuple[str, bool, bool]]:
    """name -> (kernels, channels_last, bf16)"""
    dense = {"dense fp32 NCHW": ("off", False, False), "dense fp32 NHWC": ("off", True, False)}
    if has_bf16_units():  # without them torch's bf16 is no contender (train/precision.py)
        dense.update({"dense bf16 NCHW": ("off", False, True), "dense bf16 NHWC": ("off", True, True)})
    # auto on a channels-last model: its layers that stay dense keep torch's faster NHWC kernels
    auto = {"sparse (auto)": ("auto", False, False), "sparse (auto, NHWC)": ("auto", True, False)}
    return {**dense, **({"sparse (on)": ("on", False, False)} if sparsity > 0 else {}), **auto}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


PEAK = """
import json, resource, sys
from sparsearch.allocator import keep_freed_memory
from sparsearch.bench.sparse_train import _rss_mib, _stepper
keep_freed_memory()  # as in the CLI's process
s, net, batch, kernels, nhwc, bf16 = json.loads(sys.argv[1])
step = _stepper(s, net, batch, kernels, nhwc, bf16)
before = _rss_mib()
for _ in range(3):
    step()
print(json.dumps({"before": before, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def memory(args) -> dict:
    """Peak memory of each configuration's step, each in a process of its own."""
    results, rows = [], []
    for s in args.sparsities:
        for name, (kernels, nhwc, bf16) in _contenders(s).items():
            spec = json.dumps([s, _net(args), args.batch_size, kernels, nhwc, bf16])
            out = subprocess.run([sys.executable, "-c", PEAK, spec], capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            results.append({"sparsity": s, "configuration": name, "peak_mib": m["peak"], "before_mib": m["before"],
                            "step_peak_mib": m["peak"] - m["before"]})
            rows.append([f"{s:.0%}", name, f"{m['peak'] - m['before']:.0f}", f"{m['peak']:.0f}"])
    print_table(f"peak memory of a training step, {_describe(_net(args))}, batch {args.batch_size}, MiB",
                ["sparsity", "configuration", "step (peak - before)", "process peak"], rows)
    return {"memory": results}


def steps(args) -> dict:
    results, rows = [], []
    for s in args.sparsities:
        fns = {k: _stepper(s, _net(args), args.batch_size, *v) for k, v in _contenders(s).items()}
        times = {k: [] for k in fns}
        for fn in fns.values():
            fn(), fn()  # warm-up; "auto" measures its layers here
        for trial in range(args.trials):
            order = list(fns)[trial % len(fns):] + list(fns)[: trial % len(fns)]
            for k in order:
                times[k].append(statistics.median(fns[k]() for _ in range(args.steps)))
        for fn in fns.values():
            fn.close()
        st = {k: stats(v) for k, v in times.items()}
        fp32 = min((k for k in st if k.startswith("dense fp32")), key=lambda k: st[k]["median"])
        anyp = min((k for k in st if k.startswith("dense")), key=lambda k: st[k]["median"])
        best = min((k for k in st if k.startswith("sparse")), key=lambda k: st[k]["median"])
        result = {"sparsity": s, "times_s": st, "fastest_dense_fp32": fp32, "fastest_dense": anyp, "fastest_sparse": best,
                  "speedup_vs_dense_fp32": st[fp32]["median"] / st[best]["median"],
                  "speedup_vs_fastest_dense": st[anyp]["median"] / st[best]["median"]}
        results.append(result)
        for k, v in st.items():
            rows.append([f"{s:.0%}", k, f"{1e3 * v['median']:.1f}", f"{1e3 * v['min']:.1f}-{1e3 * v['max']:.1f}",
                         f"{st[fp32]['median'] / v['median']:.2f}x", f"{st[anyp]['median'] / v['median']:.2f}x"])
        print(f"  {s:.0%}: {best} {result['speedup_vs_dense_fp32']:.2f}x over {fp32}, "
              f"{result['speedup_vs_fastest_dense']:.2f}x over {anyp}", flush=True)
    info = machine()
    print_table(f"training step, {_describe(_net(args))}, batch {args.batch_size}, static masks, ms (medians of "
                f"{args.trials} trials of {args.steps} steps; {info['cpu']}, {info['threads']} threads)",
                ["sparsity", "configuration", "median", "min-max", "vs dense fp32", "vs fastest dense"], rows)
    return {"results": results}


def layers(args) -> dict:
    """Per convolution at one sparsity: forward, input gradient and weight gradient, sparse vs dense (ms)."""
    model = _model(args.layers, _net(args))
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.setdefault(n, a[0].detach()))
             for n, m in sp.masked_layers(model).items() if isinstance(m, torch.nn.Conv2d)]
    model(torch.randn(args.batch_size, 3, args.image_size, args.image_size))
    for h in hooks:
        h.remove()
    rows, out = [], []
    for name, x in inputs.items():
        m = sp.masked_layers(model)[name]
        w = m.parametrizations.weight.original.detach()
        mask = sp.current_mask(m)
        pattern = Pattern(mask, m.groups, m.in_channels)
        timing = {}
        for label in ("dense", "sparse"):
            def run(need_x: bool, need_w: bool, label=label):
                xs, ws = x.clone().requires_grad_(need_x), (w * mask if label == "dense" else w.clone()).requires_grad_(need_w)
                if label == "dense":
                    y = F.conv2d(xs, ws, None, m.stride, m.padding, m.dilation, m.groups)
                else:
                    y = sparse_conv2d(xs, ws, None, pattern, m.stride[0], m.padding, m.dilation)
                if need_x or need_w:
                    torch.autograd.grad(y, [t for t, need in ((xs, need_x), (ws, need_w)) if need], torch.ones_like(y))
            forward = _ms(lambda: run(False, False), args.trials)
            timing[label] = [forward, _ms(lambda: run(True, False), args.trials) - forward,
                             _ms(lambda: run(False, True), args.trials) - forward]
        out.append({"layer": name, "density": pattern.density, "shape": list(w.shape), "ms": timing})
        rows.append([name, f"{pattern.density:.3f}", *(f"{timing['dense'][i]:.2f} / {timing['sparse'][i]:.2f}" for i in range(3))])
    print_table(f"per convolution at {args.layers:.0%}, {_describe(_net(args))}, batch {args.batch_size}: dense / sparse ms",
                ["layer", "density", "forward", "input grad", "weight grad"], rows)
    return {"layers": out, "sparsity": args.layers}


def _ms(fn, repeats: int) -> float:
    return 1e3 * median_seconds(lambda _: fn(), None, max(3, repeats))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sparsearch bench train --sparse", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.9, 0.95, 0.98])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", choices=["resnet20", "resnet50"], default="resnet20")
    ap.add_argument("--width", type=int, default=None, help="the model's first width (default: the full network)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--allocation", choices=["erk", "uniform"], default="erk")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per trial (their median is the trial's time)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--layers", type=float, default=None, help="per-convolution table at this sparsity instead")
    ap.add_argument("--memory", action="store_true", help="peak memory per configuration instead (see above)")
    ap.add_argument("--case", choices=sorted(CASES), default=None,
                    help="instead, mlp: a ViT-sized MLP stack at 90%%; rigl: RigL's amortised speedup (bench/sparse_cases.py)")
    ap.add_argument("--rigl-steps", type=int, default=200, help="steps of each RigL run (--case rigl)")
    ap.add_argument("--out", default="bench-results/sparse_train.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.case is not None:
        payload = CASES[args.case](args)
    else:
        payload = layers(args) if args.layers is not None else memory(args) if args.memory else steps(args)
    write_json(args.out, {"machine": machine(), "args": vars(args), "seconds": time.time() - t0, **payload})
    print(f"written to {args.out}")
    return 0
