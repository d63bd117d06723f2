"""The per-layer sparsity report of a masked model: one row per masked layer and two totals."""

from __future__ import annotations

import torch.nn as nn

from .layers import _parametrization, is_maskable, layer_weight, masked_layers


def report(model: nn.Module) -> list[dict]:
    """One row per masked layer plus a total row: name, shape, kind, density, kept, numel."""
    rows, kept_total, numel_total = [], 0, 0
    for name, module in masked_layers(model).items():
        p = _parametrization(module)
        mask = p.current()
        kept, numel = int(mask.sum()), mask.numel()
        rows.append({"name": name, "shape": list(mask.shape), "kind": str(p.kind), "mask": type(p).__name__,
                     "density": kept / numel, "kept": kept, "numel": numel})
        kept_total += kept
        numel_total += numel
    all_weights = sum(layer_weight(m).numel() for m in model.modules() if is_maskable(m))
    dense_rest = all_weights - numel_total
    rows.append({"name": "(masked layers)", "density": kept_total / max(1, numel_total), "kept": kept_total,
                 "numel": numel_total})
    rows.append({"name": "(all maskable weights)", "density": (kept_total + dense_rest) / max(1, all_weights),
                 "kept": kept_total + dense_rest, "numel": all_weights})
    return rows


def print_report(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="per-layer sparsity")
    for col in ("layer", "shape", "kind", "density", "kept", "numel"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in rows:
        table.add_row(r["name"], "x".join(map(str, r.get("shape", []))), r.get("kind", ""), f"{r['density']:.4f}",
                      str(r["kept"]), str(r["numel"]))
    Console().print(table)
