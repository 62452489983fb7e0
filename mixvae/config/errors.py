"""Configuration errors: ``ConfigError`` and the one-line problems it lists.

Pydantic's validation errors are translated into one line per problem in the project's own words
(``model.latent_dim: expected an integer, got 'two'``), with a "did you mean" hint for unknown
sections, keys and enum values.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from mixvae.config.flat import schema_keys
from mixvae.config.schema import SECTIONS, Config


class ConfigError(Exception):
    """Configuration problems, all of them; exit code 2 at the CLI."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head] + [f"  {p}" for p in self.problems])


# Short names people type for a key, mapped to the key.
_ALIASES = {"K": "num_components", "D": "latent_dim", "C": "num_classes", "E": "component_embedding_dim",
            "M": "top_m_gating", "lr": "learning_rate", "epochs": "max_epochs", "batch": "batch_size"}


def _section_keys(section: str) -> list[str]:
    return [k.split(".", 1)[1] for k in schema_keys() if k.startswith(section + ".")]


def suggest(section: str, key: str) -> str:
    """The "did you mean" hint for an unknown dotted key: an alias, a close name or the right section."""
    candidates = _section_keys(section)
    leaf = key.split(".")[-1]
    if leaf in _ALIASES and _ALIASES[leaf] in candidates:
        return f"; did you mean '{section}.{_ALIASES[leaf]}'?"
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if match:
        return f"; did you mean '{section}.{match[0]}'?"
    for other in SECTIONS:
        if other != section and key in _section_keys(other):
            return f"; '{key}' belongs to section '{other}'"
    return ""


def unknown_section(name: str) -> str:
    """The message for an unknown section, with the closest section name when there is one."""
    match = difflib.get_close_matches(name, SECTIONS, n=1, cutoff=0.6)
    hint = f"did you mean '{match[0]}'? " if match else ""
    return f"unknown section '{name}'; {hint}sections are {', '.join(SECTIONS)}"


def _describe_type(annotation_error: str) -> str:
    return {
        "int_parsing": "expected an integer", "int_type": "expected an integer",
        "int_from_float": "expected an integer", "float_parsing": "expected a number",
        "float_type": "expected a number", "bool_type": "expected true or false",
        "bool_parsing": "expected true or false", "string_type": "expected a string",
        "list_type": "expected a list", "dict_type": "expected a mapping",
        "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
    }.get(annotation_error, "")


def _field_enum(loc: tuple) -> tuple[str, ...] | None:
    model: Any = Config
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        f = model.model_fields.get(part)
        if f is None:
            return None
        model = f.annotation
    args = getattr(model, "__args__", None)
    if args and all(isinstance(a, str) for a in args):
        return args
    return None


def _unknown_key(loc: tuple, key: str) -> str:
    section = ".".join(str(p) for p in loc[:-1])
    leaf = str(loc[-1])
    if not section:
        return unknown_section(leaf)
    top = section.split(".")[0]
    sub = section[len(top) + 1:]
    return f"{key}: unknown key{suggest(top, (sub + '.' if sub else '') + leaf)}"


def _not_allowed(loc: tuple, key: str, value: Any) -> str:
    allowed = _field_enum(loc) or ()
    match = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return f"{key} must be one of {', '.join(allowed)} (got {value!r}{hint})"


def translate(e: dict) -> str:
    """One pydantic error → one line ``<dotted key>: <problem>``."""
    loc = tuple(p for p in e["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in loc)
    typ = e["type"]
    value = e.get("input")
    ctx = e.get("ctx", {})
    if typ == "extra_forbidden":
        return _unknown_key(loc, key)
    if typ == "literal_error":
        return _not_allowed(loc, key, value)
    bounds = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
    if typ in bounds:
        limit = next(iter(ctx.values()))
        return f"{key} must be {bounds[typ]} {limit:g} (got {value})"
    if typ in ("too_short", "too_long"):
        n = ctx.get("min_length") if typ == "too_short" else ctx.get("max_length")
        bound = "at least" if typ == "too_short" else "at most"
        return f"{key} must have {bound} {n} entr{'y' if n == 1 else 'ies'} (got {value!r})"
    if typ == "finite_number":
        return f"{key}: expected a finite number, got {value!r}"
    if typ == "string_pattern_mismatch":
        return f"{key}: {value!r} does not match the allowed form {ctx.get('pattern')}"
    if typ == "string_too_long":
        return f"{key}: at most {ctx.get('max_length')} characters (got {len(str(value))})"
    if typ == "string_too_short":
        return f"{key}: must not be empty"
    if typ == "value_error":
        return f"{key}: {ctx.get('error', e['msg'])}"
    described = _describe_type(typ)
    if described:
        return f"{key}: {described}, got {value!r}"
    return f"{key}: {e['msg']} (got {value!r})"
