import pytest

from sparsearch.config import Config, ConfigError, dump_yaml, load_config, parse_override


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\ntrain:\n  epochs: 4\n")
    cfg = load_config(f, ["train.lr=0.05", "data.name=cifar10", "train.grad_clip=5", "sparsity.include=[a.*, b]"])
    assert isinstance(cfg, Config)
    assert (cfg.name, cfg.train.epochs, cfg.train.lr, cfg.data.name) == ("x", 4, 0.05, "cifar10")
    assert cfg.train.grad_clip == 5.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.sparsity.include == ["a.*", "b"]


def test_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.kwargs={width: 8}"])
    f = tmp_path / "again.yaml"
    f.write_text(dump_yaml(cfg))
    assert load_config(f) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("train.epochs=three", "'train.epochs' must be int"),
    ("train.epochs=true", "'train.epochs' must be int"),
    ("train.optimizer=lbfgs", "'train.optimizer' must be one of"),
    ("data=3", "'data' must be a mapping"),
    ("sparsity.include=abc", "'sparsity.include' must be a list"),
    ("noequals", "must look like key=value"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_exponent_floats_read_as_floats_everywhere(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n  min_lr: -0e0\nname: 1e3run\n")
    cfg = load_config(f, ["train.momentum=9e-1", "hydra.score_lr=+2e-2"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.momentum, cfg.hydra.score_lr) == (1e-3, 5e-4, 0.9, 0.02)
    assert cfg.name == "1e3run" and load_config(None, ["name=run-1e3"]).name == "run-1e3"  # names stay strings
    assert load_config(None, ["sparsity.include=[1e3x]"]).sparsity.include == ["1e3x"]


def test_on_off_yes_no_are_words_not_booleans(tmp_path):
    """YAML 1.1 read `off` as False, so `--set train.sparse_kernels=off` was refused; only true/false are booleans."""
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  sparse_kernels: off\n  amp: true\n")
    assert load_config(f).train.sparse_kernels == "off" and load_config(f).train.amp is True
    assert load_config(None, ["train.sparse_kernels=on"]).train.sparse_kernels == "on"
    assert load_config(None, ["train.amp=False"]).train.amp is False
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, ["train.amp=yes"])
