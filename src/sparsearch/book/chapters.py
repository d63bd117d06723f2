"""The results book's chapters: for each seed paper's claim, its verdict rule (fixed before the numbers), our numbers
from the book's runs, a table, and the verdict the rule gives. `make.py` runs what they read and writes the document."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import statistics as stats
from .runs import GPU_COMMAND
from .verdicts import Chapter, Figure, common_seeds, effect_text, judged, load_text, pct, per_seed, proxy_budget, seeds_text, table


# ------------------------------------------------------------------------------------------------ the comparisons
def by_variant(results: dict) -> dict[tuple[str, float], dict]:
    return {(t["variant"], t["sparsity"]): t for t in results["table"]}


def _dense_line(t: dict) -> str:
    """The dense accuracy a comparison starts from (its `dense` rows), as a sentence."""
    d = t.get(("dense", 0.0))
    return f" The dense network reaches {seeds_text(d)}." if d else ""


def compare_seconds(results: dict, variants: set[str] | None = None, sparsities: set[float] | None = None) -> float:
    """The CPU time of a comparison's rows (of `variants` at `sparsities`, all by default): a row's seconds are every
    stage its trial trained (IMP's every level). A chapter names its sparsities: one run holds several claims' rows,
    static ERK in two of them."""
    return sum(r["train_seconds"] for r in results["rows"] if (variants is None or r["variant"] in variants)
               and (sparsities is None or r["sparsity"] in sparsities))


V3 = ("RULES.md (book v3): no verdict where the dense network is below 85%; otherwise the paired effect over seeds "
      "with its 95% interval, ")
# (title, paper, claim) of the claims a CPU book may defer to the GPU scale
RANDOM_SEARCH = ("Random search vs random sparse configurations", "Farahani, Random Search as a Baseline for Sparse NAS (2024)",
                 "Sparse networks found by random search perform no better than random sparse configurations at the same "
                 "sparsity.")
IMP = ("Iterative magnitude pruning with rewinding vs one-shot pruning",
       "Frankle et al., Linear Mode Connectivity and the LTH (ICML 2020)",
       "Pruning iteratively with weight rewinding reaches higher accuracy than pruning once to the same sparsity.")
SOUP = ("Sparse model soup vs its best ingredient", "Zimmer et al., Sparse Model Soups (ICLR 2024)",
        "Averaging ingredients retrained from the same pruned model (same mask) gives a model better than each ingredient.")


def setting(cfg) -> str:
    """The budget a v3 comparison trained at, in words, from its config."""
    data = f"{cfg.data.train_subset:,} of the training images" if cfg.data.train_subset else "all 50,000 training images"
    shape = ", ".join(f"{k} {v}" for k, v in cfg.model.kwargs.items())
    return (f"{cfg.model.name} ({shape or 'as registered'}), {data}, {cfg.train.epochs} epochs "
            f"({cfg.train.optimizer} {cfg.train.lr:g}, {cfg.train.schedule}, weight decay {cfg.train.weight_decay:g}"
            f"{', bf16 autocast' if cfg.train.amp else ''}), every variant as long as the dense network")


def versus(paper: str, ours: str, differs: str) -> str:
    """The chapter's "paper vs ours" table: the paper's setting and numbers (from the paper, with what could not be
    read said so), ours, and what differs."""
    return ("\n**Paper vs ours:**\n\n" + table(["", "paper", "ours"], [["setting and numbers", paper, ours]])
            + f"\nWhat differs: {differs}\n")


def _effect_rows(t: dict, results: dict, names: list[str], a: str, b: str, sparsities: list[float]) -> list[list]:
    return [[f"{100 * s:g}%", *(seeds_text(t[n, s]) for n in names), effect_text(results, a, b, s)] for s in sparsities]


def _mean(t: dict, key: tuple[str, float]) -> str:
    return pct(t[key]["acc_mean"]) + "%" if key in t else "not run"


def erk_vs_uniform(pruning: dict, at: str = "") -> Chapter:
    t = by_variant(pruning)
    sparsities = sorted(s for v, s in t if v == "static-uniform" and ("static-erk", s) in t)
    high = sparsities[-1]
    test = judged("superiority", pruning, "static-erk", "static-uniform", [high], 0.005)
    return Chapter(
        "ERK vs uniform random pruning at high sparsity", "Liu et al., The Unreasonable Effectiveness of Random Pruning (ICLR 2022)",
        "Random pruning with ERK layer-wise ratios trains to higher accuracy than uniform ratios, the more so the higher the sparsity.",
        V3 + "judged at the highest sparsity, where the claim says the gap is largest: reproduced when the interval "
        "of ERK - uniform lies above 0, not reproduced when it lies below 0.5 points, inconclusive between. The lower "
        "sparsities are reported, not judged.",
        table(["sparsity", "ERK % (seeds)", "uniform % (seeds)", "ERK - uniform, points [95% interval]"],
              _effect_rows(t, pruning, ["static-erk", "static-uniform"], "static-erk", "static-uniform", sparsities))
        + f"\n{at}; trained from scratch with the random mask (`book/configs/cifar10-v3.yaml`). Accuracy: mean ± "
        "sample std over seeds." + _dense_line(t) + "\n"
        + versus("CIFAR-10/100 ResNets (depth 20-110, widths 8-32) and wide ResNets, 160 epochs, batch 128, SGD 0.1, "
                 "decay x0.1 at epochs 80 and 120, weight decay 5e-4; ERK ahead of uniform, most visibly at density "
                 "<= 0.1 (the per-table accuracies could not be read; the repository's code and recipe could)",
                 f"ResNet-20 at 98%: ERK {_mean(t, ('static-erk', high))}, uniform {_mean(t, ('static-uniform', high))}",
                 "our budget is a fifth of the paper's epochs, on JPEG-recompressed CIFAR-10, with one network"),
        proxy_budget(pruning) or test.text,
        compare_seconds(pruning, variants={"static-erk", "static-uniform"}, sparsities=set(sparsities)),
        "cifar10-erk-uniform.png", figure=Figure("paired", ("static-uniform", "static-erk")), judgements=[test])


def _ablation_text(st: dict, ablation: dict | None, s: float, every: int) -> str:
    """RigL's update interval ablated (seed 0, variants rigl-every-N) beside the claim's run (every `every` steps)."""
    if not ablation:
        return "\nThe update-interval ablation (seed 0, other intervals) has not finished.\n"
    runs = {int(v.rsplit("-", 1)[1]): acc for v in {r["variant"] for r in ablation["rows"]}
            if v.startswith("rigl-every-") and 0 in (acc := per_seed(ablation, v, s))}
    runs[every] = per_seed(st, "rigl", s)
    rows = [[f"every {n} steps" + (" (the claim's runs)" if n == every else ""),
             pct(acc[0]) if 0 in acc else "not run"] for n, acc in sorted(runs.items())]
    return ("\nThe dynamic-sparse-training sanity check: RigL's update interval ablated on seed 0 at "
            f"{100 * s:g}% (test accuracy %):\n\n" + table(["update", "RigL seed 0 %"], rows))


def rigl_set_static(st: dict, at: str = "", ablation: dict | None = None, every: int = 100) -> Chapter:
    t = by_variant(st)
    order = ["rigl", "set", "static-erk"]
    sparsities = sorted(s for v, s in t if v == "rigl")
    dynamic = judged("superiority", st, "rigl", "static-erk", sparsities, 0.005)
    regrowth = judged("no better", st, "set", "rigl", sparsities, 0.005)
    words = {dynamic.word, regrowth.word}
    said = proxy_budget(st) or (f"**{words.pop()}**: " if len(words) == 1 else "**mixed**: ") + \
        f"(a) {dynamic.text}; (b) {regrowth.text}"
    s = sparsities[0]
    return Chapter(
        "RigL vs SET vs static sparse training", "Evci et al., Rigging the Lottery (ICML 2020)",
        "At the same sparsity and training budget, RigL (gradient regrowth) beats SET (random regrowth), which beats a "
        "static random (ERK) mask; as the field reads it now: (a) dynamic beats static, (b) RigL is at least SET.",
        V3 + "pooled over the sparsities: (a) RigL - static ERK, reproduced when its interval lies above 0, not "
        "reproduced below 0.5 points; (b) SET - RigL, reproduced when its 90% interval lies below 0.5 points (TOST), "
        "not reproduced when the 95% one lies above 0. Both reproduced: reproduced; both not: not reproduced; else "
        f"mixed. RigL runs in its own regime (update every {every} steps, topology fixed after 75% of training, >= 20 "
        "epochs), and its update interval is ablated beside it.",
        table(["sparsity", "RigL % (seeds)", "SET % (seeds)", "static ERK % (seeds)", "RigL - static ERK [95%]"],
              _effect_rows(t, st, order, "rigl", "static-erk", sparsities))
        + f"\n{at} (`book/configs/cifar10-v3.yaml`)." + _dense_line(t) + "\n"
        + _ablation_text(st, ablation, s, every)
        + versus("WRN-22-2 on CIFAR-10 at 80%, 250 epochs, ERK (an independent reproduction the paper's authors "
                 "endorse): static 91.2, SET 92.9, RigL 93.1 (+-0.1-0.3 over seeds)",
                 f"ResNet-20 at {100 * s:g}%: static ERK {_mean(t, ('static-erk', s))}, SET {_mean(t, ('set', s))}, "
                 f"RigL {_mean(t, ('rigl', s))}",
                 "a smaller, sparser network and an eighth of the epochs; the paper's gap (~2 points) is four times "
                 "our smallest effect of interest"),
        said, compare_seconds(st, variants=set(order), sparsities=set(sparsities)) + _ablation_seconds(ablation),
        "cifar10-rigl-set-static.png", figure=Figure("paired", ("static-erk", "set", "rigl")),
        judgements=[dynamic, regrowth])


def _ablation_seconds(ablation: dict | None) -> float:
    if not ablation:
        return 0.0
    return compare_seconds(ablation, variants={r["variant"] for r in ablation["rows"] if r["variant"].startswith("rigl-every-")})


def imp_vs_oneshot(st: dict, long_dense: dict | None = None) -> Chapter:
    t = by_variant(st)
    sparsities = sorted({s for v, s in t if v == "imp"})
    matched = ("" if not long_dense else " The dense network trained as long as IMP reaches "
               f"{seeds_text(by_variant(long_dense)['dense', 0.0])}.")
    test = judged("superiority", st, "imp", "oneshot", sparsities, 0.005)
    return Chapter(
        *IMP,
        V3 + "pooled over the sparsities: reproduced when the interval of IMP - one-shot lies above 0, not reproduced "
        "when it lies below 0.5 points, inconclusive between.",
        table(["sparsity", "IMP (rewinding) % (seeds)", "one-shot magnitude % (seeds)", "IMP - one-shot [95%]"],
              _effect_rows(t, st, ["imp", "oneshot"], "imp", "oneshot", sparsities))
        + "\nMatched budgets: one-shot finetunes as long as IMP's levels after the dense one train, and a dense "
        "network trains as long as all of IMP's levels." + _dense_line(t) + matched + "\n"
        + versus("ResNet-20 on CIFAR-10, 160 epochs per level (SGD 0.1, weight decay 1e-4), 20% pruned per level, "
                 "rewinding to about step 2,000: matching subnetworks down to 16.8% density",
                 "ResNet-20, 160 epochs per level, 70% pruned per level to 90% (two levels), rewinding to step 2,000",
                 "fewer, larger pruning steps"),
        proxy_budget(st) or test.text, compare_seconds(st, {"oneshot", "imp"}), judgements=[test])


def soup_vs_best_ingredient(st: dict, run_dir: Path) -> Chapter:
    """Each phase's uniform soup against its ingredient with the best validation accuracy (chosen on validation, never
    on test), paired by seed; the phases and sparsities of one seed pooled into one comparison (RULES.md)."""
    rows, by_phase = [], {}
    for summary in sorted(run_dir.glob("compare/seed-*/soup-*/soup.json")):
        seed, variant = int(summary.parent.parent.name.split("-")[1]), summary.parent.name
        for phase in json.loads(summary.read_text()):
            chosen = max(phase["ingredients"], key=lambda i: i["val_acc"])
            mean = statistics.fmean(i["test_acc"] for i in phase["ingredients"])
            by_phase.setdefault((variant, phase["phase"]), {})[seed] = (phase["uniform"]["test_acc"], chosen["test_acc"])
            rows.append([f"seed {seed}, {variant}", phase["phase"], f"{phase['density']:.3f}", pct(mean),
                         pct(chosen["test_acc"]), pct(phase["uniform"]["test_acc"]), pct(phase["greedy"]["test_acc"]),
                         f"{100 * (phase['uniform']['test_acc'] - chosen['test_acc']):+.2f}"])
    seeds = sorted(set.intersection(*(set(d) for d in by_phase.values()))) if by_phase else []
    pairs = [([d[k][0] for k in seeds], [d[k][1] for k in seeds]) for d in by_phase.values()]
    tests = [stats.judge("uniform soup - best ingredient", "superiority", *stats.seed_means(pairs), 0.003)] if seeds else []
    return Chapter(
        *SOUP,
        V3 + "all phases and sparsities of a seed pooled into one paired comparison of the uniform soup against the "
        "ingredient with the best validation accuracy: reproduced when the interval lies above 0, not reproduced when "
        "it lies below 0.3 points, inconclusive between.",
        table(["run", "phase", "density", "ingredients mean %", "best ingredient (validation) %", "uniform soup %",
               "greedy soup %", "soup - best (points)"], rows)
        + versus("ResNets and WRNs on CIFAR-10/100 and ImageNet, 3 phases to 90%; the soups beat their ingredients "
                 "at sparsities above 80% (per-table accuracies could not be read)",
                 "ResNet-20 on CIFAR-10, 2 phases to 90%, 3 ingredients a phase", "two phases, not three"),
        proxy_budget(st) or (tests[0].text if tests else "**no verdict**: no soup finished"),
        compare_seconds(st, variants={"soup"}), judgements=tests)


DEFERRED = {"search": (RANDOM_SEARCH, ["book-search", "book-random-configuration"],
                       "a DASS, a DARTS and a random search per sparsity and seed on the reference's schedule (GPU days)"),
            "imp": (IMP, ["imp-cifar10", "dense-cifar10-480"],
                    "three trainings for IMP, and one-shot and dense trained as long: ~9 dense trainings a seed"),
            "soup": (SOUP, ["soup-cifar10"], "a dense training and 2 phases x 3 ingredients of a quarter of it: ~2.5 a seed")}


def deferred(which: str) -> Chapter:
    """A claim the CPU book does not run (each seed needs several trainings or a search): where it runs instead."""
    (title, source, claim), runs, cost = DEFERRED[which]
    return Chapter(title, source, claim, "RULES.md (book v3), as at the GPU scale.",
                   f"Not run at CPU scale: {cost}, which the CPU book cannot hold (claims 3, 4, 8 and 9 already take "
                   "~35 core-hours at a budget whose dense network means something: docs/results/pilots.md). "
                   f"`{GPU_COMMAND}` runs it ({', '.join(runs)}: 160 epochs a training, 3 "
                   "seeds).\n", "**not run at this scale**: runs at `--scale gpu`", None)


def _against_dense(results: dict, variant: str, s: float) -> tuple[list[float], list[float]]:
    """A variant at sparsity s and the dense network, on the seeds both ran (paired: same seed, same data order)."""
    return common_seeds(per_seed(results, variant, s), per_seed(results, "dense", 0.0))


def _span(ratios: list[float]) -> str:
    lo, hi = f"{min(ratios):.2f}x", f"{max(ratios):.2f}x"
    return lo if lo == hi else f"{lo} to {hi}"


IFT = ("wide-rigl-uniform", "wide-rigl", "wide-static")  # the paper's uniform allocation first, ERK beside it


def sparse_ift(results: dict, inference: dict, at: str = "") -> Chapter:
    t = by_variant(results)
    dense = t["dense", 0.0]
    sparsities = sorted({s for v, s in t if v == IFT[0]})
    rows = [["dense", "-", seeds_text(dense), "", "1", f"{dense['macs'] / 1e6:.2f}", f"{dense['params']:,.0f}"]]
    for s in sparsities:
        for v in IFT:
            if (v, s) in t:
                r = t[v, s]
                rows.append([v, f"{100 * s:g}%", seeds_text(r), stats.difference(*_against_dense(results, v, s)).text(),
                             f"{r['density']:.3f}", f"{r['macs'] / 1e6:.2f}", f"{r['params']:,.0f}"])
    timing, slower = [], []  # inference: network -> {"batch-<b>": {"engine", "ms"}}; slower: each vs dense
    for batch in sorted({k for per in inference.values() for k in per}, key=lambda k: int(k.split("-")[1])):
        for name, per in inference.items():
            if batch in per:
                ratio = per[batch]["ms"] / inference["dense"][batch]["ms"]
                timing.append([name, batch.split("-")[1], per[batch]["engine"], f"{per[batch]['ms']:.2f}", f"{ratio:.2f}x"])
                if name != "dense":
                    slower.append(ratio)
    pooled = [_against_dense(results, IFT[0], s) for s in sparsities]
    test = stats.judge(f"{IFT[0]} - dense", "superiority", *stats.seed_means(pooled), 0.005)
    body = (table(["network", "s", "test acc % (seeds)", "- dense, points [95%, paired]", "weight density",
                   "MMACs (non-zero)", "params (non-zero)"], rows)
            + "\nSparse Wide widens every layer by sqrt(1/(1-s)) and trains it with RigL at the mask sparsity that "
            "brings the whole network's non-zero MACs to the dense network's, with the stem and classifier dense. "
            "The allocation decides how sparse that is: uniform (the paper's) keeps every layer at one sparsity; "
            "ERK gives the early, high-resolution layers more of the weights, where each weight costs the most MACs, "
            "so its iso-MAC masks are sparser and hold fewer non-zero weights (the weight density and params columns). "
            f"{at} (`book/configs/cifar10-v3.yaml`); masked training runs dense kernels, so on a CPU a Sparse Wide "
            "training costs about 1/(1-s) dense ones.\n\n"
            "Inference of seed 0's networks, compiled (`sparsearch compile`: the fastest engine by measurement), ms per "
            "batch, against the compiled dense network:\n\n"
            + table(["network", "batch", "engine", "ms", "vs dense"], timing)
            + ("\nThe dense network was timed at its initialisation (its trained folder went with an earlier "
               "sitting): a dense network's time does not depend on its weights."
               if any(p.get("weights") == "initial" for p in inference.get("dense", {}).values()) else "")
            + "\n" + load_text(max((p["other_cores"] for per in inference.values() for p in per.values()
                                    if p.get("other_cores") is not None), default=None)).strip()
            + " A widened sparse network is a win at equal cost only where the engine runs it as fast as the dense one"
            + (f": here the widened networks take {_span(slower)} its time.\n" if slower else ".\n")
            + versus("ResNet-18 on ImageNet, Sparse Wide + RigL at s = 90%, uniform: +3.5 points top-1 over dense "
                     "(the abstract's figure, arXiv 2303.11525; its tables, the accuracies behind that gain and the "
                     "CIFAR-100 results, could not be read)",
                     f"ResNet-20 on CIFAR-10 at s = {', '.join(f'{100 * s:g}%' for s in sparsities)}: "
                     + ", ".join(f"{v} {_mean(t, (v, s))}" for s in sparsities for v in IFT[:2])
                     + f", dense {pct(dense['acc_mean'])}%",
                     "a 16x smaller network on a 10-class task, s = 50% rather than 90% (a 90% Sparse Wide "
                     "ResNet-20 trains at 10x the dense cost on a CPU)"))
    return Chapter(
        "Sparse Wide vs the dense network at equal FLOPs", "Thangarasa et al., Sparse-IFT (ICML 2023)",
        "Widening every layer and training it sparse at the dense network's FLOPs (dynamic sparse training, RigL) "
        "beats the dense network.",
        V3 + "of Sparse Wide + RigL with the paper's uniform allocation - dense, paired by seed and pooled over the "
        "sparsities: reproduced when it lies above 0, not reproduced when it lies below 0.5 points, inconclusive "
        "between. ERK is reported beside it, not judged.",
        body, proxy_budget(results) or test.text,
        compare_seconds(results, variants={"dense", *IFT}), "cifar10-sparse-ift.png",
        figure=Figure("paired", ("dense", *(v for v in IFT if any((v, s) in t for s in sparsities)))), judgements=[test])
