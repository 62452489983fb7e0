"""The report's view of a run's configuration: which resolved keys differ from the schema default."""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

# Resolved keys whose schema default is `auto`/null and whose derived value is not a change.
DERIVED_DEFAULTS = {
    "model.decoder_conditioning": lambda c: "cin" if c["model"]["prior_type"] in ("mixture", "geometric_mog")
    else "none",
    "model.component_embedding_dim": lambda c: c["model"]["latent_dim"],
    "curriculum.k_active_max": lambda c: c["model"]["num_components"],
}


def flatten_config(config: dict, leaf_keys=None, prefix: str = "") -> dict[str, object]:
    """Nested config → {dotted key: value}; maps that are values (experiment.tags) stay whole."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        is_leaf = path in leaf_keys if leaf_keys is not None else path == "experiment.tags"
        if isinstance(value, dict) and not is_leaf:
            out.update(flatten_config(value, leaf_keys, path + "."))
        else:
            out[path] = value
    return out


def schema_defaults() -> dict | None:
    try:
        from mixvae.config import defaults_flat
        return dict(defaults_flat())
    except Exception as exc:  # ImportError while config.py is missing
        log.debug("schema defaults unavailable: %s", exc)
        return None


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and float(a) == float(b))


def config_differences(config: dict, defaults: dict, config_name: str | None = None) -> list[tuple[str, str, str]]:
    """(key, value, default) as JSON text for every non-tracking key that differs from the default.

    Keys whose default is derived (`auto`/null) count as changed only when they differ from the
    derived value; `experiment.name` defaults to the config file stem (tag mixvae.config_name).
    """
    values = flatten_config(config, leaf_keys=set(defaults))
    rows = []
    for key in sorted(values):
        if key.startswith("tracking."):
            continue
        value = values[key]
        if key not in defaults:
            rows.append((key, json.dumps(value), "—"))
            continue
        default = defaults[key]
        if key == "experiment.name" and default is None and value == config_name:
            continue
        if key in DERIVED_DEFAULTS and default in (None, "auto"):
            try:
                if _same(value, DERIVED_DEFAULTS[key](config)):
                    continue
            except (KeyError, TypeError):
                pass
        if not _same(value, default):
            rows.append((key, json.dumps(value), json.dumps(default)))
    return rows
