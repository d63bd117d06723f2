"""The run directory: created once per run, holding the resolved config every stage reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from .. import distributed
from ..config import Config, ConfigError, dump_yaml, load_config
from ..errors import SparsearchError

# settings of how trials run, not of what they compute (results do not depend on them): free to change on re-runs
HOW_NOT_WHAT = {"run.executor", "run.workers", "run.retries", "run.ray_address"}


def prepare_run_dir(cfg: Config, extendable: tuple[str, ...] = ()) -> Path:
    """Create the run directory and write the resolved config; refuse to mix two different configs.
    Sections named in `extendable` only list work to do (e.g. `compare`: more variants or seeds), so they may
    change between invocations; what was finished stays valid and is skipped."""
    run_dir = cfg.run_dir
    if not distributed.is_main():  # under torchrun: rank 0 checks and writes, the others wait for it
        distributed.barrier()
        return run_dir
    written = run_dir / "config.yaml"
    text = dump_yaml(cfg)
    if written.exists() and written.read_text() != text:
        try:  # re-resolved, so settings added to sparsearch since then read as their defaults, not as changes
            before = yaml.safe_load(dump_yaml(load_config(written)))
        except ConfigError as exc:
            raise SparsearchError(f"{run_dir} holds a run whose config this version cannot read ({exc})") from None
        now = yaml.safe_load(text)
        for section in extendable:
            before.pop(section, None)
            now.pop(section, None)
        if changed := [k for k in _changed_keys(before, now) if k not in HOW_NOT_WHAT]:
            raise SparsearchError(f"{run_dir} holds a run with a different config ({', '.join(changed[:3])} differ); "
                                  "pick another name or delete it")
    run_dir.mkdir(parents=True, exist_ok=True)
    written.write_text(text)
    distributed.barrier()
    return run_dir


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out
