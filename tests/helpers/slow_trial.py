"""A trial for the executor tests run in a subprocess: says it has started, then runs for a long time."""

import time
from pathlib import Path


def announce_then_sleep(marker: str) -> None:
    Path(marker).touch()
    time.sleep(600)
