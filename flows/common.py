"""What every flow shares: running in the project folder, I/O-only retries, alerts through a Prefect block."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from pathlib import Path
from typing import Iterator

from prefect import get_run_logger
from prefect.blocks.core import Block

# Errors worth retrying: the network, the disk, a busy SQLite database. Anything else (a bug, a failed check) would
# fail the same way again, so it fails the task at once. Decided by type where the failure happened, never by words
# in a message: OSError covers ConnectionError, TimeoutError, URLError, requests' errors and TransientStageError (a
# command that exited with selfsup's I/O exit code).
IO_ERRORS = (OSError,)
# SQLite's primary result codes for a database that is busy, locked, failing to read/write, or on a full disk (a
# missing table or column is SQLITE_ERROR: a bug). sqlite3 errors carry the code since Python 3.11.
SQLITE_TRANSIENT = {5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 10: "SQLITE_IOERR", 13: "SQLITE_FULL"}


def is_io_error(exc: BaseException | None) -> bool:
    """True when ``exc`` or any exception in its chain of causes is an I/O failure. The chain matters: MLflow
    reports a locked store as MlflowException, raised from SQLAlchemy's error, raised from sqlite3's."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, IO_ERRORS) or _sqlite_transient(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _sqlite_transient(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in SQLITE_TRANSIENT


def retry_on_io(task, task_run, state) -> bool:
    """``retry_condition_fn`` for tasks that talk to DVC remotes or MLflow: retry I/O failures only."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state holds whatever the task raised
        return is_io_error(exc)
    return False


@contextlib.contextmanager
def in_project(root: str | Path) -> Iterator[Path]:
    """Run with the project folder as working directory (params.yaml and the stores use relative paths) and this
    interpreter's bin/ on PATH (so ``dvc`` and ``selfsup`` are the venv's)."""
    root = Path(root).resolve()
    if not (root / "dvc.yaml").exists():
        raise FileNotFoundError(f"{root}: not a selfsup project (no dvc.yaml)")
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{old_path}"
    try:
        with contextlib.chdir(root):
            yield root
    finally:
        os.environ["PATH"] = old_path


def send_alert(block_name: str, subject: str, body: str) -> bool:
    """Send through the saved notification block ``block_name`` ("<block-type-slug>/<name>", e.g.
    ``custom-webhook/selfsup-alerts``, ``slack-webhook/ops``); a plain name is looked up as a custom webhook.
    Returns False (and logs a warning) when no such block is saved, so monitoring works before alerts are wired."""
    logger = get_run_logger()
    slug = block_name if "/" in block_name else f"custom-webhook/{block_name}"
    try:
        block = Block.load(slug)
    except ValueError as err:
        logger.warning("ALERT (no notification block %r saved: %s) %s — %s", slug, err, subject, body)
        return False
    block.notify(body=body, subject=subject)
    logger.warning("ALERT sent via %s: %s", slug, subject)
    return True
