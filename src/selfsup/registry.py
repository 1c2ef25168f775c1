"""The model registry workflow: register exported models, gate new versions, promote and roll back champions.

MLflow owns the registry (``selfsup.adapters.mlflow``, imported lazily); this module owns the rules:

* ``register_exports`` — the ``register`` DVC stage: every exported task model becomes a new version of
  ``<prefix>-<task>`` with its test / baseline / parity metrics as version tags (``metric.<name>``). It runs after
  all exports succeeded, so a failed pipeline registers nothing; a model already registered (same ONNX SHA-256) is
  not registered twice.
* ``gate_versions`` — the training flow: each version without a verdict is judged by ``selfsup.gate``; the verdict
  and its reasons become the version tags ``gate`` / ``gate_reason``. Passing versions get the alias
  ``challenger``; one better than the current champion also gets ``champion``. A failing version gets no alias.
* ``promote`` / ``rollback`` — by hand (``selfsup registry promote|rollback``). Only a version that passed the gate
  can become champion. Every champion change is appended to the registered model's ``champion_history`` tag, so a
  rollback returns to the previous champion.

Aliases, not the deprecated stages, carry the state.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from selfsup.config import Config
from selfsup.gate import Verdict, judge

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"


class RegistryError(RuntimeError):
    """A registry action was refused; the message says why."""


def model_name(cfg: Config, task: str) -> str:
    return f"{cfg.export.registered_model_prefix}-{task}"


def version_metrics(tags: dict[str, str]) -> dict[str, float]:
    return {key.removeprefix("metric."): float(value) for key, value in tags.items() if key.startswith("metric.")}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ register stage


def registration_metrics(evaluation: dict, export: dict) -> dict[str, float]:
    """The metrics a version carries: pretrained and from-scratch test scores, and ONNX parity."""
    return {
        **{f"test_{k}": float(v) for k, v in evaluation["pretrained"].items()},
        **{f"scratch_test_{k}": float(v) for k, v in evaluation["scratch"].items()},
        "onnx_label_agreement": float(export["label_agreement"]),
        "onnx_max_abs_logit_diff": float(export["max_abs_logit_diff"]),
    }


@dataclass
class Registration:
    task: str
    name: str
    version: int
    new: bool  # False: this exact ONNX model was already registered
    run_id: str | None
    metrics: dict[str, float]


def register_exports(cfg: Config, tasks: list[str], tracker_factory, commit: str,
                     artifacts: Path = Path("artifacts")) -> list[Registration]:
    """Register every task's exported model (``export.out_dir/<task>``) with its evaluation and parity metrics.

    ``tracker_factory(task)`` is a context manager yielding the MLflow tracker of the task's register run."""
    from selfsup.adapters.mlflow import register_onnx

    missing = [str(p) for task in tasks for p in (Path(cfg.export.out_dir) / task / "model.onnx",
                                                     artifacts / "evaluate" / task / "metrics.json",
                                                     artifacts / "export" / task / "metrics.json") if not p.exists()]
    if missing:
        raise RegistryError(f"cannot register: missing {missing} (run the evaluate and export stages first)")
    registrations = []
    for task in tasks:
        out_dir = Path(cfg.export.out_dir) / task
        evaluation = json.loads((artifacts / "evaluate" / task / "metrics.json").read_text())
        exported = json.loads((artifacts / "export" / task / "metrics.json").read_text())
        metrics = registration_metrics(evaluation, exported)
        with tracker_factory(task) as tracker:
            tracker.log_metrics(metrics)
            version, new = register_onnx(
                cfg.tracking, tracker.run_id, out_dir / "model.onnx", model_name(cfg, task), metrics,
                {"task": task, "git_commit": commit},
                [out_dir / "tokenizer.json", out_dir / "labels.json", out_dir / "export.json"],
                fingerprint=sha256_file(out_dir / "model.onnx"))
            tracker.set_tags({"registered_model": model_name(cfg, task), "registered_version": str(version)})
        registrations.append(Registration(task, model_name(cfg, task), version, new, tracker.run_id, metrics))
    return registrations


# ------------------------------------------------------------------------------------------------ gate


@dataclass
class GateDecision:
    task: str
    name: str
    version: int
    verdict: Verdict
    aliases: list[str]  # aliases set by this decision
    previous_champion: int | None


def _history(cfg: Config, name: str) -> list[int]:
    from selfsup.adapters import mlflow as registry

    raw = registry.model_tag(cfg.tracking, name, HISTORY_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def _make_champion(cfg: Config, name: str, version: int, reason: str) -> None:
    from selfsup.adapters import mlflow as registry

    history = _history(cfg, name)
    registry.set_alias(cfg.tracking, name, CHAMPION, version)
    registry.set_model_tag(cfg.tracking, name, HISTORY_TAG, json.dumps([*history, version]))
    registry.set_version_tags(cfg.tracking, name, version, {"champion_since": _now(), "champion_reason": reason})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def gate_versions(cfg: Config, task: str, context: dict[str, str] | None = None) -> list[GateDecision]:
    """Judge every version of ``task``'s model that has no gate verdict yet (oldest first) and set aliases.

    Versions that already carry a verdict are left alone, so running the flow again changes nothing."""
    from selfsup.adapters import mlflow as registry

    name = model_name(cfg, task)
    decisions = []
    rows = registry.model_versions(cfg.tracking, name)
    metrics_of = {row["version"]: version_metrics(row["tags"]) for row in rows}  # metric tags never change
    for row in rows:
        if "gate" in row["tags"]:
            continue
        champion = registry.alias_version(cfg.tracking, name, CHAMPION)  # may have moved in an earlier iteration
        champion_metrics = None if champion is None else metrics_of[champion]
        verdict = judge(task, metrics_of[row["version"]], champion_metrics, cfg.gate, cfg.export)
        registry.set_version_tags(cfg.tracking, name, row["version"], {
            "gate": "passed" if verdict.passed else "failed", "gate_reason": verdict.summary[:5000],
            "gate_checked_at": _now(), **(context or {})})
        aliases = []
        if verdict.passed:
            registry.set_alias(cfg.tracking, name, CHALLENGER, row["version"])
            aliases.append(CHALLENGER)
            if verdict.becomes_champion:
                _make_champion(cfg, name, row["version"], "passed the gate and beat the previous champion"
                               if champion is not None else "passed the gate; first champion")
                aliases.append(CHAMPION)
        decisions.append(GateDecision(task, name, row["version"], verdict, aliases, champion))
    return decisions


# ------------------------------------------------------------------------------------------------ by hand


def list_versions(cfg: Config, task: str) -> list[dict]:
    from selfsup.adapters import mlflow as registry

    return registry.model_versions(cfg.tracking, model_name(cfg, task))


def promote(cfg: Config, task: str, version: int) -> int | None:
    """Make ``version`` the champion; returns the previous champion. Refused unless the version passed the gate."""
    from selfsup.adapters import mlflow as registry

    name = model_name(cfg, task)
    rows = {r["version"]: r for r in registry.model_versions(cfg.tracking, name)}
    if version not in rows:
        raise RegistryError(f"{name} has no version {version}; versions: {sorted(rows) or 'none'}")
    gate = rows[version]["tags"].get("gate")
    if gate != "passed":
        why = rows[version]["tags"].get("gate_reason", "it has not been through the gate yet")
        raise RegistryError(f"refused: {name} v{version} did not pass the quality gate ({gate or 'no verdict'}: {why})")
    previous = registry.alias_version(cfg.tracking, name, CHAMPION)
    if previous == version:
        raise RegistryError(f"{name} v{version} is already the champion")
    _make_champion(cfg, name, version, "promoted by hand")
    return previous


def rollback(cfg: Config, task: str) -> tuple[int, int]:
    """Move ``champion`` back to the previous champion; returns ``(from_version, to_version)``."""
    from selfsup.adapters import mlflow as registry

    name = model_name(cfg, task)
    history = _history(cfg, name)
    current = registry.alias_version(cfg.tracking, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    if history and history[-1] == current:
        history = history[:-1]
    if not history:
        raise RegistryError(f"{name} v{current} is the first champion; there is no previous champion to roll back to")
    target = history[-1]
    registry.set_alias(cfg.tracking, name, CHAMPION, target)
    registry.set_model_tag(cfg.tracking, name, HISTORY_TAG, json.dumps(history))
    registry.set_version_tags(cfg.tracking, name, current, {"rolled_back_at": _now()})
    return current, target


def fetch_model(cfg: Config, task: str, alias: str, dest: Path) -> tuple[int, Path]:
    """Download the version of ``task``'s model that ``alias`` points at into ``dest``; returns (version, folder)."""
    from selfsup.adapters import mlflow as registry

    name = model_name(cfg, task)
    version = registry.alias_version(cfg.tracking, name, alias)
    if version is None:
        raise RegistryError(f"{name} has no version with the alias '{alias}' (run the training flow, or "
                            f"`selfsup registry promote {task} VERSION`)")
    marker = Path(dest) / "version.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == version:
        return version, Path(dest)
    folder = registry.download_version(cfg.tracking, name, version, Path(dest))
    (folder / "version.json").write_text(json.dumps({"name": name, "version": version, "alias": alias}))
    return version, folder
