"""Sparse Model Soups (Zimmer, Spiegel & Pokutta, ICLR 2024): IMP whose every retraining is k retrainings averaged.

    pretrain/                   dense training (`train.*`) on the training split (a `soup.val_fraction` is held out)
    phase-<p>/start.ckpt        the previous model (pretrain or soup) pruned globally by magnitude to the phase density
    phase-<p>/ingredient-<i>/   one retraining of start.ckpt, differing from the others in one setting (`soup.vary`)
    phase-<p>/soup/             the soup that goes on (`soup.kind`): checkpoints/last.ckpt, summary.json, sparsity.json
    soup.json                   per phase: each ingredient's, the uniform and the greedy soup's accuracies (plotted
                                as soup.png by the run's summary step)

All ingredients of a phase load one start.ckpt, and masks are not averaged but required equal, so a soup has
exactly the start's mask. Ingredients are trials (a module-level function of a picklable value) that any
executor runs; finished ingredients and phases are skipped on re-run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn as nn

from .. import distributed
from .. import sparsity as sp
from ..config import Config
from ..data import Dataset, TensorLoader, build_loaders, dataset_from_config, split_train
from ..errors import ConfigError, SparsearchError
from ..executors import make_executor, raise_failures
from ..methods import average, greedy_soup, phase_densities, prune_globally, recalibrate_batchnorm
from ..models import model_builder
from ..train import MetricsLog, StageResult, evaluate, fit, load_checkpoint, resolve_device, save_checkpoint, save_final
from .checks import unstructured
from .context import MethodContext
from .registry import LAYERS, MethodSpec, register


@dataclasses.dataclass(frozen=True)
class SoupData:
    train: TensorLoader  # the training split, shuffled and augmented
    val: TensorLoader  # the held-out split greedy soups are chosen on
    test: TensorLoader
    dataset: Dataset


def soup_data(cfg: Config, data_seed: int, loader_seed: int) -> SoupData:
    ds = dataset_from_config(cfg.data, seed=data_seed)
    train_part, val_part = split_train(ds, 1 - cfg.soup.val_fraction, data_seed)
    stats = train_part.channel_stats()
    device = resolve_device(cfg.train.device)
    train, test = build_loaders(train_part, cfg.data, loader_seed, device=device, stats=stats)
    val = TensorLoader(val_part.train_x, val_part.train_y, cfg.data.eval_batch_size, mean=stats[0], std=stats[1],
                       device=device)
    return SoupData(train, val, test, ds)


@dataclasses.dataclass(frozen=True)
class Ingredient:
    cfg: Config  # `train.*` as this ingredient trains; `seed` orders and augments its data
    data_seed: int  # the seed the data, its subset and the validation split are drawn with
    start: str | None  # a masked model's checkpoint to start from; None: the seeded initialisation, dense
    out_dir: str
    run_dir: str
    show_progress: bool = False


def train_ingredient(trial: Ingredient) -> dict:
    """One retraining (or the dense pretraining) as a resumable stage; returns its validation and test accuracy."""
    cfg, out = trial.cfg, Path(trial.out_dir)
    data = soup_data(cfg, trial.data_seed, cfg.seed)
    model = model_builder(cfg, data.dataset)()
    if trial.start is not None:
        sp.load_masked_state_dict(model, load_checkpoint(trial.start)["model"])
    # a file per ingredient: ingredients may train in parallel (see MethodContext.metrics_file)
    metrics = MetricsLog(out / "metrics.jsonl", stage=out.relative_to(trial.run_dir).as_posix())
    result = fit(model, out, cfg.train, data.train, data.test, metrics, show_progress=trial.show_progress)
    return {"name": out.name, "val_acc": evaluate(result.model, data.val)["acc"],
            "test_acc": result.summary["final_test_acc"], "train_seconds": result.summary["train_seconds"],
            "checkpoint": str(result.checkpoint)}


class Souper:
    """Builds soups from ingredient checkpoints and measures them (after BatchNorm recalibration)."""

    def __init__(self, ctx: MethodContext, data: SoupData):
        self.ctx, self.data = ctx, data

    def model(self, state: dict) -> nn.Module:
        model = self.ctx.build()
        sp.load_masked_state_dict(model, state)
        recalibrate_batchnorm(model, self.data.train, self.ctx.cfg.soup.bn_batches)
        return model

    def measure(self, states: list[dict]) -> tuple[nn.Module, float, float]:
        model = self.model(average(states))
        return model, evaluate(model, self.data.val)["acc"], evaluate(model, self.data.test)["acc"]

    def greedy(self, states: list[dict], ingredients: list[dict]) -> tuple[nn.Module, float, float, list[int]]:
        """Wortsman et al.'s greedy soup: by validation accuracy, best first; an ingredient stays if the soup's
        validation accuracy does not drop."""
        members, best = greedy_soup([r["val_acc"] for r in ingredients],
                                    lambda chosen: self.measure([states[i] for i in chosen]), score=lambda m: m[1])
        return (*best, members)


def _pruned(ctx: MethodContext, state: dict, density: float) -> nn.Module:
    """The model in `state` pruned globally by magnitude to `density` (weights pruned earlier are zeros, so they stay
    pruned)."""
    s = ctx.cfg.sparsity
    model = ctx.build()
    sp.load_masked_state_dict(model, state)
    return prune_globally(model, density, s.include, s.exclude, s.dense_first_last)


def _soup_phase(souper: Souper, where: Path, ingredients: list[dict], kind: str) -> dict:
    """Uniform and greedy soups of one phase's ingredients; the `kind` one is saved to `where/soup`. Returns the phase
    record (kept in soup/record.json, whose presence marks the phase finished)."""
    out = where / "soup"
    if (out / "record.json").exists():
        return json.loads((out / "record.json").read_text())
    states = [load_checkpoint(r["checkpoint"])["model"] for r in ingredients]
    uniform, uniform_val, uniform_test = souper.measure(states)
    greedy, greedy_val, greedy_test, members = souper.greedy(states, ingredients)
    chosen = uniform if kind == "uniform" else greedy
    start, mine = sp.state_masks(load_checkpoint(where / "start.ckpt")["model"]), sp.state_masks(chosen.state_dict())
    if start.keys() != mine.keys() or any(not torch.equal(start[k], mine[k].to(start[k].device)) for k in start):
        raise sp.SparsityError(f"the soup in {out} lost the mask its ingredients shared")
    if problems := sp.check(chosen):
        raise sp.SparsityError(f"the soup in {out} breaks the sparsity invariants: {problems[0]}")
    save_checkpoint(out / "checkpoints" / "last.ckpt", {"model": chosen.state_dict()})
    save_final(chosen, out)
    (out / "sparsity.json").write_text(json.dumps(sp.report(chosen), indent=2))
    record = {"ingredients": [{k: r[k] for k in ("name", "val_acc", "test_acc")} for r in ingredients],
              "uniform": {"val_acc": uniform_val, "test_acc": uniform_test},
              "greedy": {"val_acc": greedy_val, "test_acc": greedy_test, "members": members}}
    (out / "record.json").write_text(json.dumps(record, indent=2))
    return record


def _ingredient_cfgs(cfg: Config) -> list[Config]:
    s = cfg.soup
    train = cfg.train.stage(s.retrain_epochs, s.retrain_lr)
    if s.vary == "seed":
        return [dataclasses.replace(cfg, seed=cfg.seed + i, train=train) for i in range(s.ingredients)]
    return [dataclasses.replace(cfg, train=dataclasses.replace(train, weight_decay=wd)) for wd in s.weight_decays]


def soup(ctx: MethodContext) -> StageResult:
    cfg, s = ctx.cfg, ctx.cfg.soup
    if distributed.active():
        raise SparsearchError("the soup method does not run under torchrun: its ingredients are trials "
                              "(use --executor ray or process)")
    data_seed = cfg.seed if ctx.data_seed is None else ctx.data_seed
    data = soup_data(cfg, data_seed, cfg.seed)
    souper = Souper(ctx, data)
    executor = make_executor(cfg.run)
    progress = executor.trial_bars(ctx.show_progress)

    def trial(c: Config, start: Path | None, out_dir: Path) -> Ingredient:
        return Ingredient(c, data_seed, None if start is None else str(start), str(out_dir), str(ctx.run_dir), progress)

    previous = train_ingredient(trial(cfg, None, ctx.out_dir / "pretrain"))
    current = load_checkpoint(previous["checkpoint"])["model"]
    history, train_seconds = [], previous["train_seconds"]
    for phase, density in enumerate(phase_densities(cfg.sparsity.sparsity, s.phases), 1):
        where = ctx.out_dir / f"phase-{phase}"
        start = where / "start.ckpt"
        if not start.exists():  # prune the previous model; every ingredient then starts from this one file
            save_checkpoint(start, {"model": _pruned(ctx, current, density).state_dict()})
        results = executor.map(train_ingredient, [trial(c, start, where / f"ingredient-{i}")
                                                  for i, c in enumerate(_ingredient_cfgs(cfg))],
                               label=f"soup phase {phase} ingredients", progress=ctx.show_progress)
        raise_failures(results, f"soup phase {phase} ingredients")
        train_seconds += sum(r["train_seconds"] for r in results)
        history.append({"phase": phase, "density": density, **_soup_phase(souper, where, results, s.kind)})
        current = load_checkpoint(where / "soup" / "checkpoints" / "last.ckpt")["model"]
        if ctx.show_progress:
            h = history[-1]
            print(f"soup phase {phase}/{s.phases} (density {density:.4f}) test acc: best ingredient "
                  f"{100 * max(r['test_acc'] for r in results):.2f}%, uniform soup {100 * h['uniform']['test_acc']:.2f}%, "
                  f"greedy soup {100 * h['greedy']['test_acc']:.2f}%", flush=True)
    (ctx.out_dir / "soup.json").write_text(json.dumps(history, indent=2))
    final_dir = ctx.out_dir / f"phase-{s.phases}" / "soup"
    model = ctx.build()
    sp.load_masked_state_dict(model, current)
    chosen = history[-1][s.kind]
    summary = {"final_test_acc": chosen["test_acc"], "final_val_acc": chosen["val_acc"], "train_seconds": train_seconds,
               "weight_density": sp.report(model)[-1]["density"], "soup_kind": s.kind,
               "best_ingredient_test_acc": max(i["test_acc"] for i in history[-1]["ingredients"])}
    return StageResult(model, summary, final_dir)


def _check(cfg: Config) -> None:
    u = cfg.soup
    if u.vary == "weight_decay" and len(u.weight_decays) != u.ingredients:
        raise ConfigError(f"soup.vary weight_decay needs one soup.weight_decays entry per ingredient "
                          f"({u.ingredients}), got {len(u.weight_decays)}")


register(MethodSpec("soup", soup, "sparse model soups: IMP whose every retraining is several averaged (run.executor "
                    "trains the ingredients)", sections=("soup", "run"), checks=(unstructured, _check),
                    reads=LAYERS))
