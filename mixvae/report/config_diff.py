"""The report's view of a run's configuration: which resolved keys differ from the schema default.

Flattening, the schema defaults and what a derived default (`auto`, null) resolves to come from
mixvae.config; only the comparison of two values as JSON text is the report's own.
"""

from __future__ import annotations

import json

from mixvae.config import defaults_flat, flatten_dict
from mixvae.config.flat import default_in_context

from .plots.common import resolve_config


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and float(a) == float(b))


def _is_derived_default(cfg, key: str, value, defaults: dict) -> bool:
    """Whether `value` is what the default of `key` resolves to in this run's config (for a key
    whose default is not derived: the default itself); False when the config lacks what it
    derives from."""
    try:
        return _same(value, default_in_context(cfg, key, defaults))
    except (AttributeError, KeyError, TypeError):
        return False


def config_differences(config: dict, config_name: str | None = None, cfg=None) -> list[tuple[str, str, str]]:
    """(key, value, default) as JSON text for every non-tracking key that differs from the default.

    Keys whose default is derived (`auto`/null) count as changed only when they differ from the
    derived value; `experiment.name` defaults to the config file stem (tag mixvae.config_name).
    `cfg` is `config` resolved (read from it when not given).
    """
    values, defaults = flatten_dict(config), defaults_flat()
    cfg = cfg if cfg is not None else resolve_config(config)
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
        if default in (None, "auto") and _is_derived_default(cfg, key, value, defaults):
            continue
        if not _same(value, default):
            rows.append((key, json.dumps(value), json.dumps(default)))
    return rows
