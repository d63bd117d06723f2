"""Image-folder sources: `split/class/file` trees in a folder or a tar archive, decoded to uint8 arrays."""

from __future__ import annotations

import io
import os
import re
import tarfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import SparsearchError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar", ".txz")
MAX_PIXELS = 64 * 2**20  # per image; a larger one is refused before it is decoded (a "decompression bomb")
Tree = dict[str, dict[str, list[tuple[str, bytes]]]]


def is_archive(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)


def read_tree(path: Path) -> Tree:
    """{split: {class: [(filename, encoded bytes)]}} from a folder or a tar archive of `split/class/file`.

    A single top-level folder above `train/` (as archives often have) is skipped. A class folder without images
    is an error, not a class that silently disappears.
    """
    entries: list[tuple[tuple[str, ...], bytes]] = []
    folders: list[tuple[str, ...]] = []
    if path.is_dir():
        for f in path.rglob("*"):
            if f.is_dir():
                folders.append(f.relative_to(path).parts)
            elif f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                entries.append((f.relative_to(path).parts, f.read_bytes()))
    elif is_archive(path):
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isdir():
                        folders.append(Path(member.name).parts)
                    elif member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                        entries.append((Path(member.name).parts, tar.extractfile(member).read()))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SparsearchError(f"cannot read archive {path}: {exc}") from None
    else:
        raise SparsearchError(f"{path} is neither a folder nor a .tar/.tar.gz/.tar.xz archive")
    if not entries:
        raise SparsearchError(f"no images found under {path}")
    prefix: tuple[str, ...] = ()
    while len({parts[0] for parts, _ in entries}) == 1 and all(len(p) > 3 for p, _ in entries):
        prefix += (entries[0][0][0],)
        entries = [(parts[1:], data) for parts, data in entries]
    tree: Tree = {}
    for parts, data in entries:
        if len(parts) != 3:
            raise SparsearchError(f"image {'/'.join(parts)} in {path} is not at <split>/<class>/<file>")
        split, cls, fname = parts
        tree.setdefault(split, {}).setdefault(cls, []).append((fname, data))
    if "train" not in tree:
        raise SparsearchError(f"{path} has no train/ folder (found: {', '.join(sorted(tree))})")
    for parts in folders:
        rel = parts[len(prefix):] if parts[: len(prefix)] == prefix else None
        if rel and len(rel) == 2 and rel[0] in tree and rel[1] not in tree[rel[0]]:
            raise SparsearchError(f"class folder {'/'.join(rel)} in {path} holds no images; add some or remove it")
    return tree


def _decode(blobs: list[bytes], size: int | None, names: list[str]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out, first = [], None
    for blob, name in zip(blobs, names):
        try:
            with warnings.catch_warnings():  # PIL's size warning is an error here: one line, not a warning and a line
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(blob))
                if img.width * img.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"it declares {img.width}x{img.height} pixels, more than "
                                                       f"{MAX_PIXELS} (refused, not decoded)")
                img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
        except UnidentifiedImageError:
            raise SparsearchError(f"cannot decode image {name}: not an image format PIL reads") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, ValueError, SyntaxError) as exc:
            why = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the file", str(exc).splitlines()[0] if str(exc) else "")
            raise SparsearchError(f"cannot decode image {name}: {why or type(exc).__name__}") from None
        first = first or (name, img.size)
        if img.size != first[1]:
            raise SparsearchError(f"images have different sizes ({first[0]}: {first[1][0]}x{first[1][1]}, {name}: "
                                  f"{img.width}x{img.height}); set data.image_size to resize them to one")
        out.append(np.asarray(img, dtype=np.uint8))
    return np.stack(out)


def decode_all(blobs: list[bytes], size: int | None, names: list[str]) -> np.ndarray:
    """Decode images in parallel worker processes (JPEG decoding is the slow part of a first load); NCHW uint8."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    if workers == 1 or len(blobs) < 2000:
        arrays = [_decode(blobs, size, names)]
    else:
        chunk = (len(blobs) + workers * 4 - 1) // (workers * 4)
        starts = range(0, len(blobs), chunk)
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(_decode, [blobs[i : i + chunk] for i in starts], [size] * len(starts),
                                   [names[i : i + chunk] for i in starts]))
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise SparsearchError(f"images have different sizes {sorted(shapes)}; set data.image_size to resize")
    return np.concatenate(arrays).transpose(0, 3, 1, 2).copy()  # NHWC -> NCHW
