"""Where served models come from: a local export folder, or the version a registry alias points at — followed
while the service runs.

At start-up ``resolve`` picks, per task, the version ``serve.alias`` (``champion``) points at; when the alias is not
set yet it falls back to the newest version that passed the quality gate and says so; when there is none it
raises ``NothingToServe`` with the exact command to run. ``RegistryWatcher`` then polls the alias every
``serve.poll_seconds``: when it moves (a promotion or a rollback), the new version is downloaded, loaded and
checked, then swapped in (``ModelSlot.swap``). A version that fails to load is logged and skipped; the old one keeps
answering.

MLflow owns the registry: everything here goes through ``selfsup.registry`` (imported lazily, so a service fed by
local folders never imports mlflow).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from selfsup.config import Config
from selfsup.serve.batching import Loaded, ModelSlot
from selfsup.serve.runtime import ModelLoadError, load_model

log = logging.getLogger("selfsup.serve")


class NothingToServe(RuntimeError):
    """No model can be served for a task; the message says what to run."""


@dataclass
class Source:
    task: str
    name: str  # registered model name, or the folder's name
    alias: str | None  # followed in the registry; None for a local folder


def load_folder(task: str, folder: Path, intra_op_threads: int = 1, max_batch_tokens: int = 1024) -> Loaded:
    """A local export folder, served under the task's name with the version "local"."""
    folder = Path(folder)
    return Loaded(load_model(folder, intra_op_threads, max_batch_tokens), task, "local", str(folder.resolve()))


def _fetch(cfg: Config, task: str, version: int) -> Path:
    from selfsup.registry.lifecycle import fetch_version

    return fetch_version(cfg, task, version, Path(cfg.serve.models_dir) / task / f"v{version}")


def resolve(cfg: Config, task: str) -> tuple[Loaded, Source]:
    """The version of ``task``'s model to serve now (see the module docstring)."""
    from selfsup.registry.lifecycle import list_versions, model_name

    alias, name = cfg.serve.alias, model_name(cfg, task)
    rows = list_versions(cfg, task)
    chosen = next((row for row in rows if alias in row["aliases"]), None)
    if chosen is None:
        passed = [row for row in rows if row["tags"].get("gate") == "passed"]
        if not passed:
            if not rows:
                raise NothingToServe(f"{name} has no registered version: run the pipeline first (`make run`)")
            raise NothingToServe(
                f"{name} has {len(rows)} version(s) but none has passed the quality gate, so none is '{alias}': run "
                f"`selfsup registry gate` (what the training flow does; `make serve` runs it first), then serve again"
                + ("" if not any("gate" in r["tags"] for r in rows) else
                   f" — or see why they failed: `selfsup registry list --task {task}`"))
        chosen = passed[-1]
        log.warning("%s has no '%s' yet: serving v%d, the newest version that passed the gate (it will switch to "
                    "'%s' as soon as the alias is set)", name, alias, chosen["version"], alias)
    version = int(chosen["version"])
    folder = _fetch(cfg, task, version)
    where = f"models:/{name}@{alias}" if alias in chosen["aliases"] else f"models:/{name}/{version} (no {alias} yet)"
    loaded = Loaded(load_model(folder, cfg.serve.intra_op_threads, cfg.serve.max_batch_tokens), name, str(version),
                    where)
    return loaded, Source(task, name, alias)


class RegistryWatcher:
    """Polls each followed alias and swaps in the version it points at (on a daemon thread)."""

    def __init__(self, cfg: Config, slots: dict[str, ModelSlot], sources: dict[str, Source],
                 on_reload: Callable[[str, Loaded | None, str], None] | None = None):
        self.cfg, self.slots = cfg, slots
        self.sources = {task: s for task, s in sources.items() if s.alias is not None}
        self.on_reload = on_reload  # (task, new Loaded or None, outcome) for /metrics
        self._failed: dict[str, int] = {}  # task -> version that failed to load; retried only if the alias moves
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[str]:
        """Check every followed alias once; returns the tasks whose model was swapped."""
        from selfsup.adapters.mlflow import alias_version

        swapped = []
        for task, source in self.sources.items():
            try:
                version = alias_version(self.cfg.tracking, source.name, source.alias)
            except Exception as err:  # an unreachable store: keep serving, try again next poll
                log.warning("cannot read %s@%s from the registry (%s); still serving v%s", source.name,
                            source.alias, err, self.slots[task].current.version)
                self._report(task, None, "registry_error")
                continue
            current = self.slots[task].current
            if version is None or str(version) == current.version or self._failed.get(task) == version:
                continue
            try:
                folder = _fetch(self.cfg, task, version)
                loaded = Loaded(load_model(folder, self.cfg.serve.intra_op_threads,
                                           self.cfg.serve.max_batch_tokens), source.name, str(version),
                                f"models:/{source.name}@{source.alias}")
            except (ModelLoadError, OSError, RuntimeError) as err:
                self._failed[task] = version
                log.error("%s@%s moved to v%s, which cannot be served (%s); still serving v%s", source.name,
                          source.alias, version, err, current.version)
                self._report(task, None, "failed")
                continue
            previous = self.slots[task].swap(loaded)
            self._failed.pop(task, None)
            log.info("%s@%s moved: now serving v%s (was v%s)", source.name, source.alias, version, previous.version)
            self._report(task, loaded, "swapped")
            swapped.append(task)
        return swapped

    def _report(self, task: str, loaded: Loaded | None, outcome: str) -> None:
        if self.on_reload is not None:
            self.on_reload(task, loaded, outcome)

    def start(self, poll_seconds: float) -> None:
        if not self.sources or poll_seconds <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(poll_seconds):
                try:
                    self.poll_once()
                except Exception:  # never let the watcher die: the next poll may succeed
                    log.exception("registry poll failed")

        self._thread = threading.Thread(target=loop, name="registry-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
