"""`sparsearch <command>`: parses arguments, calls the pipeline, turns known errors into one line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from .errors import SparsearchError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (defaults apply to anything it leaves out)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--name", help="run name (shorthand for --set name=...)")
    p.add_argument("--executor", choices=["local", "process", "ray"],
                   help="how independent trials run (shorthand for --set run.executor=...)")
    p.add_argument("--workers", type=int, help="trials at once (shorthand for --set run.workers=...)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local instance "
                   "(shorthand for --set run.ray_address=...)")


def _method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="a method of `sparsearch methods` (shorthand for --set sparsity.method=...); with "
                   "--help, its settings")
    p.add_argument("--sparsity", type=float, help="target sparsity (shorthand for --set sparsity.sparsity=...)")
    p.add_argument("--model", help="model name (shorthand for --set model.name=...)")


def _load(args):
    from .config import load_config

    shorthands = {"name": "name", "method": "sparsity.method", "sparsity": "sparsity.sparsity", "model": "model.name",
                  "executor": "run.executor", "workers": "run.workers", "ray_address": "run.ray_address"}
    # a string shorthand stays a string (`--name 2024` is the run "2024", not the number): quoted for the YAML reader
    quoted = lambda v: json.dumps(v) if isinstance(v, str) else v
    overrides = list(args.set) + [f"{key}={quoted(getattr(args, arg))}" for arg, key in shorthands.items()
                                  if getattr(args, arg, None) is not None]
    return load_config(args.config, overrides)


def cmd_train(args) -> int:
    from .pipeline import run_train

    if args.help:
        from .recipes import REGISTRY, describe

        if args.method is not None and args.method not in REGISTRY:
            raise SparsearchError(f"unknown method '{args.method}' (use {', '.join(REGISTRY)})")
        print(args.parser.format_help(), end="")
        if args.method is not None:
            print("\n" + describe(args.method))
        return 0

    summary = run_train(_load(args))
    print(json.dumps(summary, indent=2))
    print(f"results in {summary['out_dir']}")
    return 0


def cmd_methods(args) -> int:
    from .recipes import REGISTRY

    width = max(map(len, REGISTRY))
    for name, spec in REGISTRY.items():
        print(f"{name:<{width}}  {spec.summary}")
    print("\n`sparsearch train --method NAME --help` lists a method's settings; docs/api.md shows each as an object "
          "for your own training loop")
    return 0


def cmd_search(args) -> int:
    from .search import run_search

    cfg = _load(args)
    genotype = run_search(cfg)
    print(json.dumps(genotype.to_dict()))
    verdict = json.loads((cfg.run_dir / "search" / "verdict.json").read_text())
    print(f"the search {verdict['words']}")
    print(f"genotype written to {cfg.run_dir / 'search' / 'genotype.json'}")
    return 0


def cmd_run(args) -> int:
    from .pipeline.run import run_all

    report = run_all(_load(args))
    print((report / "report.md").read_text())
    print(f"report: {report / 'index.html'}")
    return 0


def cmd_compare(args) -> int:
    from .pipeline.compare import run_compare

    out = run_compare(_load(args))
    print((out / "table.md").read_text())
    print(f"table and plot: {out / 'table.md'}, {out / 'accuracy.png'}")
    return 0


def cmd_compile(args) -> int:
    from .bench.common import print_table
    from .pipeline.compile import run_compile

    result = run_compile(args.training_dir, args.batch, args.threads)
    times = result["times_ms"]
    print_table(f"engines at batch {result['batch']}, {result['threads']} threads (ms per batch)", ["engine", "median", "min-max", ""],
                [[k, f"{v['median']:.3f}", f"{v['min']:.3f}-{v['max']:.3f}", "chosen" if k == result["engine"] else ""]
                 for k, v in sorted(times.items(), key=lambda kv: kv[1]["median"])])
    if result["ops"]:
        slowest = sorted(result["ops"], key=lambda r: -r.get("ms", r.get("chosen_ms", 0)))[:12]
        print_table("where the time goes (slowest operations)", ["op", "kind", "ms", "density"],
                    [[r.get("op", r.get("layer")), r.get("kind", r.get("kernel")), r.get("ms", r.get("chosen_ms")),
                      r.get("density", "")] for r in slowest])
    dense = result.get("fastest_dense")
    versus = (f"{dense['speedup']:.2f}x the fastest dense engine ({dense['engine']}, {dense['median_ms']:.3f} ms)"
              if dense else "no dense engine to compare with")
    print(f"engine {result['engine']}: {times[result['engine']]['median']:.3f} ms, {versus}; "
          f"max abs error {result['max_abs_error']:.1e}; written to {args.training_dir}/compiled/")
    return 0


def cmd_book(args) -> int:
    from .book import run_book

    out = run_book(args.out_dir, args.output, args.executor, args.workers, args.data_path, scale=args.scale,
                   write_only=args.write_only)
    print(f"results book: {out}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from .report import write_report
    from .train import exclusive

    if not (Path(args.run_dir) / "results.json").is_file():
        raise SparsearchError(f"{args.run_dir} has no results.json (is it a finished `sparsearch run` directory?)")
    with exclusive(args.run_dir):  # not while a `sparsearch run` still writes it
        print(f"report: {write_report(args.run_dir) / 'index.html'}")
    return 0


def cmd_config(args) -> int:
    from .config import dump_yaml

    print(dump_yaml(_load(args)), end="")
    return 0


def cmd_data_info(args) -> int:
    from .data import load_dataset

    ds = load_dataset(args.dataset, path=args.path, cache_dir=args.cache_dir)
    print(json.dumps({
        "name": ds.name, "train": len(ds.train_y), "test": len(ds.test_y), "classes": ds.classes,
        "image": [ds.in_channels, *ds.image_size],
    }, indent=2))
    return 0


def cmd_data_download(args) -> int:
    from .data import download_dataset

    path = download_dataset(args.dataset, args.root, mirror=args.mirror)
    print(f"downloaded {args.dataset}; use --set data.path={path}")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    if args.which == "book":  # the book's networks' training steps (book/steps.py)
        from .book.steps import main as run

        return bench.timed(run, args.rest)
    return bench.main(args.which, args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsearch", description="Find, train and run sparse neural networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model with a pruning / sparse-training method (sparsity.* settings)",
                       add_help=False)
    p.add_argument("-h", "--help", action="store_true", help="show this help (with --method M: that method's settings)")
    _config_args(p)
    _method_args(p)
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("methods", help="list the pruning and sparse-training methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("search", help="DASS (or DARTS) architecture search; writes search/genotype.json")
    _config_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("run", help="search (DASS, DARTS, random) -> HYDRA training at each sparsity -> report")
    _config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="train each compare.variants at each compare.sparsities and seed; table + plot")
    _config_args(p)
    p.add_argument("--model", help="model name (shorthand for --set model.name=...)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("book", help="rerun the seed papers' comparisons on CIFAR-10 at CPU scale; write docs/RESULTS.md")
    p.add_argument("--out-dir", default="runs", help="where the book's runs live (finished runs there are reused)")
    p.add_argument("--output", default="docs/RESULTS.md",
                   help="the document; the ledger of finished trainings lies beside it (results/rows/): commit both")
    p.add_argument("--executor", choices=["local", "process", "ray"], default="process",
                   help="how independent trials run (process: a core each, no extra needed; ray: also across machines)")
    p.add_argument("--workers", type=int, default=2, help="trials at once")
    p.add_argument("--data-path", help="CIFAR-10, which the book trains on (e.g. ../shared/data/cifar10-images.tar.xz); "
                   "not needed with --write-only")
    p.add_argument("--scale", choices=["cpu", "gpu"], default="cpu",
                   help="cpu: budgets this machine can hold (tens of core-hours, resumable in sittings); gpu: paper-like "
                   "budgets on CUDA, and the claims the CPU book defers")
    p.add_argument("--write-only", action="store_true",
                   help="run nothing: write the document and the ledger from the runs finished so far (the rest "
                   "marked pending)")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("report", help="rebuild the report of a finished `sparsearch run` directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("config", help="print the fully resolved config")
    _config_args(p)
    p.set_defaults(func=cmd_config)

    data = sub.add_parser("data", help="inspect or download datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("info", help="load a dataset and print its sizes and classes")
    p.add_argument("dataset")
    p.add_argument("--path")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("download", help="download a dataset and check its checksum")
    p.add_argument("dataset")
    p.add_argument("--root", required=True, help="folder to download into")
    p.add_argument("--mirror", help="base URL to download from instead of the official one")
    p.set_defaults(func=cmd_data_download)

    p = sub.add_parser("compile", help="compile a trained model for CPU inference: the fastest engine by measurement, plan, export")
    p.add_argument("training_dir", help="a train/<variant>/ (or compare/seed-k/<variant>/) directory")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("bench", help="benchmarks that print a table and write JSON (bench WHICH --help)")
    p.add_argument("which", choices=["train", "sparsity", "search", "runtime", "architecture", "book"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


DISTRIBUTED_COMMANDS = ("train", "search")  # what runs as one job across torchrun's processes


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, a container stop): stop as Ctrl-C does; checkpoints are written atomically."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _os_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def main(argv: list[str] | None = None) -> int:
    from . import distributed
    from .allocator import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the process is ours: large activations are not page-faulted in again every step
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        if distributed.active():
            if args.command not in DISTRIBUTED_COMMANDS:
                raise SparsearchError(f"`sparsearch {args.command}` does not run under torchrun (only "
                                      f"{' and '.join(DISTRIBUTED_COMMANDS)} do); run it as one process and use "
                                      "--executor ray or process for its trials")
            if not distributed.is_main():
                sys.stdout = open(os.devnull, "w")  # rank 0 prints for all
        return args.func(args)
    except SparsearchError as exc:
        print(f"sparsearch: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished folder: the system's words, on one line
        print(f"sparsearch: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        print(f"sparsearch: {how} (the run resumes from its last checkpoint)", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        distributed.shutdown()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
