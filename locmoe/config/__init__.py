"""Typed job config: dataclasses in ``schema``, YAML loading in ``loader``, cross-field rules in ``checks``."""

from locmoe.config.errors import ConfigError
from locmoe.config.loader import apply_overrides, config_from_dict, config_to_dict, dump_config, load_config
from locmoe.config.schema import (
    CONFIG_VERSION,
    CapacityConfig,
    DataConfig,
    DataSource,
    DomainsConfig,
    ExportConfig,
    JobConfig,
    LoggingConfig,
    ModelConfig,
    MoEConfig,
    ParallelConfig,
    RouterConfig,
    TrainConfig,
)

__all__ = [
    "CONFIG_VERSION",
    "CapacityConfig",
    "ConfigError",
    "DataConfig",
    "DataSource",
    "DomainsConfig",
    "ExportConfig",
    "JobConfig",
    "LoggingConfig",
    "MoEConfig",
    "ModelConfig",
    "ParallelConfig",
    "RouterConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
]
