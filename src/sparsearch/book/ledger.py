"""The book's committed record of its finished trainings (`docs/results/rows/<scale>/<run>.json`, beside the
document). A sitting's checkout, and the `--out-dir` folder in it, may not outlive the sitting, while a training
costs an hour of this machine: a row recorded here is not trained again, and the chapters read these rows with the
ones under `--out-dir`. Each row keeps the machine that trained it; the config the rows were trained with is kept
once per run, and rows of another config are refused, never mixed in. The benches' JSON files (claim 7) and the
Sparse-IFT inference timings (claim 8) are kept here too, whole: delete one to measure it again. Comparison runs
only: the searches run at `--scale gpu`, whose run folders hold what their chapters read.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config, from_dict, to_dict
from ..errors import SparsearchError
from ..files import read_json, write_atomic
from ..pipeline.compare import aggregate
from ..train.rundir import HOW_NOT_WHAT, changed_keys

ROWS = Path("results") / "rows"  # beside the document


def ledger_path(output: Path, scale: str, name: str) -> Path:
    return Path(output).parent / ROWS / scale / f"{name}.json"


def kept_path(output: Path, scale: str, measured: Path) -> Path:
    """Where the ledger keeps a timing the chapters read (a bench's JSON), by its path under `--out-dir`."""
    return Path(output).parent / ROWS / scale / measured


def trial(row: dict) -> tuple[int, str, float]:
    """A comparison row's trial: (seed, variant, sparsity), as `run_compare` names its jobs."""
    return row["seed"], row["variant"], row["sparsity"]


def _comparable(cfg: Config) -> dict:
    """What decides a training's result: the config less the work list (`compare`), where runs are written, how
    trials are scheduled, and the folder the data lies in (its file name stays: another file is other data)."""
    data = to_dict(cfg)
    for section in ("compare", "out_dir"):
        data.pop(section, None)
    data["run"] = {k: v for k, v in data["run"].items() if f"run.{k}" not in HOW_NOT_WHAT}
    data["data"]["path"] = Path(data["data"]["path"]).name if data["data"].get("path") else None
    return data


def _load(path: Path, cfg: Config) -> dict | None:
    """The ledger at `path` (None when there is none), checked: refuses rows trained with another config."""
    if not path.exists():
        return None
    try:
        ledger = read_json(path)
        before = _comparable(from_dict(ledger["config"]))
        for r in ledger["rows"]:
            trial(r)
    except (ValueError, KeyError, TypeError) as exc:
        raise SparsearchError(f"{path} is not a book ledger ({type(exc).__name__}: {exc}); restore it from git") from None
    now = _comparable(cfg)
    if None in (now["data"]["path"], before["data"]["path"]):  # `--write-only` needs no `--data-path`: unknown
        now["data"]["path"] = before["data"]["path"]
    if changed := changed_keys(before, now):
        raise SparsearchError(f"{path} records trainings of another config ({', '.join(changed[:3])} differ): move it "
                              "away to train this config from scratch")
    return ledger


def recorded(path: Path, cfg: Config) -> list[dict]:
    """The rows committed for `cfg`'s run ([] when none); refuses rows trained with another config."""
    ledger = _load(path, cfg)
    return ledger["rows"] if ledger else []


def merged(results: dict | None, rows: list[dict]) -> dict | None:
    """A comparison's results under `--out-dir` with the committed rows it lacks (a trial trained there wins), its
    table recomputed from them all; None when neither has a row."""
    every = {trial(r): r for r in rows} | {trial(r): r for r in (results or {}).get("rows", [])}
    if not rows or results and len(every) == len(results["rows"]):
        return results  # nothing committed that `--out-dir` lacks
    return {**(results or {}), "rows": list(every.values()), "table": aggregate(list(every.values()))}


def record(path: Path, cfg: Config, results: dict | None) -> int:
    """Commit-ready: write every row of `results` (already merged with the ledger) to the ledger, unless it holds
    them already; returns how many trials are new to it."""
    if not results or not results.get("rows"):
        return 0
    ledger = _load(path, cfg)
    rows = sorted(results["rows"], key=lambda r: (r["seed"], r["variant"], r["sparsity"]))
    if ledger and ledger["rows"] == rows:
        return 0
    config = ledger["config"] if ledger else _comparable(cfg)  # checked equal; keeps a known data file
    write_atomic(path, json.dumps({"run": cfg.name, "dataset": results.get("dataset"), "model": results.get("model"),
                                   "config": config, "rows": rows}, indent=1) + "\n")
    return len({trial(r) for r in rows} - {trial(r) for r in (ledger or {}).get("rows", [])})
