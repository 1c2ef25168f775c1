"""Write outputs so that an interrupted stage never leaves a half-written file or folder behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, content: str) -> None:
    """Write ``content`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def staging_dir(target: Path) -> Path:
    """An empty ``<target>.tmp`` folder to build ``target`` in (left over from a crash: emptied first)."""
    staging = Path(target).with_name(Path(target).name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Put the finished ``staging`` folder in place of ``target``."""
    target = Path(target)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def write_json(path: Path, payload) -> None:
    """``payload`` as indented JSON with sorted keys (stable diffs for DVC metrics), written atomically."""
    import json

    write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=True))


def write_csv(path: Path, header: list[str], rows) -> None:
    """A CSV with ``header`` then ``rows`` (``\\n`` line ends), written atomically."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
