"""Typed configuration: dataclasses filled from ``params.yaml``, overridable with ``key.path=value``.

Every stage reads its section of one ``Config``. Loading is strict: an unknown key, a value of the wrong type or
a value out of range raises ``ConfigError`` naming the key path (``validate.corpus.max_chars``), so a typo in
``params.yaml`` or on the command line never silently falls back to a default.

    cfg = load_config("params.yaml", ["validate.corpus.min_chars=5"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message names its key path."""


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with help text (shown by ``selfsup config --help-keys``)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(**kwargs)


def _check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {message}")


# --------------------------------------------------------------------------------------------------- sections


@dataclass
class TaskData:
    """A labelled text-classification set: ``{dir}/{train,validation,test}.csv`` with columns ``text,label``."""

    dir: Path = option(help="folder holding train.csv, validation.csv and test.csv (columns text,label)")
    labels: list[str] = option(help="the declared label set; validation rejects any other label")

    def check(self, path: str) -> None:
        _check(len(self.labels) >= 2, f"{path}.labels", f"needs at least 2 labels, got {self.labels}")
        _check(len(set(self.labels)) == len(self.labels), f"{path}.labels", f"has duplicates: {self.labels}")


@dataclass
class DataConfig:
    """Where the versioned data lives. Point these at your own files to train on your own data."""

    corpus: Path = option(
        Path("data/corpus/unlabeled.jsonl"),
        help="unlabeled corpus for pretraining: JSON lines with fields source, id, text",
    )
    tasks: dict[str, TaskData] = option(
        default_factory=dict, help="labelled sets by task name (intent, sentiment, topic, or your own)"
    )
    splits: list[str] = option(
        default_factory=lambda: ["train", "validation", "test"], help="split file names every task has"
    )

    def check(self, path: str) -> None:
        _check(bool(self.tasks), f"{path}.tasks", "declare at least one labelled task")
        _check("test" in self.splits, f"{path}.splits", "must include 'test'")


@dataclass
class TableRules:
    """Validation rules for one table (the corpus or one labelled set)."""

    min_chars: int = option(1, help="shortest allowed text, in characters (after stripping)")
    max_chars: int = option(5000, help="longest allowed text, in characters")
    max_duplicate_rate: float = option(
        0.0, help="largest allowed share of rows whose text duplicates an earlier row (case/space-insensitive)"
    )
    min_per_class: int = option(0, help="fewest examples each declared label must have in every split")

    def check(self, path: str) -> None:
        _check(self.min_chars >= 1, f"{path}.min_chars", f"must be >= 1, got {self.min_chars}")
        _check(self.max_chars >= self.min_chars, f"{path}.max_chars", "must be >= min_chars")
        _check(0.0 <= self.max_duplicate_rate < 1.0, f"{path}.max_duplicate_rate", "must be in [0, 1)")
        _check(self.min_per_class >= 0, f"{path}.min_per_class", "must be >= 0")


@dataclass
class ValidateConfig:
    """The ``validate`` stage: Great Expectations suites over the corpus and every labelled set."""

    report_dir: Path = option(
        Path("artifacts/validation"), help="where the summary, the full GE results (JSON) and the HTML report go"
    )
    max_failures_shown: int = option(10, help="how many failing rows to name per rule in the error message")
    corpus: TableRules = option(default_factory=TableRules, help="rules for the unlabeled corpus")
    tables: dict[str, TableRules] = option(
        default_factory=dict, help="rules per labelled task (keys must be tasks declared under data.tasks)"
    )

    def check(self, path: str) -> None:
        _check(self.max_failures_shown >= 1, f"{path}.max_failures_shown", "must be >= 1")


@dataclass
class Config:
    """The whole configuration, one section per stage."""

    data: DataConfig = option(default_factory=DataConfig, help="where the data lives")
    validate: ValidateConfig = option(default_factory=ValidateConfig, help="the validate stage")

    def check(self, path: str = "") -> None:
        unknown = sorted(set(self.validate.tables) - set(self.data.tasks))
        _check(not unknown, "validate.tables", f"rules for undeclared tasks {unknown}; declared: {sorted(self.data.tasks)}")


# --------------------------------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Turn a YAML value into ``tp``, or raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin is list:
        _check(isinstance(value, list), path, f"expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _check(isinstance(value, dict), path, f"expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        _check(isinstance(value, bool), path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        _check(isinstance(value, str) and value != "", path, f"expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{path}: unsupported type {tp}")  # a bug in a dataclass, not in the user's file


def _build(cls: type, raw: Any, path: str) -> Any:
    where = path or "<root>"
    _check(isinstance(raw, dict), where, f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        joined = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        raise ConfigError(f"unknown key(s) {joined}; known keys here: {sorted(known)}")
    kwargs = {}
    for name, f in known.items():
        sub = f"{path}.{name}" if path else name
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required key is missing")
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to the raw mapping; the value is parsed as YAML (``3``, ``[a, b]``)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r}: expected key.path=value")
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parents[: i + 1])} is not a section")
    node[leaf] = yaml.safe_load(text) if text != "" else ""


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = yaml.safe_load(yaml.safe_dump(raw or {}))  # deep copy through YAML types only
    for assignment in overrides:
        apply_override(raw, assignment)
    return _build(Config, raw, "")


def load_config(params: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``params`` and apply ``overrides``; errors name the file and the key path."""
    params = Path(params)
    try:
        raw = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{params}: no such parameters file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{params}: not valid YAML: {err}") from None
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as err:
        raise ConfigError(f"{params}: {err}") from None


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-able form of a config (paths as strings)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key path, type, help)`` for every key, for ``selfsup config --help-keys``."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        rows.append((path, getattr(tp, "__name__", str(tp)).replace("typing.", ""), f.metadata.get("help", "")))
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_keys(tp, path + "."))
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            rows.extend(describe_keys(typing.get_args(tp)[1], path + ".<name>."))
    return rows
