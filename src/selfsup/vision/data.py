"""Images for the vision stages: the manifest and its zip shards (written by ``selfsup.datasets.images``), read
back as ``uint8 [N, C, H, W]`` tensors.

    manifest.csv          split,file,member,label — one row per image; ``file`` is a shard relative to data/images
    train-000.zip …       the training images (the unlabeled pretraining pool), PNGs in uncompressed zip shards
    test-000.zip          the held-out images: only evaluation reads them

Labels are in the manifest only for evaluation: ``load_images`` returns pixels without labels, and pretraining
calls nothing else. Your own images go in the same way: any zip of PNG/JPEG files plus manifest rows.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST_COLUMNS = ["split", "file", "member", "label"]


class ImageDataError(ValueError):
    """The manifest or an image file is unreadable; the message names the file and row."""


# ------------------------------------------------------------------------------------------------------- read


@dataclass(frozen=True)
class ManifestRow:
    row: int  # 1-based, after the header: what error messages cite
    split: str
    file: str
    member: str
    label: str


def read_manifest(path: Path) -> list[ManifestRow]:
    """The manifest's rows; a missing file or column is an ``ImageDataError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageDataError(f"{path}: image manifest not found (vision.data.manifest in params.yaml)")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or any(column not in header for column in MANIFEST_COLUMNS):
            raise ImageDataError(f"{path} row 0 (header): rule 'columns' broken — expected columns "
                                 f"{','.join(MANIFEST_COLUMNS)}, got {header}")
        index = {column: header.index(column) for column in MANIFEST_COLUMNS}
        rows = []
        for row_no, row in enumerate(reader, start=1):
            cells = [row[index[c]] if index[c] < len(row) else "" for c in MANIFEST_COLUMNS]
            rows.append(ManifestRow(row_no, *cells))
    return rows


class ShardReader:
    """Reads members of the zip shards under ``root``, keeping each shard open while it is used."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._open: dict[str, zipfile.ZipFile] = {}

    def read(self, file: str, member: str) -> bytes:
        if file not in self._open:
            self._open[file] = zipfile.ZipFile(self.root / file)
        return self._open[file].read(member)

    def close(self) -> None:
        for archive in self._open.values():
            archive.close()
        self._open.clear()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_image(content: bytes) -> tuple[np.ndarray, str]:
    """PNG/JPEG bytes -> ``(pixels [H, W] or [H, W, C] uint8, PIL mode)``; raises ``OSError``/``ValueError`` on a
    broken file (zero bytes, truncated, not an image)."""
    from PIL import Image

    with Image.open(io.BytesIO(content)) as image:
        image.load()  # decodes every byte: a truncated file fails here, not later in training
        return np.asarray(image), image.mode


def load_images(manifest: Path, split: str, limit: int = 0) -> np.ndarray:
    """The ``split`` images as one ``[N, 1, H, W]`` uint8 array, in manifest order, *without* labels (the
    pretraining entry point). ``limit`` > 0 keeps the first ``limit`` rows. Images must be mode L (validated by the
    validate_images stage); anything else is an ``ImageDataError`` naming the row."""
    rows = [r for r in read_manifest(manifest) if r.split == split]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ImageDataError(f"{manifest}: no rows with split '{split}'")
    images = []
    with ShardReader(Path(manifest).parent) as reader:
        for r in rows:
            try:
                pixels, mode = decode_image(reader.read(r.file, r.member))
            except (OSError, ValueError, KeyError) as err:
                raise ImageDataError(f"{manifest} row {r.row}: {r.file}:{r.member} cannot be read ({err})") from None
            if mode != "L":
                raise ImageDataError(f"{manifest} row {r.row}: {r.file}:{r.member} has mode {mode}, expected L")
            images.append(pixels)
    shapes = {p.shape for p in images}
    if len(shapes) != 1:
        raise ImageDataError(f"{manifest}: split '{split}' mixes image sizes {sorted(shapes)}")
    return np.stack(images)[:, None]


def load_labels(manifest: Path, split: str, classes: list[str], limit: int = 0) -> np.ndarray:
    """The ``split`` labels as class indices into ``classes`` (evaluation only), aligned with ``load_images``."""
    rows = [r for r in read_manifest(manifest) if r.split == split]
    if limit:
        rows = rows[:limit]
    index = {name: i for i, name in enumerate(classes)}
    bad = [r for r in rows if r.label not in index]
    if bad:
        raise ImageDataError(f"{manifest} row {bad[0].row}: label {bad[0].label!r} is not in vision.data.classes")
    return np.array([index[r.label] for r in rows], dtype=np.int64)
