"""The ``register`` stage: after every export (text and image) succeeded, each exported model becomes a new
MLflow registry version (skipped when that exact ONNX model is already registered). Gating and aliases are the
training flow's job (``selfsup.registry.lifecycle.gate_versions``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from selfsup.config import Config
from selfsup.fileio import write_json

REGISTERED = Path("artifacts/register/registered.json")


def register_stage(cfg: Config, params_file: Path) -> list:
    """Register every kind of model's export; writes ``registered.json`` and returns the registrations.
    Raises ``RegistryError`` when an export's reports are missing or the registry refuses."""
    from selfsup.registry.kinds import registry_tasks
    from selfsup.registry.lifecycle import register_exports
    from selfsup.tracking import git_commit, open_run

    if not cfg.tracking.enabled:
        write_json(REGISTERED, {"registered": False, "reason": "tracking.enabled is false", "versions": []})
        return []
    registrations = register_exports(cfg, registry_tasks(cfg), partial(open_run, cfg, "register", params_file, None),
                                     git_commit())
    write_json(REGISTERED, {"registered": True, "versions": [
        {"task": r.task, "name": r.name, "version": r.version, "new": r.new, "run_id": r.run_id}
        for r in registrations]})
    return registrations
