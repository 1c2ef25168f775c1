"""The model registry workflow: register exported models, gate new versions, promote and roll back champions.

MLflow owns the registry (``selfsup.adapters.mlflow``, imported lazily); this module owns the rules:

* ``register_exports`` — the ``register`` DVC stage: every exported task model becomes a new version of
  ``<prefix>-<task>``, and the image encoder (task ``image-encoder``) one of ``vision.export.registered_model``,
  with its test / baseline / parity (and, for images, collapse) metrics as version tags (``metric.<name>``). It
  runs after all exports succeeded and checks every input before registering anything, so a failed pipeline
  registers nothing; a model already registered (same ONNX SHA-256) is not registered twice. A text model is
  registered as an MLflow pyfunc (texts in, labels out: ``selfsup.serve.pyfunc``), the image encoder with the ONNX
  flavor; ``fetch_model`` turns either (and the ONNX-flavor text versions of older registries) back into the
  exported folder.
* ``gate_versions`` — the training flow: each version without a verdict is judged by ``selfsup.registry.gate`` (``judge``
  for text, ``judge_image`` for the image encoder); the verdict and its reasons become the version tags ``gate`` /
  ``gate_reason``. Passing versions get the alias ``challenger``; one better than the current champion also gets
  ``champion``. A failing version gets no alias.
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
from selfsup.registry.gate import Verdict
from selfsup.registry.kinds import RegistryError, kind_of, model_name

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"


def check_task(cfg: Config, task: str) -> None:
    kind_of(cfg, task)


def version_metrics(tags: dict[str, str]) -> dict[str, float]:
    return {key.removeprefix("metric."): float(value) for key, value in tags.items() if key.startswith("metric.")}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(folder: Path, names: tuple[str, ...]) -> str:
    """SHA-256 of one file; of several, SHA-256 over their names and hashes (order as given)."""
    if len(names) == 1:
        return sha256_file(Path(folder) / names[0])
    return hashlib.sha256("".join(f"{name}:{sha256_file(Path(folder) / name)}\n" for name in names).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ register stage


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
    """Register every task's exported model with its metrics (text tasks and the image encoder alike).

    Every input of every task is checked first, so a missing one registers nothing at all.
    ``tracker_factory(task)`` is a context manager yielding the MLflow tracker of the task's register run."""
    from selfsup.adapters.mlflow import register_onnx

    kinds = {task: kind_of(cfg, task) for task in tasks}
    exports = {task: kind.export_files(cfg, task, artifacts) for task, kind in kinds.items()}
    missing = [str(p) for export in exports.values() for p in export.inputs if not p.exists()]
    if missing:
        raise RegistryError(f"cannot register: missing {missing} (run the evaluate and export stages first: "
                            f"`dvc repro register`)")
    planned = {}
    for task, export in exports.items():
        reports = {role: json.loads(path.read_text()) for role, path in export.reports.items()}
        tags = {"task": task, "git_commit": commit, **kinds[task].tags(reports, export)}
        planned[task] = (kinds[task].metrics(**reports), tags)
    registrations = []
    for task, (metrics, tags) in planned.items():
        export, name = exports[task], model_name(cfg, task)
        with tracker_factory(task) as tracker:
            tracker.log_metrics(metrics)
            version, new = register_onnx(cfg.tracking, tracker.run_id, export.folder / "model.onnx", name, metrics,
                                         tags, [export.folder / f for f in export.extra_files],
                                         fingerprint=fingerprint(export.folder, export.identity))
            tracker.set_tags({"registered_model": name, "registered_version": str(version)})
        registrations.append(Registration(task, name, version, new, tracker.run_id, metrics))
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

    check_task(cfg, task)
    name = model_name(cfg, task)
    decisions = []
    rows = registry.model_versions(cfg.tracking, name)
    metrics_of = {row["version"]: version_metrics(row["tags"]) for row in rows}  # metric tags never change
    for row in rows:
        if "gate" in row["tags"]:
            continue
        champion = registry.alias_version(cfg.tracking, name, CHAMPION)  # may have moved in an earlier iteration
        champion_metrics = None if champion is None else metrics_of[champion]
        verdict = kind_of(cfg, task).judge(cfg, task, metrics_of[row["version"]], champion_metrics)
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

    check_task(cfg, task)
    return registry.model_versions(cfg.tracking, model_name(cfg, task))


def promote(cfg: Config, task: str, version: int) -> int | None:
    """Make ``version`` the champion; returns the previous champion. Refused unless the version passed the gate."""
    from selfsup.adapters import mlflow as registry

    check_task(cfg, task)
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

    check_task(cfg, task)
    name = model_name(cfg, task)
    current = registry.alias_version(cfg.tracking, name, CHAMPION)
    if current is None:  # also a model never registered: it has no champion_history tag to read
        raise RegistryError(f"{name} has no champion to roll back")
    history = _history(cfg, name)
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
    """Download the version of ``task``'s model that ``alias`` points at into ``dest``; returns (version, folder).

    ``dest`` becomes the exported model folder (what ``selfsup predict --model`` loads) plus ``version.json``
    (name, version, alias), swapped in whole; a folder that already holds that version is not downloaded again."""
    from selfsup.adapters import mlflow as registry

    check_task(cfg, task)
    name = model_name(cfg, task)
    version = registry.alias_version(cfg.tracking, name, alias)
    if version is None:
        raise RegistryError(f"{name} has no version with the alias '{alias}' (run the training flow, or "
                            f"`selfsup registry promote {task} VERSION`)")
    return version, fetch_version(cfg, task, version, Path(dest), alias)


def fetch_version(cfg: Config, task: str, version: int, dest: Path, alias: str | None = None) -> Path:
    """Download ``version`` of ``task``'s model into ``dest`` (the exported model folder plus ``version.json``),
    swapped in whole; a folder that already holds that version is not downloaded again."""
    from selfsup.adapters import mlflow as registry

    name = model_name(cfg, task)
    marker = Path(dest) / "version.json"
    held = json.loads(marker.read_text()) if marker.exists() else {}
    if (held.get("name"), held.get("version")) == (name, version):  # the name too: a folder may change task
        return Path(dest)
    marker_text = json.dumps({"name": name, "version": version, **({"alias": alias} if alias else {})})
    return registry.download_version(cfg.tracking, name, version, Path(dest), {"version.json": marker_text})
