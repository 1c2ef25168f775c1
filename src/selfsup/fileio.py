"""Write outputs so that an interrupted stage never leaves a half-written file or folder behind.

A file goes to a temporary name beside its target and is renamed over it (``write_text_atomic``, ``atomic_file``); a
folder is built in ``<target>.tmp`` and swapped in by two renames (``staging_dir``, ``replace_dir``). A kill at any
moment leaves the previous output or the new one, whole; what a kill leaves behind is only ever a temporary name
(``.<name>.<random>``, ``<target>.tmp``) that no stage reads, or ``<target>.old``, which ``recover_dir`` (called by
the next ``staging_dir``/``replace_dir`` of that target) moves back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write in the block; it replaces ``path`` when the block ends without an
    error and is deleted otherwise. It keeps ``path``'s suffix, for writers that pick the format from it
    (``fig.savefig(tmp)``, ``np.save``). Flushed to disk before the rename, so a power loss cannot leave an empty
    ``path`` either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, content: str) -> None:
    """Write ``content`` to a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_text(content, encoding="utf-8")


def _aside(target: Path) -> Path:
    return target.with_name(target.name + ".old")


def recover_dir(target: Path) -> None:
    """Finish a swap that a crash interrupted: ``<target>.old`` without ``target`` is the last good folder (the
    crash came between moving it aside and moving the new one in), so it goes back; beside a ``target`` it is
    leftover garbage. Call it before reading a folder that this process also replaces (a resumable checkpoint)."""
    target = Path(target)
    old = _aside(target)
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old)
    else:
        os.replace(old, target)


def staging_dir(target: Path) -> Path:
    """An empty ``<target>.tmp`` folder to build ``target`` in (left over from a crash: emptied first). A previous
    ``target`` that a crash left as ``<target>.old`` is restored first."""
    target = Path(target)
    recover_dir(target)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Put the finished ``staging`` folder in place of ``target``.

    Two renames, never a delete first: ``target`` goes aside to ``<target>.old``, ``staging`` moves in, then the
    old one is deleted. At every instant one complete folder exists, under ``target`` or ``<target>.old``; a
    failure between the renames moves the old one back at once, and a hard crash there (kill, power loss) is
    undone by the next ``staging_dir``/``replace_dir`` for the same target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    old = _aside(target)
    had_target = target.exists()
    if had_target:
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if had_target:
            os.replace(old, target)
        raise
    if had_target:
        shutil.rmtree(old)


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
