"""Loading a config: find the file or preset, read its YAML, apply overrides, validate, resolve.

``load_config`` is the only way a config file enters mixvae. It runs validation stage 1 (schema: YAML,
sections, unknown keys, types, ranges, enums) and stage 2 (cross-field rules and "has no effect"
warnings) and reports every problem of a stage together in one ``ConfigError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mixvae.config.errors import ConfigError, translate
from mixvae.config.flat import flatten_dict
from mixvae.config.overrides import parse_overrides, set_dotted
from mixvae.config.rules import check_rules
from mixvae.config.schema import SECTIONS, Config

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


def validate_dict(raw: Any, source: str = "config") -> Config:
    """Stage 1: a nested dict → Config, or ConfigError listing every field problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections ({', '.join(SECTIONS)})"], source)
    problems = []
    for sec, body in raw.items():
        if sec in SECTIONS and body is not None and not isinstance(body, dict):
            problems.append(f"{sec}: a section must be a mapping of keys (got {body!r})")
    if problems:
        raise ConfigError(problems, source)
    raw = {k: ({} if v is None else v) for k, v in raw.items()}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            msg = translate(e)
            if msg not in problems:
                problems.append(msg)
        raise ConfigError(problems, source) from None


def shipped_presets() -> list[str]:
    """Preset names: the YAML files in ./configs and in the package's configs folder."""
    dirs = [Path.cwd() / "configs", PRESETS_DIR]
    names = set()
    for d in dirs:
        if d.is_dir():
            names |= {p.stem for p in d.glob("*.yaml")}
    return sorted(names)


def resolve_config_path(name: str) -> Path:
    """A file path as given, else a preset by bare name (``quick`` or ``quick.yaml``)."""
    p = Path(name)
    if p.is_file():
        return p
    if "/" not in name and "\\" not in name:
        stem = name[:-5] if name.endswith(".yaml") else name
        for d in (Path("configs"), PRESETS_DIR):
            cand = d / f"{stem}.yaml"
            if cand.is_file():
                return cand
    raise ConfigError([f"config file not found: {name}; shipped presets: {', '.join(shipped_presets())}"], name)


@dataclass
class Loaded:
    """A validated, resolved config and everything known about where it came from."""
    config: Config
    path: str
    input_text: str
    explicit: set[str] = field(default_factory=set)
    overrides: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.path else "config"


def _explicit_keys(raw: dict) -> set[str]:
    return set(flatten_dict(raw)) if isinstance(raw, dict) else set()


def read_yaml(path: Path, source: str) -> dict:
    """The parsed YAML of ``path`` ({} when empty); a syntax error names its line and column."""
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML syntax error at {where}{problem}"], source) from None
    return raw if raw is not None else {}


def _read_source(name: str | None, raw: dict | None) -> tuple[dict, str, str, str]:
    """The raw dict, its source (for messages), the text as given and the stem that names the experiment."""
    if raw is None:
        path = resolve_config_path(name)
        source = str(name if Path(name).is_file() else path)
        return read_yaml(path, source), source, path.read_text(), path.stem
    return raw, name or "config", yaml.safe_dump(raw), Path(name or "config").stem


def _name_experiment(raw: dict, stem: str) -> None:
    """An experiment without a name is named after its file."""
    if raw.get("experiment") is None:
        raw["experiment"] = {}
    exp = raw["experiment"]
    if isinstance(exp, dict) and not exp.get("name"):
        exp["name"] = re.sub(r"[^A-Za-z0-9._-]", "-", stem)[:100] or "config"


def load_config(name: str | None, overrides: list[str] | tuple[str, ...] = (),
                shortcuts: dict[str, Any] | None = None, *, tracking_uri: str | None = None,
                raw: dict | None = None) -> Loaded:
    """Validation stages 1 and 2 (schema and rules) of a file or preset, or of ``raw`` as if read from ``name``.

    ``overrides``: ``KEY=VALUE`` items applied in order after the file. ``shortcuts``: CLI options such
    as --run-name (dotted keys), applied last. ``tracking_uri``: the --tracking-uri option.
    """
    raw, source, text, stem = _read_source(name, raw)
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections ({', '.join(SECTIONS)})"], source)
    raw = json.loads(json.dumps(raw, default=str))  # deep copy, plain types
    explicit = _explicit_keys(raw)
    parsed = parse_overrides(list(overrides))
    set_by_option = [(key, value) for key, value, _ in parsed]
    set_by_option += [(key, value) for key, value in (shortcuts or {}).items() if value is not None]
    for key, value in set_by_option:
        set_dotted(raw, key, value)
        explicit.add(key)
    written = {k: v for k, v in flatten_dict(raw).items() if k in explicit}  # values as written, before resolution
    _name_experiment(raw, stem)
    cfg = validate_dict(raw, source)
    errors, warns = check_rules(cfg, explicit, written, tracking_uri)
    if errors:
        raise ConfigError(errors, source)
    return Loaded(cfg, source, text, explicit, [p[2] for p in parsed], warns)
