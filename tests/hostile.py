"""Hostile and damaged files for the edge tests: each maker writes its files under `root` and returns the argv
that meets them (a maker taking `trained` damages a copy of a finished tiny training)."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np


def copy_run(trained: Path, root: Path, unfinished: bool = False) -> Path:
    run = root / "runs" / "t"
    shutil.copytree(trained, run)
    if unfinished:  # as if killed mid-run: a checkpoint, no summary
        for f in ("summary.json", "final.safetensors"):
            (run / "train" / "dense" / f).unlink()
    return run / "train" / "dense"


def yaml_file(text: str):
    def make(root: Path) -> list[str]:
        (root / "c.yaml").write_text(text)
        return ["-c", "c.yaml"]
    return make


ALIAS_BOMB = "model:\n  name: mlp\n  kwargs:\n    a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))


def genotype_file(**change):
    def make(root: Path) -> list[str]:
        from sparsearch.models.genotypes import GENOTYPES

        (root / "g.json").write_text(json.dumps({**GENOTYPES["DASS_90"].to_dict(), **change}))
        return ["--set", "model.name=genotype", "--set", "model.kwargs={genotype: g.json, channels: 4, layers: 2}"]
    return make


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def image_tree(root: Path, corrupt: bool = False, empty_class: bool = False, bomb: bool = False,
               mixed: bool = False) -> Path:
    from PIL import Image

    tree = root / "tree"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(3):
                size = (12, 12) if mixed and cls == "dog" and i == 2 else (8, 8)
                Image.new("RGB", size, (40 * i, 90, 200)).save(tree / split / cls / f"{i}.png")
    if corrupt:
        (tree / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    if bomb:  # 100 bytes that declare 100000 x 100000 pixels
        header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
        (tree / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                                                       + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    if empty_class:
        (tree / "train" / "cow").mkdir()
    return tree


def image_folder(**damage):
    return lambda root: ["--set", "data.name=imagefolder", "--set", f"data.path={image_tree(root, **damage)}"]


def _idx(values: np.ndarray, ndim_byte: int | None = None) -> bytes:
    dims = values.shape
    return (bytes([0, 0, 8, len(dims) if ndim_byte is None else ndim_byte]) + struct.pack(f">{len(dims)}I", *dims)
            + values.astype(np.uint8).tobytes())


def idx_folder(how: str):
    """An MNIST folder with one kind of damage; the argv trains on it."""
    def make(root: Path) -> list[str]:
        rng = np.random.default_rng(0)
        folder = root / "mnist"
        folder.mkdir()
        files = {"train-images-idx3-ubyte": _idx(rng.integers(0, 255, (60, 8, 8))),
                 "train-labels-idx1-ubyte": _idx(np.arange(60) % 10),
                 "t10k-images-idx3-ubyte": _idx(rng.integers(0, 255, (20, 8, 8))),
                 "t10k-labels-idx1-ubyte": _idx(np.arange(20) % 10)}
        if how == "ndim":
            files["train-images-idx3-ubyte"] = bytes([0, 0, 8, 200]) + b"\0" * 12
        elif how == "2-D images":
            files["train-images-idx3-ubyte"] = _idx(rng.integers(0, 255, (60, 64)))
        elif how == "fewer labels":
            files["train-labels-idx1-ubyte"] = _idx(np.arange(30) % 10)
        elif how == "label 10":
            files["t10k-labels-idx1-ubyte"] = _idx(np.arange(20) % 11)
        for name, raw in files.items():
            if how == "corrupt gz" and name.startswith("train-images"):
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw)[:40] + b"\xff" * 20)
            else:
                (folder / name).write_bytes(raw)
        return ["--set", "data.name=mnist", "--set", f"data.path={folder}", "--set", "data.batch_size=8"]
    return make


def flipped_weights(root: Path, trained: Path) -> list[str]:
    where = copy_run(trained, root)
    raw = bytearray((where / "final.safetensors").read_bytes())
    raw[-5] ^= 0x01  # one bit inside a tensor: still a loadable file
    (where / "final.safetensors").write_bytes(bytes(raw))
    return ["compile", str(where)]


def compile_args(*extra: str):
    return lambda root, trained: ["compile", str(copy_run(trained, root)), *extra]
