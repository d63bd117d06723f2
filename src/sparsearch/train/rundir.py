"""The run directory: created once per run, holding the resolved config every stage reads."""

from __future__ import annotations

from pathlib import Path

from ..config import Config, dump_yaml
from ..errors import SparsearchError


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory and write the resolved config; refuse to mix two different configs."""
    run_dir = cfg.run_dir
    written = run_dir / "config.yaml"
    text = dump_yaml(cfg)
    if written.exists() and written.read_text() != text:
        raise SparsearchError(f"{run_dir} holds a run with a different config; pick another name or delete it")
    run_dir.mkdir(parents=True, exist_ok=True)
    written.write_text(text)
    return run_dir
