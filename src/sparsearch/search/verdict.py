"""Did a differentiable search learn anything? A search whose softmax(alpha) never left uniform derives a cell
from noise, and ranking such a cell says nothing about the method. This module states, from the per-epoch
architecture weights, whether the search moved away from uniform and whether its derived cell settled.

The rule (fixed before looking at any numbers, not tuned on them):
- an edge's *deviation* is max_k |p_k - 1/K| over its K candidate operations; a cell's is the mean over its edges;
- the search **moved** when, at its last epoch, either cell's deviation is at least `MOVED` (a fifth of the uniform
  weight 1/K for DARTS' K = 8: a typical edge's strongest preference is 0.150 against the uniform 0.125);
- it **settled** when the derived genotype did not change over the last `max(2, 20%)` epochs.
Where it did not move, the budget needed is a linear extrapolation of the deviation gained per step so far.
"""

from __future__ import annotations

import json
import math
from typing import Any

MOVED = 0.025
SETTLE_FRACTION = 0.2


def deviation(probs: list[list[float]]) -> float:
    """Mean over edges of the largest distance of an operation's weight from uniform."""
    return sum(max(abs(p - 1 / len(edge)) for p in edge) for edge in probs) / len(probs)


def normalised_entropy(probs: list[list[float]]) -> float:
    """Mean over edges of H(p) / log K: 1 is uniform, 0 is one operation per edge."""
    return sum(-sum(p * math.log(p) for p in edge if p > 0) / math.log(len(edge)) for edge in probs) / len(probs)


def search_verdict(epochs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """`epochs`: one record per epoch with `normal`, `reduce` (softmax(alpha) per edge) and `genotype`;
    `steps`: the architecture steps the search took. Returns numbers and the verdict in words."""
    last = epochs[-1]
    dev = max(deviation(last["normal"]), deviation(last["reduce"]))
    window = max(2, math.ceil(SETTLE_FRACTION * len(epochs)))
    recent = {json.dumps(e["genotype"], sort_keys=True) for e in epochs[-window:]}
    moved, settled = dev >= MOVED, len(epochs) >= window and len(recent) == 1
    verdict: dict[str, Any] = {
        "moved": moved, "settled": settled, "deviation": dev, "threshold": MOVED, "epochs": len(epochs),
        "steps": steps, "settle_window": window,
        "entropy_normal": normalised_entropy(last["normal"]), "entropy_reduce": normalised_entropy(last["reduce"]),
    }
    if moved:
        verdict["words"] = (f"moved away from uniform (deviation {dev:.3f} >= {MOVED}) and "
                            + (f"settled (the same cell over the last {window} epochs)" if settled else
                               f"had not settled (the cell still changed within the last {window} epochs)"))
    else:
        needed = math.ceil(steps * MOVED / dev) if dev > 0 else None
        verdict["steps_needed"] = needed
        verdict["words"] = (f"did not move away from uniform (deviation {dev:.4f} < {MOVED} after {steps} steps): "
                            "its cell is noise, not evidence" + (f"; at the rate seen, about {needed:,} architecture "
                                                                 "steps (or a larger search.arch_lr) would be needed"
                                                                 if needed else ""))
    return verdict
