"""Benchmarks: each prints a table, writes JSON, and compares side by side in one process."""

from __future__ import annotations


def main(which: str, argv: list[str]) -> int:
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
    return run(argv)
