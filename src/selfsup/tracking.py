"""Experiment tracking behind a small protocol; MLflow is one implementation, imported only when used.

Stages call ``open_run(cfg, stage, ...)`` and log through the returned ``Tracker``. With tracking disabled (or in
unit tests) a ``NullTracker`` swallows everything, so the core never needs MLflow installed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Protocol

import yaml

from selfsup.config import Config, config_to_dict


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullTracker:
    run_id = None

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def set_tags(self, tags):
        pass


# Tracked files that the pipeline itself rewrites: DVC's record of what it ran (dvc.lock), of the data (*.dvc) and
# the .gitignore entries it adds for new outputs. A difference there says what DVC did, not that the code differs
# from the commit; the data version is the run's own tag (dvc_data_hash).
PIPELINE_BOOKKEEPING = ("dvc.lock", "*.dvc", ".gitignore")


def is_pipeline_bookkeeping(path: str) -> bool:
    """``path`` (relative to the repository root, any folder) is a file DVC writes, not code or configuration."""
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in PIPELINE_BOOKKEEPING)


def changed_code(root: Path = Path(".")) -> list[str]:
    """Tracked files (relative to the repository root) whose content differs from the checked-out commit, staged or
    not, deleted included; untracked files and ``PIPELINE_BOOKKEEPING`` files do not count."""
    listing = subprocess.run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=no"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    entries, changed = listing.split("\0"), []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        paths = [path]
        if "R" in status or "C" in status:  # "XY new\0old": a rename or copy names both sides
            paths.append(entries[index])
            index += 1
        changed += [p for p in paths if not is_pipeline_bookkeeping(p)]
    return changed


def git_commit(root: Path = Path(".")) -> str:
    """The checked-out commit, with ``-dirty`` when tracked code differs from it (``changed_code``: what DVC itself
    rewrites, such as ``dvc.lock`` after ``dvc repro`` in a fresh clone, does not count); ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        return commit + ("-dirty" if changed_code(root) else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def data_hash(root: Path = Path(".")) -> str:
    """The DVC hash of data/ as recorded in ``data.dvc`` (the data version every stage ran on)."""
    path = root / "data.dvc"
    if not path.exists():
        return "untracked"
    outs = yaml.safe_load(path.read_text()).get("outs", [])
    return outs[0].get("md5", "unknown") if outs else "unknown"


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` for logging nested configs as MLflow params."""
    if isinstance(params, dict):
        out: dict[str, Any] = {}
        for key, value in params.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): params}


def pipeline_key(params_file: Path, root: Path = Path(".")) -> str:
    """Stages run with the same code, parameters and data belong to one pipeline run (one MLflow parent run)."""
    params = params_file.read_bytes() if params_file.exists() else b""
    digest = hashlib.sha256(git_commit(root).encode() + b"\0" + params + b"\0" + data_hash(root).encode())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def open_run(cfg: Config, stage: str, params_file: Path, section: Any = None,
             task: str | None = None) -> Iterator[Tracker]:
    """A tracked run for one stage (one task), nested under its pipeline run; ends FAILED on an exception."""
    if not cfg.tracking.enabled:
        yield NullTracker()
        return
    from selfsup.adapters import mlflow as mlflow_adapter  # lazy: MLflow only when tracking

    tags = {"stage": stage, "git_commit": git_commit(), "dvc_data_hash": data_hash(),
            "pipeline_key": pipeline_key(params_file), "preset": cfg.preset or "default"}
    if task:
        tags["task"] = task
    name = f"{stage}:{task}" if task else stage
    with mlflow_adapter.stage_run(cfg.tracking, name, tags) as tracker:
        if section is not None:
            tracker.log_params(flatten(config_to_dict(section)))
        yield tracker
