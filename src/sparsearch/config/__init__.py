"""YAML -> typed dataclasses, dotted overrides, validation with messages that name the key.

A config is a tree of dataclasses (`schema.py`). Every field has a type hint and a default, so an empty YAML file
is a valid config. `load_config(path, ["train.epochs=3"])` reads, overrides, type-checks and range-checks in one
go, before anything is written; `to_dict(cfg)` gives back plain data for writing `config.yaml` into a run
directory.
"""

from .loading import ConfigError, dump_yaml, from_dict, load_config, parse_override, parse_yaml, to_dict
from .schema import (
    CompareConfig,
    Config,
    DataConfig,
    DSTConfig,
    GMPConfig,
    HydraConfig,
    IMPConfig,
    LayerOverride,
    MaskSparConfig,
    ModelConfig,
    NMConfig,
    OneShotConfig,
    RunConfig,
    SearchConfig,
    SoupConfig,
    SparsityConfig,
    TrainConfig,
)

__all__ = [
    "CompareConfig", "Config", "ConfigError", "DSTConfig", "DataConfig", "GMPConfig", "HydraConfig", "IMPConfig",
    "LayerOverride", "MaskSparConfig", "ModelConfig", "NMConfig", "OneShotConfig", "RunConfig", "SearchConfig", "SoupConfig",
    "SparsityConfig", "TrainConfig", "dump_yaml", "from_dict", "load_config", "parse_override", "parse_yaml", "to_dict",
]
