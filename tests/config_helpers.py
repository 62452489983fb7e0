"""Helpers shared by the configuration tests: load a config given as a dict and read its messages."""

from __future__ import annotations

import pytest

from mixvae.config import ConfigError, load_config


def load(raw: dict, overrides=(), **kw):
    """Validation stages 1–2 of a config given as a dict (as if read from `t.yaml`)."""
    return load_config("t.yaml", list(overrides), raw=raw, **kw)


def problems(raw: dict, overrides=(), **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(raw, overrides, **kw)
    return info.value.problems


def warnings_of(raw: dict, overrides=(), **kw) -> list[str]:
    return load(raw, overrides, **kw).warnings


def the_line(lines: list[str], key: str) -> str:
    """The one message line that names `key`."""
    hits = [line for line in lines if line.startswith(key)]
    assert len(hits) == 1, f"expected exactly one message for {key}, got {lines}"
    return hits[0]
