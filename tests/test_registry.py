"""The method registry: `sparsearch methods`, a method's own --help, config.yaml with only the sections a run
reads, and a method added from outside the package by one `register` call."""

import yaml

from sparsearch.cli import main
from sparsearch.methods import OneShot
from sparsearch.recipes import METHODS, REGISTRY, MethodSpec, register


def test_methods_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert set(METHODS) == set(REGISTRY) and len(REGISTRY) >= 12
    for name, spec in REGISTRY.items():
        assert f"{name}" in out and spec.summary in out


def test_train_help_with_a_method_shows_its_settings_and_writes_nothing(tmp_path, capsys):
    assert main(["train", "--method", "rigl", "--help", "--set", f"out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "dst.update_every=100" in out and "dst.drop_fraction=0.3" in out and "soup." not in out
    assert main(["train", "--method", "gmp", "--help"]) == 0
    assert "gmp.frequency=100" in capsys.readouterr().out
    assert main(["train", "--method", "nope", "--help"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _argv(tmp_path, *extra):
    return ["train", "--model", "cnn", "--set", f"out_dir={tmp_path}", "--set", "data.name=digits",
            "--set", "data.train_subset=256", "--set", "data.batch_size=64", "--set", "train.epochs=1",
            "--set", "model.kwargs={width: 8}", *extra]


def test_a_runs_config_holds_only_the_sections_it_reads(tmp_path, cache_dir):
    assert main(_argv(tmp_path, "--name", "r", "--method", "rigl", "--sparsity", "0.8")) == 0
    written = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert {"data", "model", "train", "sparsity", "dst", "seed", "name"} <= set(written)
    assert not {"gmp", "soup", "search", "hydra", "compare", "run", "nm"} & set(written)
    assert main(_argv(tmp_path, "--name", "r", "--method", "rigl", "--sparsity", "0.8")) == 0  # the same run: accepted
    assert main(_argv(tmp_path, "--name", "r", "--method", "rigl", "--sparsity", "0.8",
                      "--set", "dst.update_every=7")) == 2  # a setting it reads changed: refused


def test_a_method_from_outside_the_package_is_one_register_call(tmp_path, cache_dir):
    def lamp_global(ctx):  # a recipe: any function of the MethodContext that returns the final stage
        s = ctx.cfg.sparsity
        return ctx.train(OneShot(s.sparsity, criterion="lamp", allocation="global"), ctx.build())

    register(MethodSpec("test-lamp-global", lamp_global, "LAMP scores, one global threshold, at initialisation"))
    try:
        assert main(_argv(tmp_path, "--name", "x", "--method", "test-lamp-global", "--sparsity", "0.7")) == 0
        assert (tmp_path / "x" / "train" / "test-lamp-global-0.7" / "summary.json").exists()
    finally:
        del REGISTRY["test-lamp-global"]
