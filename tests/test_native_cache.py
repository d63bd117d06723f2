"""The engine's cached native library is checked before it is loaded: a damaged one is rebuilt, a foreign one is
never run, a folder others may write to is not used (a library planted there would run in this process)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from floats import assert_same_sum
from sparsearch.native import _digest
from sparsearch.runtime import native

PLANTED = r"""
#include <cstdio>
__attribute__((constructor)) static void planted() { std::FILE* f = std::fopen("%s", "w"); if (f) std::fclose(f); }
extern "C" int not_the_engine() { return 1; }
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("SPARSEARCH_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    yield tmp_path / "cache" / "native"
    native.library.cache_clear()


def _load(capfd) -> tuple[object, list[str]]:
    native.library.cache_clear()
    capfd.readouterr()
    lib = native.library()
    return lib, capfd.readouterr().err.strip().splitlines()


def _plant(path: Path, marker: Path) -> None:
    path.unlink(missing_ok=True)  # a new file: this process may have the old one mapped
    source = path.with_suffix(".cpp")
    source.write_text(PLANTED % marker)
    subprocess.run([native.compiler(), "-shared", "-fPIC", str(source), "-o", str(path)], check=True)
    source.unlink()


def _works(lib) -> bool:
    return lib is not None and lib.sparsearch_layout().decode() == native.DIGEST


def test_the_cache_is_private_and_a_truncated_library_is_rebuilt_with_one_line(cache, capfd):
    lib, err = _load(capfd)
    (so,) = cache.glob("engine-*.so")
    assert _works(lib) and err == []
    assert (cache.stat().st_mode & 0o777) == 0o700 and (cache.parent.stat().st_mode & 0o777) == 0o700
    good = so.read_bytes()
    so.unlink()  # a new file (this process has the old one mapped), truncated as a full disk or a killed copy leaves it
    so.write_bytes(good[: len(good) // 3])
    lib, err = _load(capfd)
    assert _works(lib) and len(err) == 1 and "is damaged (checksum mismatch); rebuilding it" in err[0], err
    assert so.read_bytes() == good
    so.with_name(so.name + ".sha256").unlink()  # no checksum: never trusted
    lib, err = _load(capfd)
    assert _works(lib) and len(err) == 1 and "has no checksum" in err[0], err


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_library_owned_by_another_user_is_not_loaded_but_rebuilt(cache, capfd, tmp_path):
    native.library()
    (so,) = cache.glob("engine-*.so")
    marker = tmp_path / "ran"
    _plant(so, marker)
    so.with_name(so.name + ".sha256").write_text(_digest(so) + "\n")  # even with a matching checksum
    os.chown(so, 65534, 65534)
    lib, err = _load(capfd)
    assert _works(lib) and len(err) == 1 and "not owned by this user" in err[0], err
    assert not marker.exists()


def test_a_planted_library_in_a_world_writable_cache_is_never_run(cache, capfd, tmp_path):
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    so = cache / native.library_file(native.compiler())
    marker = tmp_path / "ran"
    _plant(so, marker)
    so.with_name(so.name + ".sha256").write_text(_digest(so) + "\n")
    lib, err = _load(capfd)
    assert _works(lib) and len(err) == 1 and "is not private to this user" in err[0], err
    assert not marker.exists()


def test_a_library_without_the_engines_symbols_is_one_notice_and_compile_still_works(cache, capfd, tmp_path):
    from sparsearch.runtime import compile

    cache.mkdir(parents=True, mode=0o700)
    so = cache / native.library_file(native.compiler())
    _plant(so, tmp_path / "ran")  # as if it were ours: our owner, our checksum, but not the engine
    so.with_name(so.name + ".sha256").write_text(_digest(so) + "\n")
    lib, err = _load(capfd)
    assert lib is None and len(err) == 1 and "is not the engine library" in err[0], err
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    x = torch.randn(2, 1, 8, 8)
    compiled = compile(model, x, repeats=1)
    assert "engine" not in compiled.times
    with torch.no_grad():
        assert_same_sum(compiled(x), model(x), 144 + 1)


def test_a_library_of_another_record_layout_is_refused(cache, capfd, tmp_path):
    cache.mkdir(parents=True, mode=0o700)
    so = cache / native.library_file(native.compiler())
    source = tmp_path / "old.cpp"  # an engine of another version: its symbols, another record table
    source.write_text('extern "C" { const char* sparsearch_layout() { return "0123456789abcdef"; }\n'
                      "void sparsearch_run(const long*, long, int, double*) {} }\n")
    subprocess.run([native.compiler(), "-shared", "-fPIC", str(source), "-o", str(so)], check=True)
    so.with_name(so.name + ".sha256").write_text(_digest(so) + "\n")
    lib, err = _load(capfd)
    assert lib is None and len(err) == 1 and "another record layout" in err[0], err
