"""Overrides: ``--set KEY=VALUE`` items (and the MLproject's ``a.b=1; c.d=x`` form) into dotted keys."""

from __future__ import annotations

import json
from typing import Any

import yaml

from mixvae.config.errors import ConfigError, suggest, unknown_section
from mixvae.config.flat import defaults_flat, schema_keys
from mixvae.config.schema import SECTIONS


def _key_problem(key: str, leaf_keys: set[str], sections: set[str]) -> str | None:
    """Why ``key`` cannot be set (a whole section, an unknown section or key), or None."""
    if key in sections:
        defaults = defaults_flat()
        example = next(k for k in defaults if k.startswith(key + "."))
        value = defaults[example]
        shown = "true" if isinstance(value, bool) else json.dumps(value).strip('"')
        return f"{key} is a section; set its keys, e.g. {example}={shown}"
    if key not in leaf_keys:
        top = key.split(".")[0]
        if top not in SECTIONS:
            return unknown_section(top)
        return f"unknown key{suggest(top, key[len(top) + 1:])}"
    return None


def parse_overrides(items: list[str]) -> list[tuple[str, Any, str]]:
    """`KEY=VALUE` strings → (dotted key, YAML value, as typed); errors for all bad items at once."""
    out, problems = [], []
    leaf_keys = set(schema_keys())
    sections = {k.rsplit(".", 1)[0] for k in leaf_keys} | set(SECTIONS)
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            problems.append(f"--set {item}: expected KEY=VALUE")
            continue
        key, text = (s.strip() for s in item.split("=", 1))
        problem = _key_problem(key, leaf_keys, sections)
        if problem:
            problems.append(f"--set {key}: {problem}")
            continue
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {key}: the value {text!r} is not valid YAML ({exc.problem})")
            continue
        out.append((key, value, item))
    if problems:
        raise ConfigError(problems, "overrides")
    return out


def split_overrides(text: str | None) -> list[str]:
    """The MLproject form: `a.b=1; c.d=x` → items; empty string → none."""
    if not text:
        return []
    return [p.strip() for p in text.split(";") if p.strip()]


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating the sections on the way."""
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value
