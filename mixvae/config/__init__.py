"""The configuration: one pydantic schema, its rules, and how a config file becomes a ``Config``.

Modules, in the order data flows through them:

- ``schema``: the six sections, their types, ranges, defaults and derived values; the prior families.
- ``flat``: a config as plain data (nested dict, dotted keys, MLflow params, defaults, YAML).
- ``identity``: its hash, architecture code and one-line model summary.
- ``applicability``: which config keys, loss terms and metrics apply to a config, and why not.
- ``metric_table``: every logged metric key as plain data (``mixvae.metrics.keys`` is its API).
- ``errors``: ``ConfigError`` and the one-line problems, with "did you mean" hints.
- ``rules``: cross-field errors and warnings (validation stage 2).
- ``overrides``: ``--set KEY=VALUE`` items.
- ``loading``: presets, YAML, ``load_config`` and ``Loaded``.
"""

from mixvae.config.applicability import APPLIES
from mixvae.config.errors import ConfigError
from mixvae.config.flat import (config_from_dict, defaults_flat, flat_values, flatten, flatten_dict,
                                schema_keys, to_dict, to_yaml)
from mixvae.config.identity import architecture_code, config_hash, model_summary_line
from mixvae.config.loading import (PRESETS_DIR, Loaded, load_config, read_yaml, resolve_config_path,
                                   shipped_presets, validate_dict)
from mixvae.config.overrides import parse_overrides, split_overrides
from mixvae.config.rules import check_rules
from mixvae.config.schema import (BUNDLED_DATASETS, COMPONENT_DECODING, DOWNLOADABLE_DATASETS, MIXTURE_BASED,
                                  SECTIONS, Config, CurriculumConfig, DataConfig, ExperimentConfig, KickConfig,
                                  ModelConfig, StopConfig, TrackingConfig, TrainingConfig, UnlockConfig,
                                  resolved_conditioning)

__all__ = [
    "APPLIES", "BUNDLED_DATASETS", "COMPONENT_DECODING", "DOWNLOADABLE_DATASETS", "MIXTURE_BASED", "PRESETS_DIR",
    "SECTIONS", "Config", "ConfigError", "CurriculumConfig", "DataConfig", "ExperimentConfig", "KickConfig",
    "Loaded", "ModelConfig", "StopConfig", "TrackingConfig", "TrainingConfig", "UnlockConfig",
    "architecture_code", "check_rules", "config_from_dict", "config_hash", "defaults_flat", "flat_values",
    "flatten", "flatten_dict", "load_config", "model_summary_line", "parse_overrides", "read_yaml",
    "resolve_config_path", "resolved_conditioning", "schema_keys", "shipped_presets", "split_overrides",
    "to_dict", "to_yaml", "validate_dict",
]
