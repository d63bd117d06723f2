"""Benchmarks: each prints a table, writes JSON, and compares side by side in one process."""

from __future__ import annotations

import sys


def main(which: str, argv: list[str]) -> int:
    """Run the benchmark `which` with its command-line `argv`; the load other processes put on the machine meanwhile
    goes into its JSON, and a warning is printed when the machine was not quiet."""
    if which == "train" and "--sparse" in argv:
        from .sparse_train import main as run

        argv = [a for a in argv if a != "--sparse"]
    elif which == "train":
        from .train_loop import main as run
    elif which == "search":
        from .search import main as run
    elif which == "runtime":
        from .runtime import main as run
    elif which == "architecture":
        from .architecture import main as run
    else:
        from .sparsity import main as run
    return timed(run, argv)


def timed(run, argv: list[str]) -> int:
    """`run(argv)`, a benchmark's main, with the load other processes put on the machine meanwhile recorded."""
    from .common import LOAD, load_warning

    LOAD.restart()
    code = run(argv)
    if warning := load_warning():
        print(warning, file=sys.stderr)
    return code
