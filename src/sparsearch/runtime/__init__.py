"""Turn a masked model into a fast inference callable: `compile(model, example_input)`.

    1. a copy of the model, masks baked in as zeros (`sparsity.remove`), BatchNorms folded into the
       convolutions they follow, in eval mode;
    2. every engine that can run it here (`engines.py`: sparsearch's whole-network sparse engine, the per-layer
       engine that runs each layer on its fastest kernel, onnxruntime and OpenVINO on the dense network, PyTorch
       eager) is built and checked against the masked model on
       `example_input` (max abs error <= `tolerance` x max(1, largest |output|)); one that differs is dropped;
    3. the survivors are timed side by side on `example_input` at the current thread count: rounds that
       alternate the engines, and more rounds for the two fastest where they are within 15% or where their
       medians and their lower quartiles rank them differently (a burst of foreign load);
    4. the fastest by lower quartile wins (another process's load only adds time, so the quick end of an engine's
       samples is its own cost; a median can be taken over by a busy minute). `CompiledModel.times` holds every
       engine's timings, `.table()` the winning sparse engine's per-operation times.
`CompiledModel.save(dir)` writes that choice (plan.json) beside an export of the weights; `load(dir)` runs it
again without timing: every engine's `options()` (the engine's chunk size, the per-layer engine's kernels) is saved.
`compile(..., kernels=(...))` forces the per-layer engine with those sparse kernels.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import SparsearchError
from ..files import write_json
from .common import fold_batchnorm, logits, lower_quartile, prepare, reference_output, relative_error, settle
from .engines import BUILDERS, DENSE, Unavailable
from .export import export, to_onnx
from .export import load as load_export
from .kernels import CSRConv2d, CSRLinear, TapsConv2d, candidates

__all__ = ["CSRConv2d", "CSRLinear", "CompiledModel", "TapsConv2d", "candidates", "compile", "export", "fold_batchnorm",
           "load", "to_onnx"]

CLOSE = 1.15  # two engines within 15% of each other are timed again before one is chosen
MAX_INPUT_BYTES = 2**30  # an example input (and a plan's) larger than this is a mistake, not a model


def check_input_shape(shape: list[int], where: str) -> list[int]:
    """A plausible input shape, or one `SparsearchError` (before anything allocates it)."""
    if not (isinstance(shape, list) and 2 <= len(shape) <= 5 and all(type(s) is int and s >= 1 for s in shape)
            and 4 * math.prod(shape) <= MAX_INPUT_BYTES):
        raise SparsearchError(f"{where}: input shape {str(shape)[:80]} is not 2-5 positive sizes of at most "
                              f"{MAX_INPUT_BYTES >> 30} GiB of float32")
    return shape


class CompiledModel(nn.Module):
    """Inference only. `engine` names the engine that runs it; `times` has each candidate's {median, min, max, n}
    in ms; `skipped` why the others were not candidates; `table()` the chosen engine's per-operation rows."""

    def __init__(self, runner, engine: str, times: dict, max_abs_error: float, skipped: dict, shape: list[int],
                 ops: list[dict] | None = None):
        super().__init__()
        self.runner, self.engine, self.times, self.max_abs_error = runner, engine, times, max_abs_error
        self.skipped, self.shape, self.ops = skipped, shape, ops or []
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return logits(self.runner(x))

    def table(self) -> list[dict]:
        """Per operation (the sparse engine) or per layer (the per-layer engine); empty for a dense engine."""
        return self.ops

    def fastest_dense(self) -> tuple[str, float] | None:
        dense = {k: v["median"] for k, v in self.times.items() if k in DENSE}
        return min(dense.items(), key=lambda kv: kv[1]) if dense else None

    def plan(self) -> dict:
        return {"engine": self.engine, "options": self.runner.options(), "input_shape": self.shape,
                "threads": torch.get_num_threads(), "times_ms": self.times,
                "max_abs_error": self.max_abs_error, "skipped": self.skipped, "ops": self.ops}

    def save(self, out_dir: str | Path) -> Path:
        """plan.json in `out_dir` (beside an `export` of the same model, which `load` needs)."""
        return write_json(Path(out_dir) / "plan.json", self.plan())


def _build(names, net: nn.Module, example: torch.Tensor, reference: torch.Tensor, tolerance: float, options=None):
    runners, errors, skipped = {}, {}, {}
    for name in names:
        try:
            runner = BUILDERS[name](net, example, **(options or {}).get(name, {}))
            error = relative_error(logits(runner(example)), reference)
        except Unavailable as exc:
            skipped[name] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - an engine that cannot build this model is skipped, never fatal
            first = (str(exc).strip().splitlines() or [""])[0][:300]  # exporters attach whole graph dumps
            skipped[name] = f"could not build it ({type(exc).__name__}: {first})"
            continue
        if error > tolerance:
            skipped[name] = f"differs from the masked model by {error:.2e} (> {tolerance:g})"
            continue
        runners[name], errors[name] = runner, error
    return runners, errors, skipped


def _race(runners: dict, x: torch.Tensor, repeats: int, rounds: int = 3) -> dict[str, list[float]]:
    """Seconds per call for each runner: `rounds` rounds that alternate them, `repeats` calls each; the two
    fastest again where they are within `CLOSE`, or where medians and lower quartiles disagree on which is faster
    (a busy machine can make one engine's round look slow)."""
    samples: dict[str, list[float]] = {k: [] for k in runners}

    def timed(names, n_rounds):
        for r in range(n_rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotated: no fixed predecessor
                if len(runners) > 1:
                    settle()  # the previous engine's thread pool parks
                runners[name](x)  # warm: caches, this engine's own pool
                runners[name](x)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    runners[name](x)
                    samples[name].append(time.perf_counter() - t0)

    with torch.inference_mode():
        timed(list(runners), rounds)
        ranked = sorted(samples, key=lambda k: lower_quartile(samples[k]))
        by_median = sorted(samples, key=lambda k: statistics.median(samples[k]))
        if len(ranked) > 1 and (lower_quartile(samples[ranked[1]]) < CLOSE * lower_quartile(samples[ranked[0]])
                                or by_median[0] != ranked[0]):
            timed(ranked[:2], 2 * rounds)
    return samples


@torch.no_grad()
def compile(model: nn.Module, example_input: torch.Tensor, repeats: int = 9, tolerance: float = 1e-4,
            kernels: tuple[str, ...] | None = None, engines: tuple[str, ...] | None = None) -> CompiledModel:
    """`model` (masked or not) as the fastest engine for `example_input`'s shape and the current thread count.
    `engines` restricts the candidates (e.g. ("engine",)); `kernels` forces the per-layer engine with those kernels."""
    reference = reference_output(model, example_input)
    net = prepare(model, example_input)
    if kernels is not None:
        engines, options = ("layers",), {"layers": {"only": tuple(kernels)}}
    else:
        options = {}
    wanted = [k for k in engines or BUILDERS if k in BUILDERS]
    runners, errors, skipped = _build(wanted, net, example_input, reference, tolerance, options)
    if not runners and "eager" in wanted:  # the prepared network itself differs (a folded BatchNorm whose
        # convolution's output is also read elsewhere, say): the model as it is, masks baked in, in PyTorch
        unfolded = prepare(model, example_input, fold=False)
        runners, errors, still = _build(["eager"], unfolded, example_input, reference, tolerance)
        if runners:
            skipped.pop("eager", None)
        else:
            skipped.update(still)
    if not runners:
        raise SparsearchError("no engine can run this model here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    samples = _race(runners, example_input, max(3, repeats // 2))
    times = {k: {"median": 1e3 * statistics.median(v), "min": 1e3 * min(v), "max": 1e3 * max(v),
                 "lower_quartile": 1e3 * lower_quartile(v), "n": len(v)} for k, v in samples.items()}
    best = min(times, key=lambda k: times[k]["lower_quartile"])
    ops = runners[best].profile(example_input, max(3, repeats))
    return CompiledModel(runners[best], best, times, errors[best], skipped, list(example_input.shape), ops)


def load(out_dir: str | Path) -> nn.Module:
    """An exported model (`export`). With a saved plan beside it (`CompiledModel.save`), the compiled model that
    plan chose, built without timing; where that engine cannot run here, the next available one, with a notice."""
    out = Path(out_dir)
    model = load_export(out)
    if not (out / "plan.json").exists():
        return model
    try:
        plan = json.loads((out / "plan.json").read_text())
        engine, shape, options = plan["engine"], plan["input_shape"], plan.get("options", {})
        if not isinstance(engine, str) or not isinstance(options, dict):
            raise TypeError("'engine' must be a name and 'options' a mapping")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SparsearchError(f"{out}/plan.json is not a sparsearch plan ({type(exc).__name__}: {exc})") from None
    check_input_shape(shape, f"{out}/plan.json")
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            reference = reference_output(model, example)
    except RuntimeError as exc:
        raise SparsearchError(f"{out}/plan.json: input shape {shape} does not fit the model "
                              f"({str(exc).splitlines()[0]})") from None
    net = prepare(model, example)
    reason = "" if engine in BUILDERS else "not an engine of this version"
    for name in ([engine] if engine in BUILDERS else []) + [k for k in BUILDERS if k != engine]:
        runners, errors, skipped = _build([name], net, example, reference, 1e-4, {engine: options})
        reason = reason or skipped.get(name, "")
        if name in runners:
            if name != engine:
                print(f"sparsearch: the plan's engine {engine} cannot run here ({reason}); using {name}", file=sys.stderr)
            return CompiledModel(runners[name], name, plan.get("times_ms", {}), errors[name], skipped, shape,
                                 plan.get("ops", []))
    raise SparsearchError(f"no engine can run {out} here")
