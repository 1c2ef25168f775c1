"""Where served models come from: a local export folder, or the version a registry alias points at — followed
while the service runs.

At start-up ``resolve`` picks, per task, the version ``serve.alias`` (``champion``) points at; when the alias is not
set yet it falls back to the newest version that passed the quality gate and says so; when there is none it
raises ``NothingToServe`` with the exact command to run. ``RegistryWatcher`` then polls the alias every
``serve.poll_seconds``: when it moves (a promotion or a rollback), the new version is downloaded, loaded and
checked, then swapped in (``ModelSlot.swap``). A version that fails to load is logged and skipped; the old one keeps
answering. A registry that cannot be read is logged, counted and reported (``RegistryWatcher.registry_status``, shown
by /readyz); the models keep answering.

A served model lives in memory, so its folder may be deleted or damaged while it answers: ``folder_problem`` says
so (for /readyz), because a restart, or a rollback to that version, would not find what is served now.

MLflow owns the registry: everything here goes through ``selfsup.registry`` (imported lazily, so a service fed by
local folders never imports mlflow).
"""

from __future__ import annotations

import logging
import threading
import time
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


def folder_files(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, bytes, mtime_ns) of every file under ``folder``, sorted: what ``folder_problem`` compares
    against. Size and modification time, not a hash: a check costs a few ``stat`` calls, whatever the model's size."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            rows.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(rows)


def folder_problem(loaded: Loaded) -> str | None:
    """Why the folder ``loaded`` came from no longer holds what it loaded (gone, files missing or changed), or None.
    The model still answers from memory; the message says what a restart would run into."""
    if loaded.folder is None:
        return None
    folder = Path(loaded.folder)
    if not folder.is_dir():
        return (f"its folder {folder} is gone; the model still answers from memory, but a restart could not load this "
                "version from there")
    then = {name: (size, mtime) for name, size, mtime in loaded.files}
    try:
        now = {name: (size, mtime) for name, size, mtime in folder_files(folder)}
    except OSError as err:  # a file removed between listing and stat, or an unreadable folder
        return f"its folder {folder} cannot be read ({err}); the model still answers from memory"
    missing = sorted(set(then) - set(now))
    changed = sorted(name for name in set(then) & set(now) if then[name] != now[name])
    if not missing and not changed:
        return None
    said = []
    if missing:
        said.append(f"{len(missing)} file(s) missing ({', '.join(missing[:5])})")
    if changed:
        said.append(f"{len(changed)} file(s) changed since it was loaded (" + ", ".join(
            f"{name}: {then[name][0]:,} -> {now[name][0]:,} bytes" for name in changed[:5]) + ")")
    return (f"its folder {folder} no longer holds what was loaded: {'; '.join(said)}; the model still answers from "
            "memory, but a restart would load something else or fail")


def _load(folder: Path, name: str, version: str, source: str, intra_op_threads: int,
          max_batch_tokens: int) -> Loaded:
    files = folder_files(folder)  # before loading: a change during the load shows up as a change afterwards
    return Loaded(load_model(folder, intra_op_threads, max_batch_tokens), name, version, source,
                  str(folder.resolve()), files)


def load_folder(task: str, folder: Path, intra_op_threads: int = 1, max_batch_tokens: int = 1024) -> Loaded:
    """A local export folder, served under the task's name with the version "local"."""
    folder = Path(folder)
    return _load(folder, task, "local", str(folder.resolve()), intra_op_threads, max_batch_tokens)


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
    loaded = _load(folder, name, str(version), where, cfg.serve.intra_op_threads, cfg.serve.max_batch_tokens)
    return loaded, Source(task, name, alias)


class RegistryWatcher:
    """Polls each followed alias and swaps in the version it points at (on a daemon thread)."""

    def __init__(self, cfg: Config, slots: dict[str, ModelSlot], sources: dict[str, Source],
                 on_reload: Callable[[str, Loaded | None, str], None] | None = None):
        self.cfg, self.slots = cfg, slots
        self.sources = {task: s for task, s in sources.items() if s.alias is not None}
        self.on_reload = on_reload  # (task, new Loaded or None, outcome) for /metrics
        self._failed: dict[str, int] = {}  # task -> version that failed to load; retried only if the alias moves
        self._status_lock = threading.Lock()
        self._last_ok: float | None = time.time()  # the start-up read (resolve) succeeded, or there is no registry
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._failed_reads = 0
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
                self._note_registry(f"{type(err).__name__}: {err}")
                self._report(task, None, "registry_error")
                continue
            self._note_registry(None)
            current = self.slots[task].current
            if version is None or str(version) == current.version or self._failed.get(task) == version:
                continue
            try:
                folder = _fetch(self.cfg, task, version)
                loaded = _load(folder, source.name, str(version), f"models:/{source.name}@{source.alias}",
                               self.cfg.serve.intra_op_threads, self.cfg.serve.max_batch_tokens)
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

    def _note_registry(self, error: str | None) -> None:
        with self._status_lock:
            if error is None:
                if self._failing_since is not None:
                    log.info("the registry answers again (it could not be read for %.0f s)",
                             time.time() - self._failing_since)
                self._last_ok, self._failing_since, self._last_error = time.time(), None, None
            else:
                self._failing_since = self._failing_since or time.time()
                self._last_error = error[:500]  # an HTML error page from a proxy can be long
                self._failed_reads += 1

    def registry_status(self) -> dict | None:
        """What /readyz says about the registry: None when no served model follows one (``--model`` folders), else
        ``status`` ("ok" or "unreachable"), the last ``error``, ``failing_for_seconds``, ``last_ok_seconds_ago`` and
        ``failed_reads`` (since start). A poll blocked on a dead server shows as a growing ``last_ok_seconds_ago``
        before its error arrives (MLflow retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT)."""
        if not self.sources:
            return None
        now = time.time()
        with self._status_lock:
            return {"status": "ok" if self._failing_since is None else "unreachable",
                    "error": self._last_error,
                    "failing_for_seconds": None if self._failing_since is None else round(now - self._failing_since, 1),
                    "last_ok_seconds_ago": None if self._last_ok is None else round(now - self._last_ok, 1),
                    "poll_seconds": self.cfg.serve.poll_seconds,
                    "failed_reads": self._failed_reads}

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
