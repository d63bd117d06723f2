"""The run directory: created once per run, holding the resolved config every stage reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import Config, dump_yaml
from ..errors import SparsearchError


def prepare_run_dir(cfg: Config, extendable: tuple[str, ...] = ()) -> Path:
    """Create the run directory and write the resolved config; refuse to mix two different configs.
    Sections named in `extendable` only list work to do (e.g. `compare`: more variants or seeds), so they may
    change between invocations; what was finished stays valid and is skipped."""
    run_dir = cfg.run_dir
    written = run_dir / "config.yaml"
    text = dump_yaml(cfg)
    if written.exists() and written.read_text() != text:
        before, now = yaml.safe_load(written.read_text()), yaml.safe_load(text)
        for section in extendable:
            before.pop(section, None)
            now.pop(section, None)
        if before != now:
            raise SparsearchError(f"{run_dir} holds a run with a different config; pick another name or delete it")
    run_dir.mkdir(parents=True, exist_ok=True)
    written.write_text(text)
    return run_dir
