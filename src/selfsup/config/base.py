"""What every config section shares: the error type, fields with help text and declarative rules, and the
training-loop settings every recipe (text and image) reads.

Sections are plain dataclasses rather than pydantic models because the core must import on the GPU image, which
holds only torch, transformers, onnx, onnxruntime and numpy.

A field states its own rules (``option(1, help=..., ge=1)``); the loader checks them after coercion and
``--help-keys`` shows them. A section's ``check(path)`` holds only the rules that relate several fields."""

from __future__ import annotations

import dataclasses
import operator
import re
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message names its key path."""


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: tuple | None = None, pattern: str | None = None, min_items: int | None = None,
           max_items: int | None = None, nonempty: bool = False, unique: bool = False, contains: Any = None) -> Any:
    """A dataclass field with help text (shown by ``selfsup config --help-keys``) and rules its value must keep.

    ``ge``/``gt``/``le``/``lt`` bound a number, ``choices`` lists the allowed values and ``pattern`` is a regular
    expression the whole string must match; on a list or mapping these apply to every item (value).
    ``min_items``/``max_items``/``nonempty`` bound a list's (mapping's) length, ``unique`` forbids repeated items and
    ``contains`` names an item the list must hold. A null value of an optional field keeps every rule."""
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("option: give one lower bound (ge or gt) and one upper bound (le or lt) at most")
    given = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "pattern": pattern, "min_items": min_items,
             "max_items": max_items, "nonempty": nonempty or None, "unique": unique or None, "contains": contains}
    kwargs: dict[str, Any] = {"metadata": {"help": help, "rules": {k: v for k, v in given.items() if v is not None}}}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(**kwargs)


def _check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {message}")


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


_COMPARE = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _bounds(rules: dict[str, Any], interval: bool) -> str:
    """The numeric bounds as ``>= 1``, or, when two-sided, as ``in [0, 1)`` (``interval``) or ``0 <= x < 1``."""
    low = next((k for k in ("ge", "gt") if k in rules), None)
    high = next((k for k in ("le", "lt") if k in rules), None)
    if low and high and interval:
        return f"in {'[' if low == 'ge' else '('}{_num(rules[low])}, {_num(rules[high])}{']' if high == 'le' else ')'}"
    if low and high:
        return f"{_num(rules[low])} {'<=' if low == 'ge' else '<'} x {_COMPARE[high][0]} {_num(rules[high])}"
    one = low or high
    return f"{_COMPARE[one][0]} {_num(rules[one])}" if one else ""


def _within_bounds(value: Any, rules: dict[str, Any]) -> bool:
    # asks whether each bound holds (not whether one is broken), so that NaN, which compares false, is rejected
    return all(compare(value, rules[k]) for k, (_, compare) in _COMPARE.items() if k in rules)


def _length(rules: dict[str, Any]) -> str:
    """The length rule as ``at least 2 items``, ``exactly 2 items``...; empty if there is none."""
    low, high = rules.get("min_items"), rules.get("max_items")
    if low is None and high is None:
        return ""
    if low == high:
        return f"exactly {low} items"
    if high is None:
        return f"at least {low} items"
    return f"at most {high} items" if low is None else f"{low} to {high} items"


def _check_item(value: Any, rules: dict[str, Any], path: str) -> None:
    _check(_within_bounds(value, rules), path, f"must be {_bounds(rules, interval=True)}, got {value!r}")
    if "choices" in rules:
        _check(value in rules["choices"], path, f"must be one of {list(rules['choices'])}, got {value!r}")
    if "pattern" in rules:
        # DOTALL: a '.*' tail accepts any rest, as a prefix test would
        _check(re.fullmatch(rules["pattern"], value, re.DOTALL) is not None, path,
               f"must match {rules['pattern']!r}, got {value!r}")


def check_rules(f: dataclasses.Field, value: Any, path: str) -> None:
    """Raise ConfigError naming ``path`` (or the item's path) if ``value`` breaks a rule of field ``f``."""
    rules = f.metadata.get("rules", {})
    if not rules or value is None:
        return
    if not isinstance(value, (list, dict)):
        _check_item(value, rules, path)
        return
    _check(not rules.get("nonempty") or bool(value), path, "must not be empty")
    _check(rules.get("min_items", 0) <= len(value) <= rules.get("max_items", len(value)), path,
           f"needs {_length(rules)}, got {value!r}")
    _check(not rules.get("unique") or len(set(value)) == len(value), path, f"has duplicates: {value!r}")
    if "contains" in rules:
        _check(rules["contains"] in value, path, f"must include {rules['contains']!r}")
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        _check_item(item, rules, f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]")


def describe_rules(f: dataclasses.Field, container: str = "") -> str:
    """The rules of field ``f`` in words (``>= 1``, ``one of: fp32, bf16``), for ``--help-keys``; ``container``
    ("items" or "values") prefixes the rules that apply to each element of a list or mapping."""
    rules = f.metadata.get("rules", {})
    each = f"{container} " if container else ""
    bounds = _bounds(rules, interval=False)
    words = [
        "non-empty" if rules.get("nonempty") else "",
        _length(rules),
        "distinct items" if rules.get("unique") else "",
        f"includes {rules['contains']}" if "contains" in rules else "",
        each + bounds if bounds else "",
        f"{each}one of: {', '.join(map(str, rules['choices']))}" if "choices" in rules else "",
        f"{each}matches {rules['pattern']}" if "pattern" in rules else "",
    ]
    return ", ".join(w for w in words if w)


@dataclass
class TrainLoopConfig:
    """What every training recipe shares: device, precision, seed, progress."""

    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, or cuda[:N]",
                         pattern=r"auto|cpu|cuda.*")
    precision: str = option("fp32", help="fp32, or bf16 (autocast; GPU)", choices=("fp32", "bf16"))
    threads: int = option(0, help="CPU threads for torch (0 = all cores)", ge=0)
    seed: int = option(1234, help="random seed for initialisation, masking and sampling")
    progress: bool = option(True, help="show a progress bar")
