from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-images.tar.xz"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cifar-cache")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Keep every test's dataset cache out of the user's home."""
    d = tmp_path / "cache"
    monkeypatch.setenv("SPARSEARCH_CACHE", str(d))
    return d
