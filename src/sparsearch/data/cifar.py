"""The official CIFAR-10 python release: pickled batches in a folder or in its .tar.gz.

Those files are pickles, and unpickling runs whatever code a pickle names. They are read with an unpickler that
admits only what the official files hold (dicts, lists, bytes, ints, and numpy arrays of numbers), so a batch file
that names anything else (`os.system`, say) is refused before any of it runs."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import SparsearchError
from .images import IMAGE_SUFFIXES

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

# every global the official batches (and numpy's own pickles of uint8 arrays) refer to; nothing that runs a command
ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol 2 spells bytes when Python 3 wrote the file
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR-10 batch holds (refused, not run)")
        return super().find_class(module, name)


def read_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
        if data.dtype == object or labels.dtype == object:
            raise ValueError("its arrays hold objects, not numbers")
        return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means a corrupt (or hostile) batch
        raise SparsearchError(f"corrupt CIFAR-10 batch {where}: {exc}") from None


def cifar_batches(path: Path) -> dict:
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        for f in path.rglob("*_batch*"):
            blobs[f.name] = f.read_bytes()
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    if m.isfile() and "_batch" in Path(m.name).name:
                        blobs[Path(m.name).name] = tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SparsearchError(f"cannot read archive {path}: {exc}") from None
    missing = [n for n in TRAIN_BATCHES + ["test_batch"] if n not in blobs]
    if missing:
        raise SparsearchError(f"CIFAR-10 batches missing in {path}: {', '.join(missing)}")
    train = [read_batch(blobs[n], f"{n} in {path}") for n in TRAIN_BATCHES]
    test_x, test_y = read_batch(blobs["test_batch"], f"test_batch in {path}")
    return {
        "train_x": np.concatenate([x for x, _ in train]), "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x, "test_y": test_y, "classes": np.array(CIFAR10_CLASSES),
    }


def has_cifar_batches(path: Path) -> bool:
    if path.is_dir():
        return any(path.rglob("data_batch_1"))
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:  # the batches folder is near the start of the official archive
                if Path(m.name).name == "data_batch_1":
                    return True
                if Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    return False
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SparsearchError(f"cannot read archive {path}: {exc}") from None
    return False
