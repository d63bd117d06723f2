"""Datasets (registry, caching, downloads), the in-memory loader, and the splits built from them."""

from __future__ import annotations

import os

from ..config import DataConfig
from ..errors import SparsearchError
from .datasets import (
    CIFAR10_CLASSES,
    DATASETS,
    Dataset,
    download_dataset,
    load_dataset,
    register_dataset,
    stratified_split,
)
from .loader import Augment, TensorLoader

__all__ = [
    "Augment", "CIFAR10_CLASSES", "DATASETS", "Dataset", "TensorLoader", "build_loaders", "check_batches", "dataset_from_config",
    "download_dataset", "load_dataset", "register_dataset", "split_train", "stratified_split",
]


def dataset_from_config(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load the configured dataset (downloading first if asked) and apply `train_subset`."""
    path = cfg.path
    if cfg.download and (path is None or not os.path.exists(path)):
        from .cache import default_cache_dir

        path = str(download_dataset(cfg.name, path or default_cache_dir() / "downloads" / cfg.name))
    ds = load_dataset(cfg.name, path=path, cache_dir=cfg.cache_dir, image_size=cfg.image_size)
    if cfg.train_subset is not None and cfg.train_subset < len(ds.train_y):
        keep, _ = stratified_split(ds.train_y, cfg.train_subset / len(ds.train_y), seed)
        ds.train_x, ds.train_y = ds.train_x[keep], ds.train_y[keep]
    return ds


def split_train(ds: Dataset, portion: float = 0.5, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The training set split in two: `portion` to train on, the rest held out (DARTS' weight and architecture
    halves; the validation set sparse model soups are chosen on).

    Stratified and seeded rather than "first half / second half", because sorted sources (image folders)
    would otherwise put whole classes on one side.
    """
    a, b = stratified_split(ds.train_y, portion, seed)

    def part(idx):
        return Dataset(ds.name, ds.train_x[idx], ds.train_y[idx], ds.test_x, ds.test_y, ds.classes)

    return part(a), part(b)


def check_batches(examples: int, batch_size: int) -> None:
    """Training drops the last partial batch, so fewer examples than one batch would train nothing."""
    if examples < batch_size:
        raise SparsearchError(f"the batch size ({batch_size}) is larger than the training set ({examples} examples), so not one "
                              "step would train; lower data.batch_size (or search.batch_size) or use more data")


def build_loaders(ds: Dataset, cfg: DataConfig, seed: int, device="cpu",
                  stats: tuple[list[float], list[float]] | None = None) -> tuple[TensorLoader, TensorLoader]:
    """Training loader (shuffled, augmented) and evaluation loader over the test split, both normalised
    with `stats` (mean, std) or, by default, the training split's own channel statistics."""
    check_batches(len(ds.train_y), cfg.batch_size)
    mean, std = stats or ds.channel_stats()
    augment = None
    if cfg.augment and ds.image_size[0] >= 16:  # cropping 8x8 digits by 4 pixels would destroy them
        augment = Augment(crop_padding=cfg.crop_padding, flip=cfg.flip)
    train = TensorLoader(ds.train_x, ds.train_y, cfg.batch_size, mean=mean, std=std, shuffle=True,
                         augment=augment, seed=seed, drop_last=True, device=device)
    test = TensorLoader(ds.test_x, ds.test_y, cfg.eval_batch_size, mean=mean, std=std, device=device)
    return train, test
