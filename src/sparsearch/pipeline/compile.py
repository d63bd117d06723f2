"""`sparsearch compile TRAINING_DIR`: the trained model of a `sparsearch train` / `compare` variant directory
(the one holding summary.json), compiled for inference at a batch size and thread count.

    <dir>/compiled/plan.json   the engine chosen, every candidate engine's timings (medians, spreads), the sparse
                               engine's per-operation table, and the speedup over the fastest dense engine
    <dir>/compiled/model.json, model.safetensors   the exported model (`runtime.export`); `runtime.load(<dir>/compiled)`
                               runs the saved plan without timing again
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..config import load_config
from ..config.checks import check_threads
from ..data import dataset_from_config
from ..errors import SparsearchError
from ..files import load_weights, write_json
from ..models import model_builder, model_kwargs
from ..runtime import check_input_shape, compile, export
from ..train import exclusive

MAX_BATCH = 4096


def run_compile(training_dir: str | Path, batch: int = 1, threads: int | None = None) -> dict:
    """Compile the variant in `training_dir`, holding its run directory (no other process writes it meanwhile)."""
    if not 1 <= batch <= MAX_BATCH:
        raise SparsearchError(f"--batch must be in [1, {MAX_BATCH}], got {batch}")
    check_threads(threads, "--threads")
    where = Path(training_dir)
    if not (where / "summary.json").exists():
        raise SparsearchError(f"{where} is not a finished training (no summary.json); point at train/<variant>/")
    try:
        summary = json.loads((where / "summary.json").read_text())
        run_dir, final = Path(summary["run_dir"]), Path(summary["final_stage"]) / "final.safetensors"
    except (ValueError, KeyError, TypeError) as exc:
        raise SparsearchError(f"{where}/summary.json is not a sparsearch training summary ({type(exc).__name__}: "
                              f"{exc})") from None
    # the variant's own config where it wrote one (compare variants, Sparse-IFT widths), else its run's
    cfg = load_config(where / "config.yaml" if (where / "config.yaml").exists() else run_dir / "config.yaml")
    if summary.get("model") == "genotype" and "genotype" not in cfg.model.kwargs:
        raise SparsearchError("searched-cell trainings of `sparsearch run` are not supported yet; compile a "
                              "`sparsearch train` or `compare` result")
    with exclusive(run_dir if run_dir.is_dir() else where):
        return _compile(where, cfg, final, batch, threads)


def compile_untrained(cfg, batch: int = 1, threads: int | None = None) -> dict:
    """The plan (engine, timings) of `cfg`'s model at its initialisation, written nowhere: a dense network's
    inference time does not depend on its weights' values, so it needs no training (a sparse one's masks do)."""
    return _compile(None, cfg, None, batch, threads)


def _compile(where: Path | None, cfg, final: Path | None, batch: int, threads: int | None) -> dict:
    ds = dataset_from_config(cfg.data, seed=cfg.seed)
    model = model_builder(cfg, ds)().eval()
    if final is not None:
        weights = load_weights(final)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:  # weights of another model
            raise SparsearchError(f"cannot load {final}: {str(exc).splitlines()[0]}") from None
    if threads:
        torch.set_num_threads(threads)
    shape = check_input_shape([batch, ds.in_channels, *ds.image_size], "--batch")
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    compiled = compile(model, example)
    if where is None:
        return {**compiled.plan(), "batch": batch, "compile_seconds": time.perf_counter() - t0}
    out = where / "compiled"
    if cfg.ift.family != "parallel":  # parallel branches are surgery on the built model: no constructor rebuilds them
        export(model, out, cfg.model.name, num_classes=ds.num_classes, in_channels=ds.in_channels,
               **model_kwargs(cfg, ds))
    result = {**compiled.plan(), "batch": batch, "compile_seconds": time.perf_counter() - t0}
    if dense := compiled.fastest_dense():
        result["fastest_dense"] = {"engine": dense[0], "median_ms": dense[1],
                                   "speedup": dense[1] / compiled.times[compiled.engine]["median"]}
    write_json(out / "plan.json", result)
    return result
