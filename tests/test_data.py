import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_CIFAR
from sparsearch.data import (
    CIFAR10_CLASSES,
    Augment,
    TensorLoader,
    download_dataset,
    load_dataset,
    split_train,
    stratified_split,
)
from sparsearch.errors import SparsearchError


def test_digits_is_offline_and_split_is_fixed():
    ds = load_dataset("digits")
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (1, 8, 8)
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert ds.num_classes == 10 and int(ds.train_x.max()) == 255
    again = load_dataset("digits")
    assert torch.equal(ds.train_y, again.train_y)


def test_stratified_split_and_split_train():
    ds = load_dataset("digits")
    a, b = split_train(ds, 0.5, seed=3)
    assert len(a.train_y) + len(b.train_y) == len(ds.train_y)
    for cls in range(10):  # every class on both sides, about half each
        na, nb = (a.train_y == cls).sum().item(), (b.train_y == cls).sum().item()
        assert abs(na - nb) <= 1
    ia, ib = stratified_split(ds.train_y, 0.5, seed=3)
    assert set(ia.tolist()).isdisjoint(ib.tolist())


def _write_tree(root, classes=("cat", "dog"), per_class=3, size=6, fmt="PNG"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
                img.save(root / split / c / f"{i:04d}.{fmt.lower()}", format=fmt)


def test_imagefolder_folder_and_archive(tmp_path, cache_dir):
    _write_tree(tmp_path / "tree")
    ds = load_dataset("imagefolder", path=str(tmp_path / "tree"))
    assert ds.classes == ["cat", "dog"] and ds.train_x.shape == (6, 3, 6, 6)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="mydata")  # with a top-level folder, as archives often have
    from_archive = load_dataset("imagefolder", path=str(tmp_path / "tree.tar.gz"))
    assert torch.equal(from_archive.train_x, ds.train_x) and torch.equal(from_archive.test_y, ds.test_y)


def test_bad_inputs_give_one_line_errors(tmp_path, cache_dir):
    with pytest.raises(SparsearchError, match="does not exist"):
        load_dataset("cifar10", path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparsearchError, match="no images found"):
        load_dataset("imagefolder", path=str(tmp_path / "empty"))
    _write_tree(tmp_path / "mismatch")
    (tmp_path / "mismatch" / "test" / "dog").rename(tmp_path / "mismatch" / "test" / "cow")
    with pytest.raises(SparsearchError, match="differ between train/ and test/"):
        load_dataset("imagefolder", path=str(tmp_path / "mismatch"))
    _write_tree(tmp_path / "wrongcls")
    with pytest.raises(SparsearchError, match="do not match the expected classes"):
        load_dataset("cifar10", path=str(tmp_path / "wrongcls"))
    corrupt = tmp_path / "corrupt.tar.xz"
    corrupt.write_bytes(b"\xfd7zXZ\x00" + b"garbage" * 100)
    with pytest.raises(SparsearchError, match="cannot read archive"):
        load_dataset("cifar10", path=str(corrupt))
    with pytest.raises(SparsearchError, match="unknown dataset"):
        load_dataset("imagenet22k")


def _tiny_cifar_batches(n=10):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                                 b"labels": list(range(n))})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving files from tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_checks_md5_and_leaves_nothing_on_mismatch(tmp_path, http_server, cache_dir):
    www, url = http_server
    archive = _tiny_cifar_batches()
    (www / "cifar-10-python.tar.gz").write_bytes(archive)
    md5 = hashlib.md5(archive).hexdigest()

    bad_root = tmp_path / "bad"
    with pytest.raises(SparsearchError, match="checksum mismatch"):
        download_dataset("cifar10", bad_root, mirror=url, checksums={"cifar-10-python.tar.gz": "0" * 32})
    assert not bad_root.exists() or not any(bad_root.iterdir())

    path = download_dataset("cifar10", tmp_path / "good", mirror=url, checksums={"cifar-10-python.tar.gz": md5})
    ds = load_dataset("cifar10", path=str(path))
    assert ds.train_x.shape == (50, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    assert ds.classes == CIFAR10_CLASSES

    with pytest.raises(SparsearchError, match="download of .* failed"):
        download_dataset("cifar10", tmp_path / "404", mirror=url + "nothing-here/")


def test_idx_files(tmp_path):
    import gzip
    import struct

    def idx(arr):
        return struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx(rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(np.arange(n, dtype=np.uint8) % 10))
    ds = load_dataset("mnist", path=str(tmp_path))
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_y.tolist() == [0, 1, 2, 3]
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx(np.arange(4, dtype=np.uint8))[:-2])
    with pytest.raises(SparsearchError, match="truncated"):
        load_dataset("fashion-mnist", path=str(tmp_path))


def test_loader_is_deterministic_and_resumable():
    x = torch.randint(0, 255, (50, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(50)
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, augment=Augment(4, True), seed=7, drop_last=True)
    a, b = TensorLoader(x, y, 8, **kw), TensorLoader(x, y, 8, **kw)
    a.set_epoch(2)
    b.set_epoch(2)
    full = list(a.batches())
    tail = list(b.batches(start=3))
    assert len(full) == 6 and len(tail) == 3
    for (xa, ya), (xb, yb) in zip(full[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(3)
    assert not torch.equal(next(a.batches())[1], full[0][1])  # a new epoch reshuffles


def test_crop_and_flip_keep_content():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    loader = TensorLoader(x, torch.zeros(2, dtype=torch.long), 2, mean=[0.0], std=[1 / 255],
                          augment=Augment(crop_padding=0, flip=True), seed=0)
    for epoch in range(5):
        loader.set_epoch(epoch)
        xb, _ = next(loader.batches())
        for i in range(2):  # each image is either itself or its mirror image
            assert torch.equal(xb[i], x[i].float()) or torch.equal(xb[i], x[i].flip(2).float())
    padded = TensorLoader(x, torch.zeros(2, dtype=torch.long), 2, mean=[0.0], std=[1 / 255],
                          augment=Augment(crop_padding=2, flip=False), seed=1)
    xb, _ = next(padded.batches())
    assert xb.shape == (2, 1, 4, 4)
    for i in range(2):  # every non-zero pixel of a crop comes from the original image
        assert set(xb[i][xb[i] > 0].long().tolist()) <= set(x[i].flatten().long().tolist())


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason=f"shared CIFAR-10 not found at {SHARED_CIFAR}")
def test_shared_cifar10_counts_order_and_cache(cifar_cache):
    t0 = time.perf_counter()
    ds = load_dataset("cifar10", path=str(SHARED_CIFAR), cache_dir=str(cifar_cache))
    first = time.perf_counter() - t0
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert ds.classes == CIFAR10_CLASSES
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    mean, _ = ds.channel_stats()  # README: decoded training means 125.3, 122.9, 113.9
    assert [round(m * 255, 1) for m in mean] == pytest.approx([125.3, 122.9, 113.9], abs=0.2)
    t0 = time.perf_counter()
    again = load_dataset("cifar10", path=str(SHARED_CIFAR), cache_dir=str(cifar_cache))
    second = time.perf_counter() - t0
    assert torch.equal(again.train_x[:100], ds.train_x[:100])
    assert second < first / 5, f"cache load took {second:.2f}s vs first load {first:.2f}s"
