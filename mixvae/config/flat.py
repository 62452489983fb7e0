"""A config as plain data: the nested dict, dotted flat keys, MLflow params, schema defaults and YAML."""

from __future__ import annotations

import json
from typing import Any

import yaml

from mixvae.config.schema import Config, resolved_conditioning
from mixvae.tracking_uri import redact_uri


def flatten_dict(nested: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict → {dotted key: value}.

    ``experiment.tags`` is the one mapping that is a value rather than a section: it stays whole.
    """
    out: dict[str, Any] = {}
    for key, value in nested.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key != "tags":
            out.update(flatten_dict(value, path + "."))
        else:
            out[path] = value
    return out


def to_dict(cfg: Config) -> dict:
    """The resolved config as a nested dict of JSON types."""
    return cfg.model_dump(mode="json")


def config_from_dict(d: dict) -> Config:
    """A Config from the resolved nested dict of a run's config.yaml."""
    return Config.model_validate(d)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, as it is logged and printed: a password in `tracking.uri` is ***."""
    return redact_uri(yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True))


def flat_values(cfg: Config) -> dict[str, Any]:
    """Every leaf key of the resolved config with its Python value."""
    return flatten_dict(to_dict(cfg))


def flatten(cfg: Config) -> dict[str, str]:
    """MLflow params: dotted keys, JSON values, no description, tags or tracking keys."""
    out = {}
    for k, v in flat_values(cfg).items():
        if k in ("experiment.description", "experiment.tags") or k.startswith("tracking."):
            continue
        out[k] = json.dumps(v)
    return out


def schema_keys() -> list[str]:
    """Every leaf key of the schema (dotted)."""
    return list(flat_values(Config()).keys())


def defaults_flat() -> dict[str, Any]:
    """Schema defaults per dotted key, with derived values left as written in the schema (null/auto)."""
    vals = flat_values(Config())
    vals["model.decoder_conditioning"] = "auto"
    vals["model.component_embedding_dim"] = None
    vals["curriculum.k_active_max"] = None
    vals["experiment.name"] = None
    return vals


def default_in_context(cfg: Config, key: str, resolved_defaults: dict[str, Any]) -> Any:
    """What the schema default of ``key`` resolves to in ``cfg`` (derived keys depend on other keys).

    ``resolved_defaults``: ``flat_values(Config())``, computed once by the caller.
    """
    m = cfg.model
    if key == "model.decoder_conditioning":
        return resolved_conditioning(m.prior_type, "auto")
    if key == "model.component_embedding_dim":
        return m.latent_dim
    if key == "curriculum.k_active_max":
        return m.num_components
    return resolved_defaults.get(key)
