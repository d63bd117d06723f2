"""The results book: the project's experiment log. `sparsearch book` reruns, on CIFAR-10 at CPU scale (or at
`--scale gpu`), the comparisons the seed papers make: `runs.py` lists the runs and their configs (`configs/`),
`make.py` runs what is missing, and `document.py` writes one document in which each claim's chapter (`chapters.py`,
`searches.py`, `architecture.py`) gives the paper's claim, our numbers and a verdict by rules fixed in advance
(`statistics.py`, `verdicts.py`, docs/results/RULES.md)."""

from .make import run_book
from .runs import RUNS, SCALES

__all__ = ["RUNS", "SCALES", "run_book"]
