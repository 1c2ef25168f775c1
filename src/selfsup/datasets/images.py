"""Fashion-MNIST materialized as PNG files in a few zip shards plus a manifest (part of ``selfsup data build``).

Layout written by ``image_files`` under ``data/images/`` (read back by ``selfsup.vision.data``):

    manifest.csv          split,file,member,label — one row per image; ``file`` is a shard relative to data/images
    train-000.zip …       the 60,000 training images (the unlabeled pretraining pool), 10,000 PNGs per shard
    test-000.zip          the 10,000 test images, held out: only evaluation reads them

Why PNGs in zip shards rather than 70,000 loose files or one ``.npy`` array: a PNG per image is what users bring
and what validation must decode (a truncated file, a wrong colour mode, a zero-byte file are real failure modes
only of real image files), while DVC hashes, caches and checks out 7 shards instead of 70,000 small files (each
a separate object in the cache). Shards are stored uncompressed (PNG is compressed already), so any image is read
by seeking to its member. Every byte is deterministic (fixed zip timestamps and permissions, PNG written by the
pinned Pillow at a fixed compression level), so a rebuild is byte-identical and ``data.dvc`` can pin it.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.vision.data import MANIFEST_COLUMNS, ImageDataError

FASHION_MNIST_DIR = "usr/share/datasets/fashion-mnist"
# Label index -> name, from the Fashion-MNIST README (the IDX label files hold the index).
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle_boot")
SHARD_SIZE = 10_000
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: no build-time clock in the bytes


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
