"""The ``validate_images`` stage: check every image the manifest names before anything trains on it.

Each manifest row is opened and fully decoded with the same decoder training uses (``images.decode_image``); the
derived columns (found, decodable, bytes, mode, short/long side, frames, label, a hash of the decoded pixels) go
through Great Expectations, with the rules declared below, and a failure names the manifest row, the image and the
rule:

    data/images/manifest.csv row 17: rule 'decodable' broken — the file cannot be decoded as an image (truncated
    or not an image) (value: 'train-000.zip:train-00016.png')

Memory stays bounded whatever a file claims to be: the header is read first, and an image whose side exceeds
``vision.validate.max_side`` is reported by ``max_side`` without being decoded (a decompression bomb: a few KB
that would decode to gigabytes); Pillow refuses outright any image over twice its ``MAX_IMAGE_PIXELS``, and a
zip member over ``MAX_MEMBER_BYTES`` is not read. Reports go to ``vision.validate.report_dir`` exactly as for text
(``metrics.json``, ``summary.json``, ``ge_results.json``, ``report.html``).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.config import Config, ImageRules
from selfsup.vision.data import decode_image, read_manifest
from selfsup.datasets.suites import Rule
from selfsup.datasets.validation import KEEP_FAILURES, Table, ValidationOutcome, check_table, write_outcome

MAX_MEMBER_BYTES = 64 * 2**20  # a zip member larger than this is not read into memory (reported as not decodable)

IMAGE_RULES: tuple[Rule, ...] = (
    Rule("file_found", "image", "ExpectColumnValuesToBeInSet",
         lambda r, _: {"column": "found", "value_set": [True]},
         "the shard or the member the manifest names does not exist", "text"),
    Rule("non_empty", "image", "ExpectColumnValuesToBeBetween",
         lambda r, _: {"column": "bytes", "min_value": r.min_bytes},
         "the file is empty or too small to be an image (vision.validate.min_bytes)", "bytes"),
    Rule("decodable", "image", "ExpectColumnValuesToBeInSet",
         lambda r, _: {"column": "decodable", "value_set": [True]},
         "the file cannot be decoded as an image (truncated, corrupt, not an image, over 64 MiB, or a "
         "decompression bomb Pillow refuses)", "text"),
    Rule("mode_allowed", "image", "ExpectColumnValuesToBeInSet",
         lambda r, _: {"column": "mode", "value_set": list(r.modes)},
         "the image's colour mode is not allowed (vision.validate.modes; L = 8-bit grayscale)", "mode"),
    Rule("min_side", "image", "ExpectColumnValuesToBeBetween",
         lambda r, _: {"column": "short_side", "min_value": r.min_side},
         "the image is smaller than vision.validate.min_side pixels", "short_side"),
    Rule("max_side", "image", "ExpectColumnValuesToBeBetween",
         lambda r, _: {"column": "long_side", "max_value": r.max_side},
         "the image is larger than vision.validate.max_side pixels", "long_side"),
    Rule("single_frame", "image", "ExpectColumnValuesToBeBetween",
         lambda r, _: {"column": "frames", "max_value": 1},
         "the file is animated (several frames); training would silently use only the first", "frames"),
    Rule("label_in_set", "image", "ExpectColumnValuesToBeInSet",
         lambda r, classes: {"column": "label", "value_set": list(classes)},
         "the label is not a declared class (vision.data.classes)", "label"),
    Rule("split_leakage", "image_splits", "ExpectColumnValuesToBeBetween",
         lambda r, _: {"column": "n_splits", "max_value": 1},
         "the same pixels are in more than one split (evaluation leakage)", "text"),
)


def _inspect(content: bytes, max_side: int) -> tuple[np.ndarray | None, str | None, tuple[int, int] | None, int | None]:
    """``(pixels, mode, (width, height), frames)`` of an image file; pixels are decoded (by training's decoder)
    only when both sides are within ``max_side``. ``(None, None, None, None)`` when the file cannot be opened."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as image:  # reads the header only
            mode, size, frames = image.mode, image.size, getattr(image, "n_frames", 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, None, None, None
    if max(size) > max_side:
        return None, mode, size, frames
    try:
        pixels, mode = decode_image(content)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, mode, size, frames
    return pixels, mode, size, frames


def _image_columns(manifest: Path, rules: ImageRules) -> tuple[dict[str, list[Any]], list[tuple[str, str]], list[str]]:
    rows = read_manifest(manifest)
    columns: dict[str, list[Any]] = {k: [] for k in ("text", "found", "bytes", "decodable", "mode", "short_side",
                                                      "long_side", "frames", "label", "pixel_key", "split")}
    shards: dict[str, zipfile.ZipFile | None] = {}
    for r in rows:
        if r.file not in shards:
            try:
                shards[r.file] = zipfile.ZipFile(manifest.parent / r.file)
            except (OSError, zipfile.BadZipFile):
                shards[r.file] = None
        content, size_on_disk = None, None
        try:
            info = shards[r.file].getinfo(r.member) if shards[r.file] is not None else None
            size_on_disk = info.file_size if info is not None else None
            if info is not None and info.file_size <= MAX_MEMBER_BYTES:
                content = shards[r.file].read(r.member)
        except (KeyError, zipfile.BadZipFile, OSError, EOFError):
            content = None
        pixels, mode, size, frames = _inspect(content, rules.max_side) if content else (None, None, None, None)
        too_large = size is not None and max(size) > rules.max_side  # not decoded: max_side names it
        columns["text"].append(f"{r.file}:{r.member}")
        columns["found"].append(size_on_disk is not None)
        columns["bytes"].append(size_on_disk)
        columns["decodable"].append(None if too_large else pixels is not None)
        columns["mode"].append(mode)
        columns["short_side"].append(min(size) if size is not None else None)
        columns["long_side"].append(max(size) if size is not None else None)
        columns["frames"].append(frames)
        columns["label"].append(r.label)
        columns["split"].append(r.split)
        columns["pixel_key"].append(hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
                                    if pixels is not None else None)
    for shard in shards.values():
        if shard is not None:
            shard.close()
    locations = [(str(manifest), f"row {r.row}") for r in rows]
    return columns, locations, [r.split for r in rows]


def collect_image_tables(cfg: Config) -> list[Table]:
    """One table per split (one row per manifest row) and one leakage table over all splits."""
    manifest = Path(cfg.vision.data.manifest)
    rules: ImageRules = cfg.vision.validate
    columns, locations, splits = _image_columns(manifest, rules)
    tables = []
    for split in sorted(set(splits)):
        idx = [i for i, s in enumerate(splits) if s == split]
        tables.append(Table(f"images/{split}", "image", {k: [v[i] for i in idx] for k, v in columns.items()},
                            [locations[i] for i in idx], rules, list(cfg.vision.data.classes)))
    splits_of: dict[str, set[str]] = {}
    for key, split in zip(columns["pixel_key"], splits):
        if key is not None:
            splits_of.setdefault(key, set()).add(split)
    n_splits = [len(splits_of[k]) if k is not None else 0 for k in columns["pixel_key"]]
    tables.append(Table("images/splits", "image_splits", {"n_splits": n_splits, "text": columns["text"]}, locations,
                        rules))
    missing = sorted({cfg.vision.data.pretrain_split, cfg.vision.data.eval_split} - set(splits))
    if missing:
        from selfsup.datasets.validation import DataFileError

        raise DataFileError(f"{manifest}: no rows for split(s) {missing} (vision.data.pretrain_split/eval_split)")
    return tables


def validate_images(cfg: Config) -> ValidationOutcome:
    """Run the image rules over the manifest and write the reports; see the module docstring."""
    from selfsup.adapters import gx  # lazy: the core never imports Great Expectations at import time

    tables = collect_image_tables(cfg)
    session = gx.Session()
    keep = max(KEEP_FAILURES, cfg.vision.validate.max_failures_shown)
    checked = [check_table(session, t.name, t.kind, t.locations[0][0] if t.locations else "",
                           [(r, r.kwargs(t.rules, t.labels)) for r in IMAGE_RULES if r.table == t.kind], [t], keep)
               for t in tables]
    return write_outcome(checked, Path(cfg.vision.validate.report_dir), gx.render_html)
