"""Genotypes: a DARTS cell pair as a small typed value, saved as JSON, loadable by name or path.

A cell lists, for each of its 4 intermediate nodes, two (operation, input) pairs; inputs 0 and 1 are the
two previous cells' outputs, k >= 2 is intermediate node k - 2. `concat` names the nodes whose outputs
are concatenated into the cell's output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SparsearchError
from .operations import PARAMETER_FREE, PRIMITIVES

Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    reduce: tuple[Edge, ...]
    normal_concat: tuple[int, ...] = (2, 3, 4, 5)
    reduce_concat: tuple[int, ...] = (2, 3, 4, 5)

    def __post_init__(self):
        for cell in ("normal", "reduce"):
            edges, concat = getattr(self, cell), getattr(self, f"{cell}_concat")
            if len(edges) % 2 or not edges:
                raise SparsearchError(f"genotype {cell} cell needs two edges per node (at least one node), got "
                                      f"{len(edges)} edges")
            for i, (op, src) in enumerate(edges):
                if op not in PRIMITIVES:
                    raise SparsearchError(f"genotype {cell} cell: unknown operation '{op}'")
                if not 0 <= src < 2 + i // 2:
                    raise SparsearchError(f"genotype {cell} cell: edge {i} reads node {src}, which is not before it")
            nodes = 2 + len(edges) // 2
            if not concat or len(set(concat)) != len(concat) or not all(type(n) is int and 0 <= n < nodes for n in concat):
                raise SparsearchError(f"genotype {cell}_concat must list distinct nodes in [0, {nodes}), got "
                                      f"{list(concat)!r}")

    def parameter_free_count(self, cell: str = "normal") -> int:
        return sum(op in PARAMETER_FREE for op, _ in getattr(self, cell))

    def to_dict(self) -> dict:
        return {"normal": [list(e) for e in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(e) for e in self.reduce], "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, d: dict) -> Genotype:
        try:
            return cls(tuple((str(op), int(i)) for op, i in d["normal"]), tuple((str(op), int(i)) for op, i in d["reduce"]),
                       tuple(d.get("normal_concat", (2, 3, 4, 5))), tuple(d.get("reduce_concat", (2, 3, 4, 5))))
        except (KeyError, TypeError, ValueError) as exc:
            raise SparsearchError(f"not a genotype: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _g(normal, reduce) -> Genotype:
    return Genotype(tuple(normal), tuple(reduce))


# Published cells. DARTS_V1/V2: Liu et al. (ICLR 2019). DASS_*: the DASS authors' released genotypes for
# 90/95/99% sparsity; DARTS_ORIG_120: the dense DARTS cell their comparison scripts use.
GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": _g(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]),
    "DARTS_V2": _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
    "DASS_99": _g(
        [("avg_pool_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 1), ("skip_connect", 2),
         ("avg_pool_3x3", 2), ("skip_connect", 1), ("skip_connect", 4), ("skip_connect", 3)],
        [("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_3x3", 2),
         ("skip_connect", 0), ("dil_conv_3x3", 2), ("max_pool_3x3", 1), ("skip_connect", 4)]),
    "DASS_95": _g(
        [("sep_conv_5x5", 0), ("skip_connect", 1), ("dil_conv_5x5", 1), ("sep_conv_3x3", 2),
         ("dil_conv_3x3", 2), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_3x3", 0)],
        [("sep_conv_3x3", 0), ("avg_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
         ("sep_conv_5x5", 1), ("sep_conv_5x5", 2), ("dil_conv_3x3", 1), ("dil_conv_3x3", 2)]),
    "DASS_90": _g(
        [("dil_conv_3x3", 1), ("dil_conv_5x5", 0), ("sep_conv_5x5", 0), ("dil_conv_5x5", 1),
         ("sep_conv_5x5", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 2), ("dil_conv_5x5", 0)],
        [("skip_connect", 1), ("skip_connect", 0), ("dil_conv_5x5", 1), ("dil_conv_5x5", 2),
         ("dil_conv_5x5", 2), ("dil_conv_5x5", 3), ("dil_conv_5x5", 3), ("skip_connect", 0)]),
    "DARTS_ORIG_120": _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 1),
         ("skip_connect", 0), ("skip_connect", 2), ("skip_connect", 0), ("skip_connect", 1)],
        [("avg_pool_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 2), ("avg_pool_3x3", 0),
         ("skip_connect", 2), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0), ("skip_connect", 2)]),
}


def load_genotype(spec: str | dict | Genotype) -> Genotype:
    """A genotype from a published name, a JSON file path, or a dict."""
    if isinstance(spec, Genotype):
        return spec
    if isinstance(spec, dict):
        return Genotype.from_dict(spec)
    if spec in GENOTYPES:
        return GENOTYPES[spec]
    path = Path(spec)
    if not path.is_file():
        raise SparsearchError(f"unknown genotype '{spec}': not a published name ({', '.join(GENOTYPES)}) nor a JSON file")
    try:
        return Genotype.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise SparsearchError(f"genotype file {path} is not valid JSON: {exc}") from None
