"""A sweep's search space: SPACE.yaml read, checked against the config it sweeps, and turned into Optuna
distributions and `--set` items.

SPACE.yaml maps dotted config keys to distributions::

    model.kl_c_weight: {type: float, low: 0.05, high: 1.0, log: true}
    training.batch_size: {type: int, low: 16, high: 64, step: 16}
    model.use_gumbel_softmax: {type: categorical, choices: [true, false]}

Every problem is found before the first trial, all at once: an unknown key, a malformed or empty range, and a
value of the range (its ends, each choice) that makes the config invalid with every other key as configured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from mixvae.config import ConfigError, load_config
from mixvae.config.errors import suggest, unknown_section
from mixvae.config.flat import schema_keys
from mixvae.config.schema import SECTIONS

Scalar = Union[StrictBool, int, float, str, None]


class _Dim(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatDim(_Dim):
    type: Literal["float"]
    low: float
    high: float
    log: StrictBool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self):
        _check_range(self.low, self.high, self.log)
        return self

    def probes(self) -> list[Any]:
        return [self.low, self.high]


class IntDim(_Dim):
    type: Literal["int"]
    low: int
    high: int
    log: StrictBool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self):
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined (Optuna samples a log range with step 1)")
        return self

    def probes(self) -> list[Any]:
        return [self.low, self.low + (self.high - self.low) // self.step * self.step]


class CategoricalDim(_Dim):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    def probes(self) -> list[Any]:
        return list(self.choices)


Dim = Annotated[Union[FloatDim, IntDim, CategoricalDim], Field(discriminator="type")]


class _Space(BaseModel):
    dims: dict[str, Dim]


_MESSAGES = {"union_tag_invalid": "type must be float, int or categorical",
             "union_tag_not_found": "needs a type: float, int or categorical",
             "too_short": "needs at least one choice", "extra_forbidden": "is not a field of a distribution",
             "missing": "is missing"}


def _check_range(low: float, high: float, log: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("low and high must be finite numbers")
    if low >= high:
        raise ValueError(f"the range is empty (low {low} is not below high {high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0 (got {low})")


def _read(path: Path) -> tuple[dict | None, list[str]]:
    if not path.is_file():
        return None, [f"{path}: no such file"]
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return None, [f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})"]
    if not isinstance(raw, dict) or not raw:
        return None, [f"{path}: expected a mapping of dotted config keys to distributions, e.g. "
                      "model.kl_c_weight: {type: float, low: 0.1, high: 1.0}"]
    return raw, []


def _key_problem(key: str) -> str | None:
    leaf_keys = set(schema_keys())
    if key in leaf_keys:
        if key.startswith("tracking."):
            return "tracking keys cannot be swept (every trial logs where the sweep logs)"
        return None
    top = str(key).split(".")[0]
    if top not in SECTIONS:
        return unknown_section(top)
    return f"unknown key{suggest(top, str(key)[len(top) + 1:])}"


def _dim_problems(key: str, spec: Any) -> tuple[Any, list[str]]:
    try:
        return _Space(dims={key: spec}).dims[key], []
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"][2:] if p not in ("float", "int", "categorical"))
            msg = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
            out.append(f"{key}{'.' + where if where else ''}: {msg}")
        return None, out


def load_space(path: str | Path, config: str, items: list[str], tracking_uri: str | None = None) -> dict[str, Any]:
    """The checked space of SPACE.yaml for ``config`` with ``items`` (--set); ConfigError listing every problem."""
    path = Path(path)
    raw, problems = _read(path)
    space: dict[str, Any] = {}
    for key, spec in (raw or {}).items():
        if (problem := _key_problem(str(key))) is not None:
            problems.append(f"{key}: {problem}")
            continue
        dim, found = _dim_problems(str(key), spec)
        problems += found
        if dim is not None:
            space[str(key)] = dim
    for key, dim in space.items():
        problems += _probe(key, dim, config, items, tracking_uri)
    if problems:
        raise ConfigError(problems, str(path))
    return space


def _probe(key: str, dim, config: str, items: list[str], tracking_uri: str | None) -> list[str]:
    """The range's ends (each choice) applied one at a time to the config: what makes it invalid."""
    out = []
    for value in dim.probes():
        try:
            load_config(config, [*items, set_item(key, value)], tracking_uri=tracking_uri)
        except ConfigError as exc:
            out += [f"{key}: the value {json.dumps(value)} makes the config invalid: {p}" for p in exc.problems]
    return out


def set_item(key: str, value: Any) -> str:
    """A ``--set`` item for a sampled value (JSON is YAML, so numbers, booleans, null and strings survive)."""
    return f"{key}={json.dumps(value)}"


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """Optuna's distribution for every key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    out = {}
    for key, dim in space.items():
        if dim.type == "float":
            out[key] = FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        elif dim.type == "int":
            out[key] = IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        else:
            out[key] = CategoricalDistribution(dim.choices)
    return out


def to_yaml(space: dict[str, Any]) -> str:
    """The space as it is logged (`sweep/space.yaml`): every field written out."""
    return yaml.safe_dump({k: d.model_dump() for k, d in space.items()}, sort_keys=False)
