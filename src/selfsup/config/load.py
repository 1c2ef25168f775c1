"""Typed configuration: dataclasses filled from ``params.yaml``, overridable with ``key.path=value``.

Every stage reads its section of one ``Config``. Loading is strict: an unknown key, a value of the wrong type or
a value out of range raises ``ConfigError`` naming the key path (``validate.corpus.max_chars``), so a typo in
``params.yaml`` or on the command line never silently falls back to a default.

    cfg = load_config("params.yaml", ["validate.corpus.min_chars=5"])
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selfsup.config.base import ConfigError, _check, check_rules, describe_rules, option
from selfsup.config.ops import (EMBEDDER_TASK, IMAGE_TASK, GateConfig, MonitorConfig, OrchestrationConfig, RouteConfig,
                                ServeConfig, TrackingConfig)
from selfsup.config.text import (DataConfig, ExportConfig, FinetuneConfig, PretrainConfig, RetrievalConfig, TaskData,
                                 TokenizerConfig, ValidateConfig)
from selfsup.config.vision import VisionConfig


@dataclass
class Config:
    """The whole configuration, one section per stage."""

    preset: str = option("cpu", help="presets/<name>.yaml (key.path: value overrides) applied over this file: "
                         "cpu (none: the CPU default), base (GPU), tiny (tests)")
    data: DataConfig = option(default_factory=DataConfig, help="where the data lives")
    validate: ValidateConfig = option(default_factory=ValidateConfig, help="the validate stage")
    tokenizer: TokenizerConfig = option(default_factory=TokenizerConfig, help="the tokenizer stage")
    pretrain: PretrainConfig = option(default_factory=PretrainConfig, help="the pretrain_mlm stage")
    finetune: FinetuneConfig = option(default_factory=FinetuneConfig, help="the finetune@<task> stages")
    export: ExportConfig = option(default_factory=ExportConfig, help="the export@<task> stages")
    retrieval: RetrievalConfig = option(default_factory=RetrievalConfig,
                                        help="sentence embeddings (simcse), answer retrieval and related articles")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, help="MLflow tracking and registry")
    vision: VisionConfig = option(default_factory=VisionConfig, help="the image stages")
    gate: GateConfig = option(default_factory=GateConfig, help="quality gate before any registry alias")
    monitor: MonitorConfig = option(default_factory=MonitorConfig, help="the sentiment monitoring flow")
    route: RouteConfig = option(default_factory=RouteConfig, help="the customer-service routing flow")
    orchestration: OrchestrationConfig = option(default_factory=OrchestrationConfig,
                                                help="Prefect schedules and the local server")
    serve: ServeConfig = option(default_factory=ServeConfig, help="the inference service (selfsup serve)")

    def served_task(self, section: str) -> TaskData:
        """The declared task a flow section (``monitor`` / ``route``) serves; checked when the flow starts, so a
        project without that task can still run the pipeline."""
        task = getattr(self, section).task
        _check(task in self.data.tasks, f"{section}.task",
               f"{task!r} is not a declared task; declared: {sorted(self.data.tasks)}")
        return self.data.tasks[task]

    def check(self, path: str = "") -> None:
        declared = sorted(self.data.tasks)
        unknown = sorted(set(self.validate.tables) - set(self.data.tasks))
        _check(not unknown, "validate.tables", f"rules for undeclared tasks {unknown}; declared: {declared}")
        unknown = sorted(set(self.finetune.tasks) - set(self.data.tasks))
        _check(not unknown, "finetune.tasks", f"settings for undeclared tasks {unknown}; declared: {declared}")
        unknown = sorted(set(self.finetune.label_efficiency.tasks) - set(self.finetune.tasks))
        _check(not unknown, "finetune.label_efficiency.tasks",
               f"tasks without fine-tuning settings {unknown}; have: {sorted(self.finetune.tasks)}")
        for task, spec in self.finetune.tasks.items():
            _check(spec.max_length <= self.pretrain.model.max_position, f"finetune.tasks.{task}.max_length",
                   f"must be <= pretrain.model.max_position ({self.pretrain.model.max_position})")
        unknown = sorted(set(self.gate.tasks) - set(self.data.tasks))
        _check(not unknown, "gate.tasks", f"thresholds for undeclared tasks {unknown}; declared: {declared}")
        for reserved, what in ((IMAGE_TASK, "the image encoder"), (EMBEDDER_TASK, "the sentence embedder")):
            _check(reserved not in self.data.tasks, f"data.tasks.{reserved}",
                   f"this task name is reserved for {what} in the model registry; rename the text task")
        for key, value in (("retrieval.max_length", self.retrieval.max_length),
                           ("retrieval.simcse.max_length", self.retrieval.simcse.max_length)):
            _check(value <= self.pretrain.model.max_position, key,
                   f"must be <= pretrain.model.max_position ({self.pretrain.model.max_position})")


# --------------------------------------------------------------------------------------------------- loading


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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
    if tp is dict:
        _check(isinstance(value, dict), path, f"expected a mapping, got {value!r}")
        return value
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
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; it means the number
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
    for name, f in known.items():  # defaults too; before check(), whose cross-field rules rely on these
        check_rules(f, getattr(obj, name), f"{path}.{name}" if path else name)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def set_path(raw: dict, key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key == "a.b.c"``, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {'.'.join(parents[: i + 1])} is not a section")
    node[leaf] = value


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to the raw mapping; the value is parsed as YAML (``3``, ``[a, b]``)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r}: expected key.path=value")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML") from None
    set_path(raw, key, value)


PRESETS_DIR = "presets"  # beside params.yaml; dvc.yaml's stages depend on presets/${preset}.yaml only


def read_preset(presets_dir: Path, name: str) -> dict[str, Any]:
    """The ``key.path: value`` overrides of ``presets_dir/<name>.yaml``."""
    path = Path(presets_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(presets_dir).glob("*.yaml"))
        raise ConfigError(f"preset: unknown preset {name!r}; {presets_dir}/ holds {known}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    _check(isinstance(values, dict), str(path), "expected a mapping of key.path: value")
    return values


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = (),
                     presets_dir: Path = Path(PRESETS_DIR)) -> Config:
    """Build the config: the file's values, then the selected preset's overrides, then ``overrides``.

    The preset can itself be chosen by an override (``preset=base``)."""
    raw = yaml.safe_load(yaml.safe_dump(raw or {}))  # deep copy through YAML types only
    for assignment in overrides:
        if assignment.partition("=")[0] == "preset":
            apply_override(raw, assignment)
    preset = raw.get("preset") or ""
    if preset:
        for key, value in read_preset(presets_dir, preset).items():
            try:
                set_path(raw, key, value)
            except ConfigError as err:
                raise ConfigError(f"{presets_dir}/{preset}.yaml: {err}") from None
    for assignment in overrides:
        apply_override(raw, assignment)
    return _build(Config, raw, "")


def load_config(params: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``params`` (presets from the ``presets/`` folder beside it) and apply ``overrides``; errors name the
    file and the key path."""
    params = Path(params)
    try:
        raw = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{params}: no such parameters file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{params}: not valid YAML: {err}") from None
    try:
        return config_from_dict(raw, overrides, params.parent / PRESETS_DIR)
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
    """``(key path, type, help)`` for every key, for ``selfsup config --help-keys``; the help ends with the key's
    rules, e.g. ``[>= 1]``."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        container = {list: "items", dict: "values"}.get(typing.get_origin(tp), "")
        rules = describe_rules(f, container)
        help_text = f.metadata.get("help", "") + (f" [{rules}]" if rules else "")
        rows.append((path, getattr(tp, "__name__", str(tp)).replace("typing.", ""), help_text))
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_keys(tp, path + "."))
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            rows.extend(describe_keys(typing.get_args(tp)[1], path + ".<name>."))
    return rows
