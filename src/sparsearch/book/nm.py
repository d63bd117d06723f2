"""Book claim 9 (Bambhaniya et al. 2024, progressive gradient flow): at high N:M ratios, training a transformer with
a mask that decays progressively (MDGF) beats SR-STE. Judged by RULES.md: superiority of decay - SR-STE, paired by
seed and pooled over the ratios (1:8, 1:16), smallest effect 0.5 points; the dense ViT beside them, not judged."""

from __future__ import annotations

from . import statistics as stats
from .chapters import by_variant, compare_seconds, versus
from .verdicts import Chapter, common_seeds, effect_text, pct, per_seed, seeds_text, table

VARIANTS = ("nm-decay", "nm-srste")


def _ratio(s: float) -> str:
    return f"1:{round(1 / (1 - s))}"


def nm_decay_vs_srste(results: dict, at: str = "") -> Chapter:
    t = by_variant(results)
    sparsities = sorted(s for v, s in t if v == VARIANTS[0] and (VARIANTS[1], s) in t)
    pairs = [common_seeds(per_seed(results, VARIANTS[0], s), per_seed(results, VARIANTS[1], s)) for s in sparsities]
    test = stats.judge(f"{VARIANTS[0]} - {VARIANTS[1]} over {', '.join(_ratio(s) for s in sparsities)}", "superiority",
                       *stats.seed_means(pairs), 0.005)
    dense = t.get(("dense", 0.0))
    body = (table(["N:M", "mask decay % (seeds)", "SR-STE % (seeds)", "decay - SR-STE, points [95% interval]"],
                  [[_ratio(s), seeds_text(t[VARIANTS[0], s]), seeds_text(t[VARIANTS[1], s]),
                    effect_text(results, *VARIANTS, s)] for s in sparsities])
            + f"\n{at} (`book/configs/vit-nm-cifar10.yaml`); every linear layer of the blocks (q, k, v, the "
            "attention's output, both MLP layers) N:M along its inputs, the patch embedding and the head dense."
            + (f" The dense ViT reaches {seeds_text(dense)}." if dense else "") + "\n"
            + versus("ViT-B/16 on ImageNet (and SwinV2, T5X), N:M up to 1:32 on the feed-forward layers, 300 epochs: "
                     "the decaying masks beat SR-STE by up to ~2 points top-1 at sparsities above 80% (the abstract's "
                     "figure; the per-ratio tables could not be read)",
                     "a 4-block ViT (dim 64) on CIFAR-10 at " + ", ".join(
                         f"{_ratio(s)}: decay {pct(t[VARIANTS[0], s]['acc_mean'])}%, SR-STE "
                         f"{pct(t[VARIANTS[1], s]['acc_mean'])}%" for s in sparsities),
                     "a ViT 600x smaller on a 10-class task for a fifteenth of the epochs, every block layer sparse "
                     "rather than the feed-forward ones only"))
    return Chapter(
        "Progressive mask decay vs SR-STE for N:M sparse transformers",
        "Bambhaniya et al., Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers (2024)",
        "At high N:M sparsity a transformer trained with a progressively decaying mask (MDGF) is more accurate than one "
        "trained with SR-STE.",
        "RULES.md (book v3): the paired effect of decay - SR-STE over seeds, pooled over the N:M ratios, with its 95% "
        "interval: reproduced when it lies above 0, not reproduced when it lies below 0.5 points, inconclusive between.",
        body, test.text, compare_seconds(results), "vit-nm-accuracy.png", judgements=[test])
