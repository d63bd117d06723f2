"""Search diagnostics as PNGs (matplotlib, Agg): the alpha heatmap and the cell diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..models.genotypes import Genotype  # noqa: E402
from ..models.operations import PARAMETER_FREE, PRIMITIVES  # noqa: E402


def _node_name(src: int) -> str:
    return ["c_{k-2}", "c_{k-1}"][src] if src < 2 else str(src - 2)


def edge_labels(edges: int) -> list[str]:
    """Names of the supernet's edges in alpha-row order: node k reads c_{k-2}, c_{k-1}, then nodes 0..k-1."""
    steps = next(k for k in range(1, 16) if k * (k + 3) // 2 == edges)
    return [f"{_node_name(src)} -> {node}" for node in range(steps) for src in range(2 + node)]


def alpha_heatmap(normal: list[list[float]], reduce: list[list[float]], path: Path, title: str = "") -> None:
    """softmax(alpha) per edge (rows) and operation (columns), normal and reduction cells side by side; each
    row's strongest operation is annotated."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), constrained_layout=True)
    labels = edge_labels(len(normal))
    for ax, weights, name in zip(axes, (normal, reduce), ("normal", "reduction")):
        w = np.asarray(weights)
        im = ax.imshow(w, cmap="viridis", aspect="auto")  # own range: early in a search the rows are near-uniform
        ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i, j in zip(*np.nonzero(w == w.max(axis=1, keepdims=True))):
            ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_title(f"{name} cell")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title or "softmax(alpha)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell_diagram(genotype: Genotype, cell: str, path: Path, title: str = "") -> None:
    """The cell as a graph: inputs on the left, the four nodes, their concatenation on the right; each edge
    coloured and labelled by its operation (parameter-free operations dashed)."""
    edges = genotype.normal if cell == "normal" else genotype.reduce
    concat = genotype.normal_concat if cell == "normal" else genotype.reduce_concat
    steps = len(edges) // 2
    pos = {0: (0.0, 1.2), 1: (0.0, -1.2)}
    for node in range(steps):
        pos[2 + node] = (1.6 * (node + 1), 0.9 if node % 2 == 0 else -0.9)
    out = (1.6 * (steps + 1), 0.0)
    fig, ax = plt.subplots(figsize=(2.2 * (steps + 2), 4.2))
    colors = {op: f"C{i}" for i, op in enumerate(PRIMITIVES)}
    for i, (op, src) in enumerate(edges):
        (x0, y0), (x1, y1) = pos[src], pos[2 + i // 2]
        rad = 0.25 if i % 2 else -0.25
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=colors[op], linestyle="dashed" if op in PARAMETER_FREE else "solid",
                                    shrinkA=16, shrinkB=16, connectionstyle=f"arc3,rad={rad}"))
        # the midpoint of matplotlib's arc3 curve (a quadratic Bezier): half-way to its control point
        lx, ly = (x0 + x1) / 2 + 0.5 * rad * (y1 - y0), (y0 + y1) / 2 - 0.5 * rad * (x1 - x0)
        ax.text(lx, ly, op, fontsize=7, color=colors[op], ha="center", va="center",
                bbox=dict(fc="white", ec="none", alpha=0.85, pad=0.5))
    for node in concat:
        ax.annotate("", xy=out, xytext=pos[node], arrowprops=dict(arrowstyle="-|>", color="0.6", shrinkA=16, shrinkB=18))
    for key, (x, y) in pos.items():
        ax.text(x, y, _node_name(key), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc="tab:green" if key < 2 else "lightblue", ec="black"))
    ax.text(*out, "c_{k}", ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="khaki", ec="black"))
    ax.set_xlim(-0.8, out[0] + 0.8)
    ax.set_ylim(-2.0, 2.0)
    ax.axis("off")
    ax.set_title(title or f"{cell} cell")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
