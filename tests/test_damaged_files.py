"""Files a deploy process or a later command reads back: every damaged or foreign one is one `SparsearchError`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsearch.errors import SparsearchError
from sparsearch.files import write_atomic, write_json
from sparsearch.models import build_model
from sparsearch.runtime import compile, export, load


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported")
    model = build_model("cnn", num_classes=3, in_channels=1, width=4).eval()
    x = torch.randn(2, 1, 8, 8)
    export(model, out, "cnn", num_classes=3, in_channels=1, width=4)
    compile(model, x, repeats=1, engines=("eager",)).save(out)
    return out


def _damage(folder: Path, name: str, how) -> None:
    path = folder / name
    if callable(how):
        path.write_bytes(how(path.read_bytes()))
    else:
        path.write_text(how)


def _flip(raw: bytes) -> bytes:
    return raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:]


def _plan(**change) -> str:
    return json.dumps({"engine": "eager", "input_shape": [2, 1, 8, 8], "options": {}, **change})


DAMAGE = [
    ("model.json", "{not json", "not a sparsearch export"),
    ("model.json", json.dumps({"kwargs": {}}), "not a sparsearch export"),
    ("model.json", json.dumps({"model": "cnn", "kwargs": [1]}), "not a sparsearch export"),
    ("model.json", json.dumps({"model": "nosuch", "kwargs": {}}), "unknown model 'nosuch'"),
    ("model.json", json.dumps({"model": "cnn", "kwargs": {"num_classes": 3, "in_channels": 1, "width": 8}}),
     "does not fit model 'cnn'"),
    ("model.safetensors", lambda raw: raw[: len(raw) // 2], "damaged weights"),
    ("model.safetensors", _flip, "checksum mismatch"),
    ("model.safetensors", lambda raw: b"\xff" * 8 + raw[8:], "damaged weights"),
    ("plan.json", "[1, 2", "not a sparsearch plan"),
    ("plan.json", json.dumps({"input_shape": [1, 1, 8, 8]}), "not a sparsearch plan"),
    ("plan.json", _plan(input_shape=[100000, 100000, 100000, 25]), "input shape"),
    ("plan.json", _plan(input_shape=[1, -1, 8, 8]), "input shape"),
    ("plan.json", _plan(input_shape="big"), "input shape"),
    ("plan.json", _plan(input_shape=[1, 5, 8, 8]), "does not fit the model"),
    ("plan.json", _plan(options="x"), "not a sparsearch plan"),
]


@pytest.mark.parametrize("name, how, expected", DAMAGE, ids=[f"{d[0]}-{i}" for i, d in enumerate(DAMAGE)])
def test_a_damaged_export_or_plan_is_one_sparsearch_error(exported, tmp_path, name, how, expected):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in exported.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    _damage(folder, name, how)
    with pytest.raises(SparsearchError, match=expected.replace("(", r"\(")):
        load(folder)


@pytest.mark.parametrize("plan, notice", [(_plan(engine="warp-drive"), "not an engine of this version"),
                                          (_plan(engine="engine", options={"chunk": "x"}), "could not build it"),
                                          (_plan(engine="layers", options={"bogus": 1}), "could not build it")])
def test_a_plan_whose_engine_cannot_run_as_saved_runs_on_another_with_a_notice(exported, tmp_path, capfd, plan, notice):
    for f in exported.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "plan.json").write_text(plan)
    capfd.readouterr()
    model = load(tmp_path)
    err = capfd.readouterr().err
    assert model.engine != json.loads(plan)["engine"] and notice in err and len(err.strip().splitlines()) == 1, err
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(model(x), load(exported)(x))


def test_results_are_written_with_the_umasks_mode_not_private(tmp_path):
    old = os.umask(0o027)
    try:
        assert (write_json(tmp_path / "a.json", {}).stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
    assert (write_atomic(tmp_path / "b", b"x", mode=0o600).stat().st_mode & 0o777) == 0o600
    plain = tmp_path / "c"
    plain.write_text("x")
    assert (write_atomic(tmp_path / "d", "x").stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_a_numeric_run_name_is_a_name(capsys):
    from sparsearch.cli import main

    assert main(["config", "--name", "2024"]) == 0
    assert "name: '2024'" in capsys.readouterr().out


def test_compile_refuses_a_run_another_process_holds(tmp_path, monkeypatch, capfd):
    from sparsearch.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEARCH_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--set", "data.name=digits", "--set", "model.name=mlp", "--set", "train.epochs=1",
                 "--name", "t"]) == 0
    hold = ("import sys, time\nfrom sparsearch.train import exclusive\nwith exclusive('runs/t'):\n"
            "    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capfd.readouterr()
        assert main(["compile", "runs/t/train/dense"]) == 2
        err = capfd.readouterr().err
        assert "in use by another sparsearch process" in err and not (tmp_path / "runs/t/train/dense/compiled").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["compile", "runs/t/train/dense"]) == 0


def test_book_write_only_on_a_damaged_results_file_is_one_line(tmp_path, capfd):
    from sparsearch.cli import main

    damaged = tmp_path / "cifar10-v3" / "compare" / "results.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text('{"rows": [{"variant"')
    output = tmp_path / "RESULTS.md"
    assert main(["book", "--write-only", "--out-dir", str(tmp_path), "--output", str(output)]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a sparsearch results file" in err and not output.exists(), err
