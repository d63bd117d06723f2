"""Dataset registry: every dataset becomes uint8 image tensors (N, C, H, W) held in memory.

Sources that need decoding (JPEG/PNG trees and archives: `images.py`; CIFAR-10's pickled batches: `cifar.py`;
idx files) are decoded once and cached as checksummed `.npz` files (`cache.py`).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import SparsearchError
from .cache import cached
from .cifar import CIFAR10_CLASSES, cifar_batches, has_cifar_batches
from .download import fetch
from .images import decode_all, read_tree


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[2:])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images on the [0, 1] scale."""
        x = self.train_x.double().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


# --------------------------------------------------------------------------------------------- registry

Loader = Callable[..., Dataset]
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str):
    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return wrap


def load_dataset(name: str, path: str | None = None, cache_dir: str | None = None, **kwargs) -> Dataset:
    if name not in DATASETS:
        raise SparsearchError(f"unknown dataset '{name}' (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name](path=path, cache_dir=cache_dir, **kwargs)


def _to_dataset(name: str, arrays: dict) -> Dataset:
    """Arrays as a `Dataset`, checked here for every source: an image per label, labels naming known classes."""
    n_classes = len(arrays["classes"])
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise SparsearchError(f"{name}: the {split} split has images of shape {list(x.shape)} and labels of shape "
                                  f"{list(y.shape)}; it needs N images (N, C, H, W) and N labels")
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < n_classes:
            raise SparsearchError(f"{name}: {split} labels span [{int(y.min())}, {int(y.max())}], outside the "
                                  f"{n_classes} classes [0, {n_classes - 1}]")
    return Dataset(
        name=name,
        train_x=torch.from_numpy(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=torch.from_numpy(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        classes=[str(c) for c in arrays["classes"]],
    )


def _require(path: str | None, name: str) -> Path:
    if path is None:
        raise SparsearchError(f"dataset '{name}' needs data.path (a folder or archive)")
    p = Path(path).expanduser()
    if not p.exists():
        raise SparsearchError(f"dataset path does not exist: {p}")
    return p


# ---------------------------------------------------------------------------------- image-folder trees

def _tree_arrays(path: Path, classes: list[str] | None, size: int | None, test_fraction: float) -> dict:
    tree = read_tree(path)
    found = sorted(tree["train"])
    if classes is not None and found != sorted(classes):
        raise SparsearchError(f"class folders in {path}/train do not match the expected classes: {found}")
    classes = classes or found
    out: dict = {"classes": np.array(classes)}
    splits = {"train": tree["train"]}
    if "test" in tree:
        if sorted(tree["test"]) != sorted(classes):
            raise SparsearchError(
                f"class folders differ between train/ and test/ in {path}: "
                f"{sorted(set(classes) ^ set(tree['test']))}"
            )
        splits["test"] = tree["test"]
    for split, by_class in splits.items():
        blobs, labels, names = [], [], []
        for label, cls in enumerate(classes):
            for fname, blob in sorted(by_class.get(cls, [])):
                blobs.append(blob)
                labels.append(label)
                names.append(f"{split}/{cls}/{fname} in {path}")
        out[f"{split}_x"] = decode_all(blobs, size, names)
        out[f"{split}_y"] = np.array(labels, dtype=np.int64)
    if "test" not in splits:  # hold out a stratified, fixed test split
        train_idx, test_idx = stratified_split(torch.from_numpy(out["train_y"]), 1 - test_fraction, seed=0)
        x, y = out.pop("train_x"), out.pop("train_y")
        out.update(train_x=x[train_idx.numpy()], train_y=y[train_idx.numpy()],
                   test_x=x[test_idx.numpy()], test_y=y[test_idx.numpy()])
    return out


# ------------------------------------------------------------------------------------------- datasets

@register_dataset("digits")
def load_digits(path=None, cache_dir=None, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images): the offline default. Fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(np.clip(np.rint(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(y, 0.8, seed=0)
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], [str(i) for i in range(10)])


@register_dataset("cifar10")
def load_cifar10(path=None, cache_dir=None, **_) -> Dataset:
    """CIFAR-10 from the official python batches (folder or .tar.gz) or an image-folder tree (folder or archive)."""
    p = _require(path, "cifar10")
    if has_cifar_batches(p):
        arrays = cached("cifar10-batches", p, cache_dir, lambda: cifar_batches(p))
    else:
        arrays = cached("cifar10-images", p, cache_dir, lambda: _tree_arrays(p, CIFAR10_CLASSES, None, 0.0))
    return _to_dataset("cifar10", arrays)


@register_dataset("imagefolder")
def load_imagefolder(path=None, cache_dir=None, image_size: int | None = None, **_) -> Dataset:
    """Any `train/<class>/*` (+ optional `test/<class>/*`) tree or archive; without test/, 10% is held out."""
    p = _require(path, "imagefolder")
    arrays = cached(f"imagefolder-{image_size}", p, cache_dir, lambda: _tree_arrays(p, None, image_size, 0.1))
    return _to_dataset(p.name.split(".")[0], arrays)


# --------------------------------------------------------------------------------------------- idx files

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _read_idx(file: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file of `ndim` dimensions (3: images, 1: labels)."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise SparsearchError(f"{file} is not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise SparsearchError(f"{file} is not an unsigned-byte idx file")
    if raw[3] != ndim:
        raise SparsearchError(f"{file} has {raw[3]} dimensions; an idx {'image' if ndim == 3 else 'label'} file has {ndim}")
    if len(raw) < 4 + 4 * ndim:
        raise SparsearchError(f"{file} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SparsearchError(f"{file} is truncated: expected {int(np.prod(dims))} values, got {data.size}")
    return data.reshape(dims).copy()


def _idx_dataset(name: str, classes: list[str]) -> Loader:
    def load(path=None, cache_dir=None, **_) -> Dataset:
        p = _require(path, name)
        out: dict = {"classes": np.array(classes)}
        for key, stem in IDX_FILES.items():
            found = [f for f in (p / stem, p / f"{stem}.gz") if f.exists()]
            if not found:
                raise SparsearchError(f"{name}: {stem}[.gz] not found in {p}")
            arr = _read_idx(found[0], 3 if key.endswith("_x") else 1)
            out[key] = arr[:, None] if key.endswith("_x") else arr.astype(np.int64)
        return _to_dataset(name, out)

    return load


register_dataset("mnist")(_idx_dataset("mnist", [str(i) for i in range(10)]))
register_dataset("fashion-mnist")(_idx_dataset("fashion-mnist", [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]))


# -------------------------------------------------------------------------------------------- downloads

# (file name, md5) per dataset, and the mirror they are served from.
REMOTE = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", [("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", [
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ]),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", [
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ]),
}


def download_dataset(name: str, root: str | Path, mirror: str | None = None,
                     checksums: dict[str, str] | None = None) -> Path:
    """Fetch `name` into `root` and return the path to pass as `data.path`.

    `mirror` replaces the default base URL and `checksums` the known md5s (used by tests and private mirrors).
    """
    if name not in REMOTE:
        raise SparsearchError(f"no download for dataset '{name}' (downloadable: {', '.join(sorted(REMOTE))})")
    base, files = REMOTE[name]
    base = mirror or base
    root = Path(root).expanduser()
    for fname, md5 in files:
        fetch(base.rstrip("/") + "/" + fname, root / fname, (checksums or {}).get(fname, md5))
    return root / files[0][0] if len(files) == 1 else root


# -------------------------------------------------------------------------------------------- splitting

def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b): `fraction` of every class goes to a, the rest to b; both sorted, seeded, disjoint."""
    gen = torch.Generator().manual_seed(seed)
    a, b = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = int(round(fraction * len(idx)))
        a.append(idx[:cut])
        b.append(idx[cut:])
    return torch.sort(torch.cat(a)).values, torch.sort(torch.cat(b)).values
