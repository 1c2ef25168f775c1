"""Images: Fashion-MNIST materialized as PNG files in a few zip shards plus a manifest, and read back as tensors.

Layout written by ``image_files`` (part of ``selfsup data build``) under ``data/images/``:

    manifest.csv          split,file,member,label — one row per image; ``file`` is a shard relative to data/images
    train-000.zip …       the 60,000 training images (the unlabeled pretraining pool), 10,000 PNGs per shard
    test-000.zip          the 10,000 test images, held out: only evaluation reads them

Why PNGs in zip shards rather than 70,000 loose files or one ``.npy`` array: a PNG per image is what users bring
and what validation must decode (a truncated file, a wrong colour mode, a zero-byte file are real failure modes
only of real image files), while DVC hashes, caches and checks out 7 shards instead of 70,000 small files (each
a separate object in the cache). Shards are stored uncompressed (PNG is compressed already), so any image is read
by seeking to its member. Your own images go in the same way: any zip of PNG/JPEG files plus manifest rows.

Labels are in the manifest only for evaluation: ``load_images`` returns pixels without labels, and pretraining
calls nothing else. Every byte is deterministic (fixed zip timestamps and permissions, PNG written by the pinned
Pillow at a fixed compression level), so a rebuild is byte-identical and ``data.dvc`` can pin it.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = "usr/share/datasets/fashion-mnist"
# Label index -> name, from the Fashion-MNIST README (the IDX label files hold the index).
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle_boot")
SHARD_SIZE = 10_000
MANIFEST_COLUMNS = ["split", "file", "member", "label"]
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: no build-time clock in the bytes


class ImageDataError(ValueError):
    """The manifest or an image file is unreadable; the message names the file and row."""


# ------------------------------------------------------------------------------------------------------ build


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a uint8 array: ``[N, 28, 28]`` images (magic 2051) or ``[N]`` labels (magic 2049)."""
    raw = gzip.open(path).read()
    magic = int.from_bytes(raw[:4], "big")
    if magic == 2051:
        n, rows, cols = (int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)
    if magic == 2049:
        return np.frombuffer(raw, np.uint8, offset=8)
    raise ImageDataError(f"{path}: not an IDX image or label file (magic number {magic})")


def encode_png(pixels: np.ndarray) -> bytes:
    """One ``[H, W]`` uint8 grayscale image as PNG bytes (mode L, fixed settings, so the bytes are reproducible)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=9, optimize=False)
    return buffer.getvalue()


def zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A deterministic, uncompressed zip: fixed timestamps, permissions and creator system."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the build machine
            archive.writestr(info, content)
    return buffer.getvalue()


@dataclass
class ImageBuildReport:
    images: dict[str, int]
    per_class: dict[str, dict[str, int]]
    shards: list[str]


def image_files(fashion_mnist_dir: Path) -> tuple[dict[str, bytes], ImageBuildReport]:
    """``{path under data/: bytes}`` for the images, and the counts for the data card."""
    root = Path(fashion_mnist_dir) / FASHION_MNIST_DIR
    files: dict[str, bytes] = {}
    rows = [MANIFEST_COLUMNS]
    counts: dict[str, int] = {}
    per_class: dict[str, dict[str, int]] = {}
    shards = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels) or labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ImageDataError(f"{root}: {split} has {len(images)} images but {len(labels)} labels "
                                 f"(largest label index {labels.max()})")
        counts[split] = len(images)
        per_class[split] = {name: int((labels == i).sum()) for i, name in enumerate(FASHION_MNIST_CLASSES)}
        for start in range(0, len(images), SHARD_SIZE):
            shard = f"{split}-{start // SHARD_SIZE:03d}.zip"
            members = []
            for index in range(start, min(start + SHARD_SIZE, len(images))):
                member = f"{split}-{index:05d}.png"
                members.append((member, encode_png(images[index])))
                rows.append([split, shard, member, FASHION_MNIST_CLASSES[labels[index]]])
            files[f"images/{shard}"] = zip_bytes(members)
            shards.append(shard)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    files["images/manifest.csv"] = buffer.getvalue().encode("utf-8")
    return files, ImageBuildReport(counts, per_class, shards)


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
