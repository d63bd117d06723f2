"""`sparsearch bench search`: one search step (alpha step + weight step) of DARTS (dense supernet) vs DASS
(learned-score masks on every parametric layer, prune phase; fixed masks, finetune phase), on the same
supernet and batch, first and second order. Configurations alternate within each trial; medians reported.

`--implementations` instead times wave 1's plain supernet (`bench/plain.py`) against the fast one side by side (fused mixed edges and
`train.channels_last`, with the NHWC BatchNorm backward and the operations' TrainingRewrites): first-order steps
at batch 16 and 64, a second-order step, the DASS prune step, and a genotype network's (DASS_95, 16 channels, 8 cells, batch 64) training step.

Defaults are CPU-sized (C=8, 5 cells, batch 16); the paper's search net is --channels 16 --layers 8
--batch-size 32, about 30 s (first order) / 65 s (second order) per dense step on 2 CPU cores."""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
import torch.nn.functional as F

from .. import sparsity as sp
from ..search import Architect, SuperNet
from ..train import stage_parameters
from ..train.nhwc import nhwc_batchnorm
from .common import alternated, machine, print_table, stats, write_json
from .plain import plain_layers


def _variants(net: SuperNet, sparsity: float) -> dict[str, tuple[SuperNet, list]]:
    dense = net
    prune = copy.deepcopy(net)
    layers = sp.find_layers(prune, dense_first_last=False)
    sp.attach_learned(prune, {n: 1 - sparsity for n in layers})
    finetune = copy.deepcopy(prune)
    sp.freeze(finetune)
    prune_params = stage_parameters(prune, "prune", prune.weight_parameters())  # the real prune phase: masked weights frozen
    return {"DARTS (dense)": (dense, dense.weight_parameters()),
            f"DASS prune ({sparsity:.0%}, scores)": (prune, prune_params),
            f"DASS finetune ({sparsity:.0%}, fixed masks)": (finetune, finetune.weight_parameters())}


def _search_step(net, params, opt, architect, train, val) -> float:
    t0 = time.perf_counter()
    architect.step(train, val, params, xi=0.025, weight_decay=3e-4)
    loss = F.cross_entropy(net(train[0]), train[1])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def _supernet(args, channels_last: bool) -> SuperNet:
    torch.manual_seed(0)
    net = SuperNet(args.channels, args.layers, 10, 3)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _batches(batch: int, size: int, channels_last: bool):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        x = torch.randn(batch, 3, size, size, generator=gen)
        out.append((x.contiguous(memory_format=torch.channels_last) if channels_last else x,
                    torch.randint(0, 10, (batch,), generator=gen)))
    return out


def _step_fn(args, kind: str, batch: int, fast: bool, channels_last: bool):
    """A callable doing one step of `kind` on its own model and data; not `fast`: wave 1's plain layers and mixed
    edges (`plain.plain_layers`) and torch's BatchNorm, else the product's path with the NHWC BatchNorm backward."""
    step = _one_step_fn(args, kind, batch, channels_last)

    def timed():
        with plain_layers() if not fast else contextlib.nullcontext(), nhwc_batchnorm(step.model, fast and channels_last):
            return step()
    return timed


def _one_step_fn(args, kind: str, batch: int, channels_last: bool):
    if kind == "genotype":
        from ..models import build_model

        torch.manual_seed(0)
        net = build_model("genotype", genotype="DASS_95", channels=16, layers=8)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        (x, y), _ = _batches(batch, args.image_size, channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9)

        def step():
            t0 = time.perf_counter()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t0
        step.model = net
        return step
    net = _supernet(args, channels_last)
    params = net.weight_parameters()
    if kind == "prune":
        layers = sp.find_layers(net, dense_first_last=False)
        sp.attach_learned(net, {n: 1 - args.sparsity for n in layers})
        params = stage_parameters(net, "prune", net.weight_parameters())
    train, val = _batches(batch, args.image_size, channels_last)
    opt = torch.optim.SGD(params, lr=0.025)
    architect = Architect(net, net.arch_parameters(), second_order=kind == "second")

    def step():
        return _search_step(net, params, opt, architect, train, val)
    step.model = net
    return step


def implementations(args) -> int:
    cases = [("first order", "first", 16), ("first order", "first", 64), ("second order", "second", 16),
             (f"DASS prune ({args.sparsity:.0%})", "prune", 16), ("genotype net DASS_95 16x8", "genotype", 64)]
    results, rows = [], []
    for label, kind, batch in cases:
        st = alternated({"today": _step_fn(args, kind, batch, False, False),
                         "new": _step_fn(args, kind, batch, True, True)}, args.trials)
        ratio = st["today"]["median"] / st["new"]["median"]
        results.append({"case": label, "kind": kind, "batch": batch, "times": st, "speedup": ratio})
        rows.append([f"{label}, batch {batch}", f"{st['today']['median']:.3f} ({st['today']['min']:.3f}-{st['today']['max']:.3f})",
                     f"{st['new']['median']:.3f} ({st['new']['min']:.3f}-{st['new']['max']:.3f})", f"{ratio:.2f}x"])
        print(f"  {rows[-1]}", flush=True)
    info = machine()
    print_table(f"today vs new (fused mixed edges, channels_last, NHWC BatchNorm backward, training rewrites), s/step medians "
                f"of {args.trials}, supernet C={args.channels} "
                f"L={args.layers} ({info['cpu']}, {info['threads']} threads)", ["step", "today (min-max)", "new (min-max)",
                                                                                 "speedup"], rows)
    print(f"wrote {write_json(args.out, {'benchmark': 'search_implementations', 'args': vars(args), 'results': results})}")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sparsearch bench search", description=__doc__)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", default="bench-results/search.json")
    ap.add_argument("--implementations", action="store_true", help="today's supernet vs the fast one (see above)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.implementations:
        return implementations(args)
    torch.manual_seed(0)
    net = SuperNet(args.channels, args.layers, 10, 3)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    train = (torch.randn(shape, generator=gen), torch.randint(0, 10, (args.batch_size,), generator=gen))
    val = (torch.randn(shape, generator=gen), torch.randint(0, 10, (args.batch_size,), generator=gen))
    variants = _variants(net, args.sparsity)
    results: dict[str, dict] = {}
    for order in ("first", "second"):
        setups = {name: (m, p, torch.optim.SGD(p, lr=0.025), Architect(m, m.arch_parameters(), second_order=order == "second"))
                  for name, (m, p) in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in setups}
        for name, s in setups.items():  # warm-up
            _search_step(*s, train, val)
        for trial in range(args.trials):
            for name, s in setups.items():
                times[name].append(_search_step(*s, train, val))
                print(f"  {order} order, trial {trial + 1}/{args.trials}: {name} {times[name][-1]:.2f}s", flush=True)
        for name, ts in times.items():
            results[f"{name} / {order} order"] = stats(ts)
    rows = []
    for order in ("first", "second"):
        base = results[f"DARTS (dense) / {order} order"]["median"]
        for name in variants:
            r = results[f"{name} / {order} order"]
            rows.append([f"{name} / {order}", r["median"], r["min"], r["max"], f"{100 * (r['median'] / base - 1):+.1f}%"])
    info = machine()
    print_table(f"search step (alpha + weights), supernet C={args.channels} L={args.layers}, batch {args.batch_size} x "
                f"{args.image_size}x{args.image_size} ({info['cpu']}, {info['threads']} threads)",
                ["configuration", "s/step (median)", "min", "max", "vs DARTS"], rows)
    print(f"wrote {write_json(args.out, {'benchmark': 'search_step', 'args': vars(args), 'results': results})}")
    return 0
