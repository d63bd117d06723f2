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
