"""Report plots (matplotlib, Agg). The search diagnostics (alpha heatmap, cell diagram) live in `search.plots`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..search.plots import alpha_heatmap, cell_diagram  # noqa: E402

__all__ = ["accuracy_vs_sparsity", "alpha_heatmap", "cell_diagram"]


def accuracy_vs_sparsity(rows: list[dict], path: Path, title: str = "") -> None:
    """Test accuracy per method over sparsity; the dense (pretrained) accuracy of each cell as a dotted line."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        color = f"C{i}"
        ax.plot([100 * r["sparsity"] for r in mine], [100 * r["test_acc"] for r in mine], "o-", color=color, label=method)
        ax.axhline(100 * mine[0]["dense_test_acc"], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="cell from (dotted: dense)")
    ax.set_title(title or "accuracy after HYDRA pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
