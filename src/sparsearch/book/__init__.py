"""The results book: the project's experiment log. `sparsearch book` reruns, at CPU scale on CIFAR-10, the comparisons
the seed papers make (`runs.py`, with its configs in `configs/`), and writes one document in which each claim's
chapter (`chapters.py`) gives the paper's claim, our numbers and a verdict by a rule fixed in advance
(`verdicts.py`)."""

from .runs import RUNS, SCALES, run_book

__all__ = ["RUNS", "SCALES", "run_book"]
