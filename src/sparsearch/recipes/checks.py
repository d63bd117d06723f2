"""What each method needs from the config beyond the value ranges (`config/checks.py` holds those, in one table):
rules across settings and sections, checked before anything is written (`MethodContext` checks on creation;
`preflight` is what `sparsearch train` and `compare` check before they claim the run directory). The checks a
method needs are named in its `MethodSpec`; the shared ones live here. All raise `ConfigError`."""

from __future__ import annotations

from .. import sparsity as sp
from ..config import Config
from ..data import Dataset, check_batches, dataset_from_config
from ..errors import ConfigError, SparsearchError
from ..models import model_builder
from .registry import REGISTRY


def preflight(cfg: Config, ds: Dataset | None = None) -> Dataset:
    """Everything a training checks before it writes: the method's settings, the data (loaded; one batch fits), the
    model (built once) and the mask kind on the layers it will mask. Returns the dataset."""
    check_config(cfg)
    ds = ds or dataset_from_config(cfg.data, seed=cfg.seed)
    check_batches(len(ds.train_y), cfg.data.batch_size)
    model = model_builder(cfg, ds)()
    s = cfg.sparsity
    if s.method != "dense" and s.sparsity > 0 and s.method != "maskspar":
        layers = sp.configured_layers(model, s)
        overrides = sp.parse_overrides(s.overrides, "sparsity.overrides")
        for _, kind, names in sp.group_layers(layers, s.sparsity, s.kind, overrides):  # an override matching nothing raises
            for name in names:
                if isinstance(kind, sp.NM):
                    try:
                        kind.groups(sp.layer_weight(layers[name]).detach())
                    except SparsearchError as exc:
                        raise ConfigError(f"layer '{name}': {exc}; exclude it (sparsity.exclude)") from None
    return ds


def check_config(cfg: Config) -> None:
    s = cfg.sparsity
    if s.method not in REGISTRY:
        raise ConfigError(f"unknown sparsity.method '{s.method}' (use {', '.join(REGISTRY)}; `sparsearch methods` "
                              "says what each does)")
    spec = REGISTRY[s.method]
    if spec.needs_target and not 0 < s.sparsity < 1:
        raise ConfigError(f"sparsity.method {s.method} needs a target: sparsity.sparsity in (0, 1), got {s.sparsity}")
    for check in spec.checks:
        check(cfg)
    if s.overrides:
        if "overrides" not in spec.reads:
            raise ConfigError(f"sparsity.method {s.method} takes no per-layer overrides (sparsity.overrides; these "
                              f"do: {', '.join(n for n, m in REGISTRY.items() if 'overrides' in m.reads)})")
        try:
            sp.parse_overrides(s.overrides, "sparsity.overrides", ("sparsity", "kind") if "kind" in spec.reads else ("sparsity",))
        except SparsearchError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.ift.family != "none" and not spec.takes_ift:
        raise ConfigError(f"ift.family {cfg.ift.family} trains a sparse network from scratch (with "
                              f"{', '.join(n for n, m in REGISTRY.items() if m.takes_ift)}); not with sparsity.method "
                              f"{s.method}")


def unstructured(cfg: Config) -> None:
    if not isinstance(sp.parse_kind(cfg.sparsity.kind), sp.Unstructured):
        raise ConfigError(f"sparsity.method {cfg.sparsity.method} supports sparsity.kind unstructured only, "
                              f"got '{cfg.sparsity.kind}'")


def gmp_schedule(cfg: Config) -> None:
    s, g = cfg.sparsity, cfg.gmp
    if s.criterion not in ("magnitude", "lamp"):
        raise ConfigError(f"{s.method} prunes by magnitude or lamp scores, not '{s.criterion}'")
    if g.initial_sparsity > s.sparsity or g.start > g.end:
        raise ConfigError(f"{s.method} needs gmp.initial_sparsity <= sparsity.sparsity and gmp.start <= gmp.end")


def per_layer_allocation(cfg: Config) -> None:
    if cfg.sparsity.allocation == "global":
        raise ConfigError(f"{cfg.sparsity.method} needs a per-layer allocation (uniform, er or erk), not global")
