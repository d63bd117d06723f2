"""What `sparsearch book` runs, at each scale: ordinary `sparsearch run` / `compare` runs under `--out-dir`, with
their configs (`configs/` beside this module) and overrides, and when each has finished. The runs resume and skip
finished work, so a second invocation (or one after a crash) only redoes what is missing, and runs finished earlier
with the same configs are reused: delete their directories to measure from scratch.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config, load_config
from ..errors import SparsearchError
from ..files import read_json
from .ledger import merged
from .verdicts import STAGES

# name: (command, config file, one list of overrides per invocation)
SEEDS = "run.search_seeds=[0, 1, 2]"  # the searches (GPU scale) on three seeds, a search per sparsity
V3 = "cifar10-v3"  # claims 3, 4 and 8 behind one dense anchor, one invocation per claim (configs/cifar10-v3.yaml)
DST_INTERVALS = (25, 400)  # RigL's update interval ablated around the 100 steps of the claim-4 run (seed 0)
# in queue order: the ablation before claim 8, so that claim 4's chapter, which reports it, completes first
V3_PARTS = {"claim 3": [], "claim 4": ["compare.variants=[static-erk, set, rigl]", "compare.sparsities=[0.9]"],
            "ablation": [f"compare.variants=[{', '.join(f'rigl-every-{n}' for n in DST_INTERVALS)}]",
                         "compare.sparsities=[0.9]", "compare.seeds=[0]"],
            "claim 8": ["compare.variants=[wide-rigl-uniform, wide-rigl]", "compare.sparsities=[0.5]"]}
V3_PART = {part: i for i, part in enumerate(V3_PARTS)}  # a part's invocation
# RULES.md's second stage: a claim whose three-seed verdict is inconclusive with too few seeds trains seeds 3 and 4
# of the invocation that judges it (claim label: run, its invocation's index, variants if not the invocation's own)
MORE_SEEDS = {"3": (V3, V3_PART["claim 3"], None), "4": (V3, V3_PART["claim 4"], None),
              "8": (V3, V3_PART["claim 8"], ["dense", "wide-rigl-uniform", "wide-rigl"]),
              "9": ("vit-nm-cifar10", 0, None)}
FIVE_SEEDS = list(range(STAGES[1]))
CELLS = {"DARTS_V2": (0.9, 0.95, 0.99), "DASS_90": (0.9,), "DASS_95": (0.95,), "DASS_99": (0.99,)}
CELL_SIZE, CELL_SIZE_GPU = "channels: 16, layers: 5", "channels: 36, layers: 20, auxiliary: true"  # GPU: DASS-Small


def cell_run(genotype: str) -> str:
    return "cells-" + genotype.lower().replace("_", "-")


RUNS: dict[str, tuple[str, str, list[list[str]]]] = {
    # in this order: the CIFAR-10 claims first (the most evidence per CPU-hour), the costly cells last
    V3: ("compare", "cifar10-v3.yaml", list(V3_PARTS.values())),
    "vit-nm-cifar10": ("compare", "vit-nm-cifar10.yaml", [[]]),  # claim 9
    # claim 1, last: the published cells through HYDRA, DARTS_V2 at every sparsity (configs/cells-cifar10.yaml)
    **{cell_run(g): ("compare", "cells-cifar10.yaml", [[f"name={cell_run(g)}", f"compare.sparsities={list(s)}",
                                                          f"model.kwargs={{genotype: {g}, {CELL_SIZE}}}"]])
       for g, s in CELLS.items()},
}
# claim 1's runs, one chapter: one queue (`run_comparisons`), so no core idles at the end of one while the next waits
ONE_QUEUE = [cell_run(g) for g in CELLS]
INFERENCE_BATCHES = (1, 32)
CIFAR10 = "../shared/data/cifar10-images.tar.xz"  # where this project keeps CIFAR-10 (never in the repository)
# `--scale gpu`: the same chapters at paper-like budgets on CUDA (full CIFAR-10 training set, full-width ResNet-20,
# 160 epochs; the searches on the reference's DASS schedule), bf16 autocast and channels-last
GPU = ["train.device=cuda", "train.amp=true", "train.channels_last=true", "train.threads=null", "data.train_subset=null"]
FULL = [*GPU, "train.epochs=160", "oneshot.finetune_epochs=40", "hydra.prune_epochs=20",
        "hydra.finetune_epochs=40", "gmp.frequency=100", "dst.update_every=100", "soup.retrain_epochs=40",
        "imp.rewind_step=2000"]  # Frankle et al.: ResNet-20 is stable from about step 2,000 of 63,000
ST, R20 = "sparse-training-cifar10.yaml", "model.kwargs={width: 16}"
MOBILENET = "mobilenetv2-cifar10"
GPU_COMMAND = f"sparsearch book --scale gpu --out-dir runs-gpu --data-path {CIFAR10}"
# the ViT of claim 9 at its usual CIFAR size; the decay rate carried to 160 epochs as configs/vit-nm-cifar10.yaml says
GPU_MODELS = {"vit-nm-cifar10": ["model.kwargs={dim: 192, depth: 6, heads: 3, mlp_ratio: 2.0, attention: manual}",
                                 "nm.decay_rate=6.0e-4"],
              **{cell_run(g): [f"model.kwargs={{genotype: {g}, {CELL_SIZE_GPU}}}", "train.drop_path=0.2"] for g in CELLS}}
# claims 2, 5 and 6 at this scale only (searches; several trainings a seed), and claim 1's searched cells beside its
# published ones. IMP and one-shot at matched budgets: IMP reaches 90% in two levels after its dense one (three
# trainings), so one-shot finetunes as long as two and a dense network trains as long as three
GPU_ONLY: dict[str, tuple[str, str, list[list[str]]]] = {
    "book-search": ("run", "cifar10-dass-paper.yaml", [["name=book-search", SEEDS, *GPU]]),
    # one random sample of the same space, trained the same way: a random sparse configuration (claim 2)
    "book-random-configuration": ("run", "cifar10-dass-paper.yaml",
                                  [["name=book-random-configuration", SEEDS, *GPU, "run.methods=[random]",
                                    "search.random_samples=1"]]),
    "imp-cifar10": ("compare", ST, [[*FULL, R20, "name=imp-cifar10", "compare.variants=[oneshot, imp]",
                                     "compare.sparsities=[0.9]", "oneshot.finetune_epochs=320"]]),
    "dense-cifar10-480": ("compare", ST, [[*FULL, R20, "name=dense-cifar10-480", "train.epochs=480", "compare.variants=[dense]"]]),
    "soup-cifar10": ("compare", ST, [[*FULL, R20, "name=soup-cifar10", "compare.variants=[soup]", "compare.sparsities=[0.9]"]]),
    # claim 7's accuracies: the CIFAR MobileNetV2 through the cells' HYDRA pipeline at 99%, beside DASS-Small of
    # DASS_99 (cells-dass-99 at this scale), the two networks the latency bench times
    MOBILENET: ("compare", "cells-cifar10.yaml", [[*FULL, f"name={MOBILENET}", "model.name=mobilenetv2",
                                                  "model.kwargs={}", "compare.sparsities=[0.99]"]]),
}
GPU_RUNS: dict[str, tuple[str, str, list[list[str]]]] = {
    **{name: (command, config, [[*FULL, *o, *GPU_MODELS.get(name, [])] for o in invocations])
       for name, (command, config, invocations) in RUNS.items() if command == "compare"},
    **GPU_ONLY,
}
SCALES = {"cpu": RUNS, "gpu": GPU_RUNS}
COMMANDS = {name: command for runs in SCALES.values() for name, (command, _, _) in runs.items()}
RUNTIME_ARGS = ["--threads", "1", "2", "--trials", "5", "--repeats", "3"]
BENCH_JSON = Path("book-runtime") / "runtime.json"  # under --out-dir
ARCHITECTURE_JSON = Path("book-runtime") / "architecture.json"  # claim 7 in the paper's quantity
INFERENCE_JSON = Path(V3) / "inference.json"  # under --out-dir


CONFIGS = Path(__file__).with_name("configs")  # the book's configs travel with the package, not the working folder


def load(name: str, out_dir: Path, executor: list[str], data_path: str | None, scale: str = "cpu") -> list[Config]:
    """A run's config for each of its invocations at `scale`."""
    _, config, invocations = SCALES[scale][name]
    extra = [f"out_dir={out_dir}", *executor] + ([f"data.path={data_path}"] if data_path else [])
    return [load_config(CONFIGS / config, [*overrides, *extra]) for overrides in invocations]


def _results_path(name: str, out_dir: Path) -> Path:
    return out_dir / name / ("results.json" if COMMANDS[name] == "run" else "compare/results.json")


def so_far(name: str, out_dir: Path, committed: dict[str, list[dict]] | None = None) -> dict | None:
    """A run's results as they stand (a row per finished trial) under `out_dir`, with the rows `committed` to the
    book's ledger (`ledger.py`) for it; None before its first trial finishes."""
    path = _results_path(name, out_dir)
    results = read_json(path) if path.exists() else None
    return merged(results, (committed or {}).get(name, [])) if COMMANDS[name] == "compare" else results


def progress(name: str, cfgs: dict[str, list[Config]], out_dir: Path, parts: list[int] | None = None,
             committed: dict[str, list[dict]] | None = None) -> tuple[set, set, dict | None]:
    """What a run's invocations (those numbered `parts`, all by default) train, which of it has finished (each
    method on each search seed, or each variant at each sparsity on each seed), and its results so far."""
    command = COMMANDS[name]
    invocations = cfgs[name] if parts is None else [cfgs[name][i] for i in parts]
    if command == "run":
        wanted = {(m, s) for c in invocations for m in c.run.methods for s in (c.run.search_seeds or [c.seed])}
    else:
        wanted = {(v, 0.0 if v == "dense" else s, seed) for c in invocations for v in c.compare.variants
                  for s in c.compare.sparsities for seed in c.compare.seeds}
    results = so_far(name, out_dir, committed)
    try:
        if results is None:
            done = set()
        elif command == "run":
            done = {(r["method"], r["search_seed"]) for r in results["rows"]}
        else:
            done = {(r["variant"], r["sparsity"], r["seed"]) for r in results["rows"]}
    except (KeyError, TypeError) as exc:
        raise SparsearchError(f"{_results_path(name, out_dir)} is not a sparsearch results file (no {exc} in its "
                              "rows); delete it to recompute it") from None
    return wanted, done & wanted, results


def finished(name: str, cfgs: dict[str, list[Config]], out_dir: Path, parts: list[int] | None = None,
             committed: dict[str, list[dict]] | None = None) -> dict | None:
    """A run's results once every invocation of it (those numbered `parts`, all by default) has finished."""
    wanted, done, results = progress(name, cfgs, out_dir, parts, committed)
    return results if done == wanted else None


MEASURED = (BENCH_JSON, ARCHITECTURE_JSON, INFERENCE_JSON)  # the timings the chapters read, besides the runs' rows


def bench_result(out_dir: Path, name: Path = BENCH_JSON, committed: dict | None = None) -> dict | None:
    """A bench's results once it has finished (it writes its file as it goes, `complete` at the end; the inference
    timings are written whole), under `out_dir` or else as the ledger keeps them (`committed`, by their path)."""
    path = out_dir / name
    bench = read_json(path) if path.exists() else (committed or {}).get(name.as_posix())
    return bench if bench and (bench.get("complete") or name == INFERENCE_JSON) else None
