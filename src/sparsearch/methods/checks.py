"""What each method needs from the config, checked before anything is written (`MethodContext` checks on
creation; `preflight` is what `sparsearch train` and `compare` check before they claim the run directory)."""

from __future__ import annotations

from .. import sparsity as sp
from ..config import Config
from ..data import Dataset, check_batches, dataset_from_config
from ..errors import SparsearchError
from ..models import model_builder


def preflight(cfg: Config, ds: Dataset | None = None) -> Dataset:
    """Everything a training checks before it writes: the method's settings, the data (loaded; one batch fits), the
    model (built once) and the mask kind on the layers it will mask. Returns the dataset."""
    check_config(cfg)
    ds = ds or dataset_from_config(cfg.data, seed=cfg.seed)
    check_batches(len(ds.train_y), cfg.data.batch_size)
    model = model_builder(cfg, ds)()
    s = cfg.sparsity
    if s.method != "dense" and s.sparsity > 0 and s.method != "maskspar":
        kind = sp.parse_kind(s.kind)
        for layer in sp.find_layers(model, s.include, s.exclude, s.dense_first_last).values():
            if isinstance(kind, sp.NM):
                kind.groups(layer.weight.detach())  # raises where the input dimension does not split into groups
    return ds


def check_config(cfg: Config) -> None:
    s, g = cfg.sparsity, cfg.gmp
    method, kind = s.method, sp.parse_kind(s.kind)
    if method in ("dense", "static"):
        return
    if not 0 < s.sparsity < 1:
        raise SparsearchError(f"sparsity.method {method} needs a target: sparsity.sparsity in (0, 1), got {s.sparsity}")
    if method == "nm":
        if not isinstance(kind, sp.NM):
            raise SparsearchError(f"sparsity.method nm needs sparsity.kind nm:N:M (e.g. nm:2:4), got '{s.kind}'")
        if abs(s.sparsity - (1 - kind.density)) > 1e-9:
            raise SparsearchError(f"{kind} fixes sparsity at {1 - kind.density:g}; got sparsity.sparsity {s.sparsity:g}")
        if cfg.nm.decay_rate <= 0 or not 0 <= cfg.nm.decay_hard_fraction < 1:
            raise SparsearchError("nm needs nm.decay_rate > 0 and 0 <= nm.decay_hard_fraction < 1")
    elif method in ("hydra", "gmp", "set", "rigl", "granet", "imp", "soup") and not isinstance(kind, sp.Unstructured):
        raise SparsearchError(f"sparsity.method {method} supports sparsity.kind unstructured only, got '{s.kind}'")
    if method in ("gmp", "granet"):
        if s.criterion not in ("magnitude", "lamp"):
            raise SparsearchError(f"{method} prunes by magnitude or lamp scores, not '{s.criterion}'")
        if not 0 <= g.initial_sparsity <= s.sparsity or not 0 <= g.start <= g.end <= 1 or g.frequency < 1:
            raise SparsearchError(f"{method} needs 0 <= gmp.initial_sparsity <= sparsity.sparsity, "
                                  "0 <= gmp.start <= gmp.end <= 1 and gmp.frequency >= 1")
    if method == "imp" and (not 0 < cfg.imp.prune_fraction < 1 or cfg.imp.rewind_step < 0):
        raise SparsearchError("imp needs 0 < imp.prune_fraction < 1 and imp.rewind_step >= 0")
    if method == "hydra" and s.allocation == "global":
        raise SparsearchError("HYDRA needs a per-layer allocation (uniform, er or erk), not global")
    if method == "maskspar" and s.allocation not in ("uniform", "global"):
        raise SparsearchError(f"maskspar selects channels per layer (uniform) or globally, not by '{s.allocation}'")
    if method in ("set", "rigl", "granet") and (cfg.dst.update_every < 1 or not 0 <= cfg.dst.drop_fraction <= 1):
        raise SparsearchError("dynamic sparse training needs dst.update_every >= 1 and 0 <= dst.drop_fraction <= 1")
    if method == "soup":
        u = cfg.soup
        if u.phases < 1 or u.ingredients < 1 or u.retrain_epochs < 1 or u.bn_batches < 1 or not 0 < u.val_fraction < 1:
            raise SparsearchError("soup needs phases, ingredients, retrain_epochs and bn_batches >= 1 and "
                                  "0 < val_fraction < 1")
        if u.vary == "weight_decay" and len(u.weight_decays) != u.ingredients:
            raise SparsearchError(f"soup.vary weight_decay needs one soup.weight_decays entry per ingredient "
                                  f"({u.ingredients}), got {len(u.weight_decays)}")
