"""The inbox protocol the monitoring and routing flows share: which files are batches, the rules a batch must pass,
and where a batch goes once it has been handled.

Every ``*.csv`` file in the inbox is one batch (a ``text`` column; optional ``id`` and a segment column —
``segment``, ``topic`` or ``source``). Batches are handled in file-name order, so name them by arrival time. A
handled batch moves to ``<state_dir>/processed/``; one that fails validation moves to ``<state_dir>/quarantine/``
next to ``<name>.reason.txt`` and is never scored. Moving rather than copying is what marks a batch as done: the
next run sees only what is still in the inbox.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path

from selfsup.config import BatchRules, TableRules
from selfsup.fileio import write_text_atomic


def inbox_batches(inbox: Path) -> list[Path]:
    """The batches waiting in ``inbox``, oldest name first; none when the folder does not exist yet."""
    return sorted(p for p in Path(inbox).glob("*.csv") if p.is_file()) if Path(inbox).is_dir() else []


def table_rules(batch: BatchRules) -> TableRules:
    """The validation rules for an inbox batch: a batch has no labels, so no per-class minimum."""
    return TableRules(min_chars=batch.min_chars, max_chars=batch.max_chars,
                      max_duplicate_rate=batch.max_duplicate_rate, min_per_class=0)


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # the same name arrived again: keep both
        target = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}"
    shutil.move(str(path), target)
    return target


def quarantine(path: Path, state_dir: Path, reasons: list[str]) -> Path:
    """Move a rejected batch out of the inbox, with its reasons beside it."""
    target = _move(path, Path(state_dir) / "quarantine")
    write_text_atomic(target.with_name(target.name + ".reason.txt"), "\n".join(reasons) + "\n")
    return target


def mark_processed(path: Path, state_dir: Path) -> Path:
    """Move a handled batch out of the inbox into ``<state_dir>/processed/``."""
    return _move(path, Path(state_dir) / "processed")


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    """``rows`` under the header ``fields`` (``\\n`` line ends), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
    return path
