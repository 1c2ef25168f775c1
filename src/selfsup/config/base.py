"""What every config section shares: the error type, fields with help text, checks that name the key path, and
the training-loop settings every recipe (text and image) reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class TrainLoopConfig:
    """What every training recipe shares: device, precision, seed, progress."""

    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, or cuda[:N]")
    precision: str = option("fp32", help="fp32, or bf16 (autocast; GPU)")
    threads: int = option(0, help="CPU threads for torch (0 = all cores)")
    seed: int = option(1234, help="random seed for initialisation, masking and sampling")
    progress: bool = option(True, help="show a progress bar")

    def check(self, path: str) -> None:
        _check(self.precision in ("fp32", "bf16"), f"{path}.precision", f"must be fp32 or bf16, got {self.precision!r}")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), f"{path}.device",
               f"must be auto, cpu or cuda[:N], got {self.device!r}")
        _check(self.threads >= 0, f"{path}.threads", "must be >= 0")
