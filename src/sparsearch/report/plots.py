"""Every picture sparsearch draws (matplotlib, Agg); the search diagnostics (alpha heatmap, cell diagram) are in
`search_plots.py`. Stages that draw (a search, a DST or soup training, a comparison) call these."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .search_plots import alpha_heatmap, cell_diagram  # noqa: E402

__all__ = ["accuracy_vs_sparsity", "alpha_heatmap", "cell_diagram", "churn_plot", "comparison_plot", "effects_plot",
           "paired_seeds_plot", "soup_plot"]


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: dict | None = None) -> None:
    """Labels, grid, legend and title the same way in every plot; save and close."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(**(legend or {}))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_vs_sparsity(rows: list[dict], path: Path, title: str = "") -> None:
    """Test accuracy per method over sparsity (mean over search seeds, error bars one standard deviation where
    there are several); the dense (pretrained) accuracy of each cell as a dotted line."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        by_sparsity: dict[float, list[dict]] = {}
        for r in rows:
            if r["method"] == method:
                by_sparsity.setdefault(r["sparsity"], []).append(r)
        xs = sorted(by_sparsity)
        acc = [[100 * r["test_acc"] for r in by_sparsity[x]] for x in xs]
        mean = [sum(a) / len(a) for a in acc]
        std = [(sum((v - m) ** 2 for v in a) / (len(a) - 1)) ** 0.5 if len(a) > 1 else 0.0 for a, m in zip(acc, mean)]
        color = f"C{i}"
        ax.errorbar([100 * x for x in xs], mean, yerr=std, marker="o", capsize=3, color=color, label=method)
        dense = [r["dense_test_acc"] for x in xs for r in by_sparsity[x]]
        ax.axhline(100 * sum(dense) / len(dense), color=color, linestyle=":", linewidth=1)
    _finish(fig, ax, path, "sparsity (%)", "test accuracy (%)", title or "accuracy after HYDRA pruning",
            legend={"title": "cell from (dotted: dense)"})


def comparison_plot(table: list[dict], path: Path, title: str = "") -> None:
    """Mean test accuracy per variant over sparsity, error bars one standard deviation over seeds; dense as a band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sparse = [t for t in table if t["sparsity"] > 0]
    for i, variant in enumerate(dict.fromkeys(t["variant"] for t in sparse)):
        mine = sorted((t for t in sparse if t["variant"] == variant), key=lambda t: t["sparsity"])
        ax.errorbar([100 * t["sparsity"] for t in mine], [100 * t["acc_mean"] for t in mine],
                    yerr=[100 * t["acc_std"] for t in mine], marker="o", capsize=3, color=f"C{i}", label=variant)
    for t in (t for t in table if t["sparsity"] == 0):
        mean, std = 100 * t["acc_mean"], 100 * t["acc_std"]
        ax.axhline(mean, color="k", linestyle=":", linewidth=1, label=f"{t['variant']} (dense)")
        ax.axhspan(mean - std, mean + std, color="k", alpha=0.08)
    _finish(fig, ax, path, "sparsity (%)", "test accuracy (%)", title, legend={"fontsize": 8})


def paired_seeds_plot(rows: list[dict], variants: list[str], path: Path, title: str = "") -> float | None:
    """Each seed's test accuracy under each variant, a line per seed joining its variants (the pairs a paired test
    compares), at the highest sparsity all of them ran, which it returns; None (nothing drawn) where there is none.
    A "dense" variant, the reference of a comparison against the dense network, joins at any sparsity."""
    sparse = [v for v in variants if v != "dense"]
    shared = set.intersection(*({r["sparsity"] for r in rows if r["variant"] == v and "test_acc" in r} for v in sparse)) \
        if sparse else {0.0}
    if not shared:
        return None
    s = max(shared)
    acc = {(r["variant"], r["seed"]): 100 * r["test_acc"] for r in rows if r["variant"] in variants and "test_acc" in r
           and r.get("sparsity") == (0.0 if r["variant"] == "dense" else s)}
    fig, ax = plt.subplots(figsize=(2.6 + 1.4 * len(variants), 4.2))
    x = range(len(variants))
    for i, seed in enumerate(sorted({k for _, k in acc})):
        ys = [acc.get((v, seed)) for v in variants]
        ax.plot(x, [float("nan") if y is None else y for y in ys], "o-", color=f"C{i}", alpha=0.7, label=f"seed {seed}")
    means = [[a for (v2, _), a in acc.items() if v2 == v] for v in variants]
    ax.plot(x, [sum(m) / len(m) for m in means], "k_", markersize=28, markeredgewidth=2, label="mean")
    ax.set_xticks(list(x), variants)
    ax.set_xlim(-0.5, len(variants) - 0.5)
    dense_at = " (dense: 0%)" if s and "dense" in variants else ""
    _finish(fig, ax, path, f"at {100 * s:g}% sparsity{dense_at}", "test accuracy (%)", title,
            legend={"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1)})
    return s


VERDICT_COLOURS = {"reproduced": "C2", "not reproduced": "C3", "inconclusive": "0.45"}


def effects_plot(effects: list[dict], path: Path, title: str = "") -> None:
    """A forest plot: per test (dicts of label, word, estimate, low, high, smallest, kind; in points),
    the effect and the interval its rule read, coloured by verdict, with 0 and its smallest effect of interest
    (+- for an equivalence test) marked on its row."""
    fig, ax = plt.subplots(figsize=(7.6, 1.4 + 0.45 * len(effects)))
    for y, e in enumerate(reversed(effects)):
        colour = VERDICT_COLOURS.get(e["word"], "k")
        ax.plot([e["low"], e["high"]], [y, y], color=colour, linewidth=2.5)
        ax.plot(e["estimate"], y, "o", color=colour, label=e["word"])
        deltas = [e["smallest"], -e["smallest"]] if e["kind"] == "equivalence" else [e["smallest"]]
        ax.plot(deltas, [y] * len(deltas), "|", color="k", markersize=14, label="smallest effect of interest")
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(effects)), [e["label"] for e in reversed(effects)], fontsize=8)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one legend entry per label
    _finish(fig, ax, path, "A - B, points (the interval its rule read)", "", title,
            legend={"handles": list(handles.values()), "labels": list(handles), "fontsize": 7})


def churn_plot(churn: list[dict], path: Path, title: str = "") -> None:
    """Topology churn of dynamic sparse training: per layer, the fraction of its active weights regrown at each update."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    layers = list(dict.fromkeys(name for u in churn for name in u["layers"]))
    for i, name in enumerate(layers):
        points = [(u["step"], u["layers"][name]["regrown"] / u["layers"][name]["active"]) for u in churn if name in u["layers"]]
        ax.plot(*zip(*points), marker=".", linewidth=1, color=plt.cm.viridis(i / max(1, len(layers) - 1)),
                label=name if len(layers) <= 12 else None)
    ax.plot([u["step"] for u in churn], [u["drop_fraction"] for u in churn], "k--", linewidth=1, label="drop fraction")
    _finish(fig, ax, path, "step", "regrown / active weights", title or "topology churn per update",
            legend={"fontsize": 7, "ncol": 2})


def soup_plot(history: list[dict], path: Path, title: str = "") -> None:
    """Sparse model soups per phase: every ingredient's test accuracy against the uniform and the greedy soup's."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sparsity = [100 * (1 - h["density"]) for h in history]
    for h, x in zip(history, sparsity):
        accs = [100 * i["test_acc"] for i in h["ingredients"]]
        ax.scatter([x] * len(accs), accs, color="0.5", s=18, zorder=2, label="ingredients" if h is history[0] else None)
    for kind, style in (("uniform", "C0o-"), ("greedy", "C1s--")):
        ax.plot(sparsity, [100 * h[kind]["test_acc"] for h in history], style, label=f"{kind} soup")
    _finish(fig, ax, path, "sparsity after the phase (%)", "test accuracy (%)", title, legend={"fontsize": 8})
